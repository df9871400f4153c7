"""``faceanonymixer models``: train, list, pull and verify the models behind the profiles."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from faceanonymixer.cli.common import SettingOption, emit, one_line_errors, parsed_settings
from faceanonymixer.models.zoo import PINS_FILE, ZooModel

if TYPE_CHECKING:
    from faceanonymixer.engine.profiles import OptimisationConfig, Profile

models_app = typer.Typer(help="Train, list and verify model weights.", no_args_is_help=True)

ENCODER_WEIGHTS_NAME = "digiface-dcgan-encoder"
LFW_GENERATOR_WEIGHTS_NAME = "lfw-dcgan"
LFW_ENCODER_WEIGHTS_NAME = "lfw-dcgan-encoder"
_NOT_REPRODUCED = ("--checkpoint", "--stop-at", "--cache")
#: ``--data`` of the training commands: one folder or several (an equal share from each)
DataOption = Annotated[
    list[Path],
    typer.Option(
        "--data",
        help="Folder of <identity>/<image> training photos; repeat it to train on several folders "
        "(an equal share of the photos from each). Never an evaluation set.",
    ),
]


#: ``--terms`` of the fitting commands: recorded beside the weights in the manifest (the model card)
TermsOption = Annotated[
    str,
    typer.Option(
        help="Terms of the training photos that the weights inherit (e.g. non-commercial research "
        "use only); recorded in the manifest beside the data the weights were fitted on."
    ),
]


def _data_description(data: list[Path], used: int) -> str:
    """What the manifest says the weights were fitted on: the folders' names and the photo count."""
    return f"{', '.join(folder.name for folder in data)}: {used} photos"


def _reproducing_command() -> str:
    """This command line, without the options that do not change the result (where resumable state
    was kept, where a run stopped)."""
    arguments, skip = [], False
    for argument in sys.argv[2:]:
        if skip or argument.startswith(tuple(f"{option}=" for option in _NOT_REPRODUCED)):
            skip = False
            continue
        if argument in _NOT_REPRODUCED:
            skip = True
            continue
        arguments.append(argument)
    return shlex.join(["faceanonymixer", "models", *arguments])


def _chosen_profile(name: str) -> Profile:
    """The ``--profile`` option's profile; an unknown name is a usage error."""
    from faceanonymixer.engine.profiles import get_profile

    try:
        return get_profile(name)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--profile") from None


def _with_settings(profile: Profile, items: list[str] | None) -> OptimisationConfig:
    """``profile``'s optimisation with the ``--setting`` overrides; a bad one is a usage error."""
    try:
        return profile.optimisation.with_overrides(**parsed_settings(items))
    except (ValueError, TypeError) as error:
        raise typer.BadParameter(str(error), param_hint="--setting") from None


def _npz_target(weights_name: str, out_dir: Path | None) -> Path:
    """Where the .npz of ``weights_name`` goes: ``out_dir``, or the committed weights folder."""
    from faceanonymixer.models.weights import WEIGHTS_DIR

    target_dir = out_dir or WEIGHTS_DIR
    target_dir.mkdir(parents=True, exist_ok=True)
    return target_dir / f"{weights_name.replace('-', '_')}.npz"


def _record_if_committed(
    weights_name: str, target: Path, sha256: str, *, data: str = "", terms: str = ""
) -> None:
    """Record ``target`` in the committed manifest when it was written among the committed weights."""
    from faceanonymixer.models.weights import WEIGHTS_DIR, record_weights

    if target.parent.resolve() == WEIGHTS_DIR.resolve():
        record_weights(weights_name, target.name, sha256, _reproducing_command(), data=data, terms=terms)


@models_app.command("train-encoder")
def train_encoder_command(
    data: DataOption,
    out: Annotated[
        Path | None, typer.Option(help="Weights file (default: the committed embedded encoder).")
    ] = None,
    steps: Annotated[int, typer.Option(min=1)] = 4000,
    seed: Annotated[int, typer.Option()] = 0,
    max_real_photos: Annotated[int, typer.Option(min=1)] = 4000,
    checkpoint: Annotated[Path | None, typer.Option(help="Resumable training state.")] = None,
    generator: Annotated[str, typer.Option(help="Generator to invert.")] = "digiface-dcgan",
) -> None:
    """Train the latent encoder of the embedded profile (CPU, deterministic for a seed)."""
    with one_line_errors():
        import torch

        from faceanonymixer.faces.datasets import training_photos
        from faceanonymixer.models.generators import load_generator
        from faceanonymixer.models.weights import WEIGHTS_DIR
        from faceanonymixer.training.encoder import EncoderTraining, aligned_training_faces, train_encoder

        torch.manual_seed(seed)
        model = load_generator(generator)
        config = EncoderTraining(steps=steps, seed=seed, max_real_photos=max_real_photos)
        faces = aligned_training_faces(training_photos(data, config.max_real_photos), model).pixels
        target = out or WEIGHTS_DIR / "digiface_dcgan_encoder.pt"
        sha256 = train_encoder(model, faces, target, config=config, checkpoint=checkpoint)
        _record_if_committed(ENCODER_WEIGHTS_NAME, target, sha256)
        typer.echo(f"{target}  sha256 {sha256}")


@models_app.command("train-generator")
def train_generator_command(
    data: DataOption,
    checkpoint: Annotated[
        Path, typer.Option(help="Resumable training state; the aligned crops are cached beside it.")
    ],
    steps: Annotated[int, typer.Option(min=1, help="Total steps of the training (over all runs).")] = 3000,
    stop_at: Annotated[
        int | None, typer.Option(min=1, help="End this run at this step; a later run continues.")
    ] = None,
    seed: Annotated[int, typer.Option()] = 0,
    max_real_photos: Annotated[int, typer.Option(min=1)] = 10_000,
    start_from: Annotated[
        str,
        typer.Option(
            help="Weights the training starts from: the DigiFace DCGAN as shipped (digiface-dcgan, "
            "with the embedded encoder), or a committed generator with its encoder (lfw-dcgan)."
        ),
    ] = "digiface-dcgan",
    name: Annotated[
        str, typer.Option(help="Weights name of the result (files <name>.pt and <name>_encoder.pt).")
    ] = LFW_GENERATOR_WEIGHTS_NAME,
    out_dir: Annotated[
        Path | None, typer.Option(help="Where the weights go (default: the committed weights).")
    ] = None,
    identity_weight: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="Weight of the identity term: each reconstruction, pasted into its photo's chip, "
            "must read as the photo in the embedded profile's loss recognizer (0: pixels alone).",
        ),
    ] = 0.0,
) -> None:
    """Fine-tune a DCGAN and its encoder on real faces (CPU, deterministic for a seed).

    Writes the generator and encoder weights once the last step is done (recorded in the committed
    manifest when written there); until then, each run continues from --checkpoint.
    """
    with one_line_errors():
        import torch

        from faceanonymixer.faces.datasets import training_photos
        from faceanonymixer.models.dcgan import DCGANGenerator, load_digiface_dcgan, save_dcgan
        from faceanonymixer.models.latent_encoder import load_latent_encoder, save_latent_encoder
        from faceanonymixer.models.weights import WEIGHTS_DIR, weights_entry
        from faceanonymixer.training.generator import (
            GeneratorTraining,
            IdentityTerm,
            cached_identity_faces,
            cached_training_faces,
            train_generator,
            write_training_record,
        )
        from faceanonymixer.utils.errors import InvalidRequestError

        torch.manual_seed(seed)
        if start_from == "digiface-dcgan":
            generator = load_digiface_dcgan()
            encoder = load_latent_encoder(weights_entry(ENCODER_WEIGHTS_NAME).path)
        elif start_from == LFW_GENERATOR_WEIGHTS_NAME:
            generator = load_digiface_dcgan(weights_entry(start_from).path)
            encoder = load_latent_encoder(weights_entry(LFW_ENCODER_WEIGHTS_NAME).path)
        else:
            raise InvalidRequestError(
                f"--start-from is digiface-dcgan or {LFW_GENERATOR_WEIGHTS_NAME}, not {start_from!r}",
                field="start_from",
            )
        config = GeneratorTraining(steps=steps, seed=seed, identity_weight=identity_weight)
        photos = training_photos(data, max_real_photos)
        identity = None
        if identity_weight:
            from faceanonymixer.engine.protection import ProtectionEngine

            engine = ProtectionEngine("embedded", device="cpu")
            prepared = cached_identity_faces(
                engine, photos, checkpoint.with_name(f"{checkpoint.name}.identity-faces.pt")
            )
            faces, identity = prepared.crops(), IdentityTerm(engine, prepared)
        else:
            cache = checkpoint.with_name(f"{checkpoint.name}.faces.pt")
            faces = cached_training_faces(photos, DCGANGenerator(generator), cache)
        state = train_generator(
            generator,
            encoder,
            faces.pixels,
            config=config,
            checkpoint=checkpoint,
            stop_at=stop_at,
            identity=identity,
        )
        if state.step < config.steps:
            typer.echo(f"stopped at step {state.step} of {config.steps}; run again to continue")
            return
        target_dir = out_dir or WEIGHTS_DIR
        target_dir.mkdir(parents=True, exist_ok=True)
        stem = name.replace("-", "_")
        written = {
            name: (f"{stem}.pt", save_dcgan(generator, target_dir / f"{stem}.pt")),
            f"{name}-encoder": (
                f"{stem}_encoder.pt",
                save_latent_encoder(encoder, target_dir / f"{stem}_encoder.pt"),
            ),
        }
        for weights_name, (file, sha256) in written.items():
            _record_if_committed(weights_name, target_dir / file, sha256)
            typer.echo(f"{target_dir / file}  sha256 {sha256}")
        for path in write_training_record(state, faces, target_dir, stem):
            typer.echo(str(path))


@models_app.command("identity-stats")
def identity_stats_command(
    data: DataOption,
    recognizer: Annotated[str, typer.Option(help="Recognizer whose embedding space is measured.")] = "dlib",
    limit: Annotated[int, typer.Option(min=1, help="Photos to embed.")] = 4000,
    out_dir: Annotated[
        Path | None, typer.Option(help="Where the files go (default: the committed weights).")
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(
            help="Weights names <name>-mean and <name>-basis (default: <recognizer>-identity); a "
            "new name leaves the weights of existing profile revisions as they are."
        ),
    ] = None,
    terms: TermsOption = "",
) -> None:
    """Measure the centre of real faces in a recognizer's space and their principal axes (where
    key-derived targets are drawn); recorded in the committed manifest when written there."""
    with one_line_errors():
        from faceanonymixer.faces.datasets import training_photos
        from faceanonymixer.models.identity_stats import save_identity_basis, save_identity_mean
        from faceanonymixer.models.recognizers import load_recognizer
        from faceanonymixer.models.weights import WEIGHTS_DIR
        from faceanonymixer.training.identity_stats import embed_training_faces, identity_basis, identity_mean

        embeddings = embed_training_faces(
            training_photos(data, limit), load_recognizer(recognizer, device="cpu")
        )
        prefix = name or f"{recognizer}-identity"
        target_dir = out_dir or WEIGHTS_DIR
        target_dir.mkdir(parents=True, exist_ok=True)
        mean_file = target_dir / f"{prefix.replace('-', '_')}_mean.npy"
        basis_file = target_dir / f"{prefix.replace('-', '_')}_basis.npz"
        # both computed before either is written: a failure leaves the committed pair as it was
        mean, basis = identity_mean(embeddings), identity_basis(embeddings)
        written = {
            f"{prefix}-mean": (mean_file, save_identity_mean(mean, mean_file)),
            f"{prefix}-basis": (basis_file, save_identity_basis(basis, basis_file)),
        }
        fitted_on = _data_description(data, len(embeddings))
        for weights_name, (target, sha256) in written.items():
            _record_if_committed(weights_name, target, sha256, data=fitted_on, terms=terms)
            typer.echo(f"{target}  sha256 {sha256}")


@models_app.command("fit-identity-code")
def fit_identity_code_command(
    data: DataOption,
    profile: Annotated[
        str, typer.Option(help="Profile whose generator, encoder and recognizer are used.")
    ] = "embedded",
    limit: Annotated[int, typer.Option(min=1, help="Photos to use.")] = 10_000,
    out_dir: Annotated[
        Path | None, typer.Option(help="Where the map goes (default: the committed weights).")
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(
            help="Weights name of the map (default: <generator>-identity-code); a new name leaves "
            "the weights of existing profile revisions as they are."
        ),
    ] = None,
    terms: TermsOption = "",
) -> None:
    """Fit the map from the profile's identities to its generator codes (recorded in the committed
    manifest when written there)."""
    with one_line_errors():
        from dataclasses import replace

        from faceanonymixer.engine.protection import ProtectionEngine
        from faceanonymixer.faces.datasets import training_photos
        from faceanonymixer.models.identity_code import save_identity_code_map
        from faceanonymixer.training.identity_code import fit_identity_code_map, measure_code_pairs

        chosen = _chosen_profile(profile)
        photos = training_photos(data, limit)
        # the map is what is being fitted: the engine runs without the committed one
        engine = ProtectionEngine(replace(chosen, identity_code_map=None))
        offsets, codes, used = measure_code_pairs(engine, photos)
        weights_name = name or f"{chosen.generator}-identity-code"
        target = _npz_target(weights_name, out_dir)
        sha256 = save_identity_code_map(fit_identity_code_map(offsets, codes), target)
        _record_if_committed(
            weights_name, target, sha256, data=_data_description(data, len(used)), terms=terms
        )
        typer.echo(f"{len(used)} of {len(photos)} photos; {target}  sha256 {sha256}")


@models_app.command("train-identity-code")
def train_identity_code_command(
    data: DataOption,
    checkpoint: Annotated[
        Path, typer.Option(help="Resumable training state; the prepared faces are cached beside it.")
    ],
    profile: Annotated[
        str, typer.Option(help="Profile whose models, settings and fitted code map are used.")
    ] = "embedded",
    setting: SettingOption = None,
    steps: Annotated[int, typer.Option(min=1, help="Total steps of the training (over all runs).")] = 3000,
    limit: Annotated[int, typer.Option(min=1, help="Photos to use.")] = 9000,
    seed: Annotated[int, typer.Option()] = 0,
    out_dir: Annotated[
        Path | None, typer.Option(help="Where the network goes (default: the committed weights).")
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="Weights name (default: <generator>-identity-code-network).")
    ] = None,
    terms: TermsOption = "",
) -> None:
    """Train the network that turns a key's target identity into the code of a face that has it
    (CPU; resumable from --checkpoint; recorded in the committed manifest when written there)."""
    with one_line_errors():
        from faceanonymixer.engine.protection import ProtectionEngine
        from faceanonymixer.faces.datasets import training_photos
        from faceanonymixer.models.identity_code import save_identity_code_network
        from faceanonymixer.training.identity_code_network import (
            CodeNetworkTrainer,
            CodeNetworkTraining,
            cached_training_faces,
        )

        chosen = _chosen_profile(profile)
        # the network is trained for the settings it will run with (start_axes 0: it reads the
        # whole target; attribute_targets: it meets attribute-kept targets)
        config = _with_settings(chosen, setting)
        engine = ProtectionEngine(chosen, optimisation=config)
        cache = checkpoint.with_name(f"{checkpoint.name}.faces.pt")
        faces = cached_training_faces(engine, training_photos(data, limit), cache)
        trainer = CodeNetworkTrainer(engine, faces, CodeNetworkTraining(steps=steps, seed=seed))
        network = trainer.run(checkpoint)
        weights_name = name or f"{chosen.generator}-identity-code-network"
        target = _npz_target(weights_name, out_dir)
        sha256 = save_identity_code_network(network, target)
        _record_if_committed(
            weights_name, target, sha256, data=_data_description(data, len(faces)), terms=terms
        )
        typer.echo(f"{len(faces)} faces, {trainer.step} steps; {target}  sha256 {sha256}")


@models_app.command("fit-attributes")
def fit_attributes_command(
    data: Annotated[Path, typer.Option(help="UTKFace-named training photos, one folder each (utk_train).")],
    recognizer: Annotated[
        str,
        typer.Option(
            help="Whose embeddings: facenet (the evaluation's judges) or a registered recognizer "
            "(dlib: the embedded profile's attribute term in the protection loop)."
        ),
    ] = "facenet",
    per_cell: Annotated[
        int | None, typer.Option(min=1, help="At most this many photos per race x gender cell.")
    ] = None,
    cache: Annotated[
        Path | None, typer.Option(help="An .npz of the embeddings, reused when it matches.")
    ] = None,
    out_dir: Annotated[
        Path | None, typer.Option(help="Where the classifiers go (default: the committed weights).")
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(help="Weights name (default: <recognizer>-attribute-classifiers)."),
    ] = None,
    terms: TermsOption = "",
) -> None:
    """Fit apparent-gender and age-group classifiers on a network's embeddings: FaceNet's for the
    evaluation's judges (never in a loss), or the loss recognizer's for the protection loop's
    attribute term; recorded in the committed manifest when written there. UTKFace is for
    non-commercial research only, and so are the fitted coefficients."""
    with one_line_errors():
        from tqdm import tqdm

        from faceanonymixer.models.recognizers import RECOGNIZERS
        from faceanonymixer.training.attributes import JUDGE_READING, TERMS, TRAINING_DATA, fit_from_photos

        readings = [JUDGE_READING, *RECOGNIZERS.names()]
        if recognizer not in readings:
            raise typer.BadParameter(
                f"{recognizer!r}; available: {', '.join(readings)}", param_hint="--recognizer"
            )
        if not data.is_dir():
            raise NotADirectoryError(f"{data} is not a folder of UTKFace-named photos")
        with tqdm(desc="embedding", unit="photo", disable=None) as bar:
            classifiers, summary = fit_from_photos(
                data, recognizer=recognizer, per_cell=per_cell, cache=cache, progress=bar.update
            )
        weights_name = name or f"{recognizer}-attribute-classifiers"
        target = _npz_target(weights_name, out_dir)
        sha256 = classifiers.save(target)
        _record_if_committed(
            weights_name,
            target,
            sha256,
            data=f"{TRAINING_DATA}; {summary['embedded']} of {summary['photos']} photos embedded",
            terms=terms or TERMS,
        )
        typer.echo(
            f"{summary['embedded']} of {summary['photos']} photos; 5-fold accuracy: gender "
            f"{summary['gender_cv_accuracy']:.3f}, age group {summary['age_group_cv_accuracy']:.3f}; "
            f"{target}  sha256 {sha256}"
        )


ModelsDirOption = Annotated[
    Path | None,
    typer.Option(
        "--models-dir",
        help="Folder of downloaded models (default: $FACEANONYMIXER_MODELS_DIR, else "
        "$XDG_CACHE_HOME/faceanonymixer/models, else ~/.cache/faceanonymixer/models).",
    ),
]
ManifestOption = Annotated[
    Path | None,
    typer.Option(
        "--manifest",
        help="Model zoo manifest with URLs and SHA-256 pins (default: $FACEANONYMIXER_MODEL_ZOO, "
        "else the packaged zoo.json).",
    ),
]
ProfileOption = Annotated[str | None, typer.Option(help="Only the models of this profile (e.g. ffhq).")]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def _zoo_selection(names: list[str] | None, profile: str | None, manifest: Path | None) -> list[ZooModel]:
    from faceanonymixer.models.zoo import find_model, load_manifest

    models = load_manifest(manifest)
    chosen = [find_model(name, models) for name in names] if names else list(models.values())
    return [model for model in chosen if profile is None or profile in model.profiles]


def _human_size(size: int | None) -> str:
    if size is None:
        return "?"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"  # pragma: no cover - the loop always returns


@models_app.command("list")
def list_command(
    profile: ProfileOption = None,
    models_dir: ModelsDirOption = None,
    manifest: ManifestOption = None,
    as_json: JsonOption = False,
) -> None:
    """List the downloadable models: file, size, SHA-256 pin, whether present, licence.

    Presence is a file check only; `models verify` hashes.
    """
    with one_line_errors(as_json):
        from faceanonymixer.models.zoo import effective_pin, resolve_models_dir

        directory = resolve_models_dir(models_dir)
        rows = {}
        for model in _zoo_selection(None, profile, manifest):
            pin = effective_pin(model, directory)
            rows[model.name] = {
                **model.to_json(),
                "path": str(model.path(directory)),
                "present": model.path(directory).is_file(),
                "pin": pin.origin if pin else None,
            }

        def render() -> None:
            typer.echo(f"models dir: {directory}")
            for name, row in rows.items():
                present = "present" if row["present"] else "missing"
                pinned = "pinned" if row["pin"] else "NO PIN"
                typer.echo(
                    f"{present:8} {pinned:7} {name:16} {row['file']:28} {_human_size(row['size']):>10}  "
                    f"[{', '.join(row['profiles'])}] {row['licence']}"
                )

        emit(as_json, {"models_dir": str(directory), "models": rows}, render)


@models_app.command("pull")
def pull_command(
    names: Annotated[
        list[str] | None, typer.Argument(help="Models to pull, by name or file name (default: all).")
    ] = None,
    profile: ProfileOption = None,
    sha256: Annotated[
        str | None,
        typer.Option("--sha256", help="Pin the one named model to this SHA-256 (for models without one)."),
    ] = None,
    trust_on_first_use: Annotated[
        bool,
        typer.Option(
            "--trust-on-first-use",
            help="For a model without a published SHA-256: record the digest of what is downloaded "
            f"in {PINS_FILE} next to the models, and hold the file to it from then on.",
        ),
    ] = False,
    force: Annotated[
        bool, typer.Option(help="Replace a present file that differs from its pin (kept otherwise).")
    ] = False,
    progress: Annotated[bool, typer.Option(help="Progress bar on stderr (on a terminal).")] = True,
    timeout: Annotated[float, typer.Option(min=1, help="Seconds a connection or read may stall.")] = 60.0,
    retries: Annotated[
        int,
        typer.Option(
            min=0, help="Retries per URL after a timeout, a dropped connection or HTTP 5xx (each from zero)."
        ),
    ] = 5,
    models_dir: ModelsDirOption = None,
    manifest: ManifestOption = None,
    as_json: JsonOption = False,
) -> None:
    """Download models and verify each against its SHA-256 pin.

    URLs are tried in the manifest's order (the authors' first, mirrors after). A file is moved into
    place only after its size and SHA-256 match; wrong bytes are deleted, and an interrupted transfer
    starts again from zero. Exit 2 on any failure.
    """
    with one_line_errors(as_json):
        from faceanonymixer.models.zoo import DownloadOptions, pull_models, resolve_models_dir

        directory = resolve_models_dir(models_dir)
        results = pull_models(
            _zoo_selection(names, profile, manifest),
            directory,
            sha256=sha256,
            trust_on_first_use=trust_on_first_use,
            force=force,
            options=DownloadOptions(timeout=timeout, retries=retries, progress=progress),
            notify=lambda message: typer.echo(message, err=True),
        )

        def render() -> None:
            for result in results:
                typer.echo(f"{result.action:10} {result.name}  {result.path}  sha256 {result.sha256}")

        emit(as_json, {result.name: result.to_json() for result in results}, render)


_LABELS = {"ok": "ok", "missing": "MISSING", "mismatch": "MISMATCH", "no pin": "NO PIN"}


def _committed_results(names: list[str] | None) -> dict[str, dict[str, object]]:
    from faceanonymixer.models.weights import committed_weights
    from faceanonymixer.utils.files import file_sha256

    results: dict[str, dict[str, object]] = {}
    for name, entry in committed_weights().items():
        if names is not None and name not in names:
            continue
        actual = file_sha256(entry.path) if entry.path.exists() else None
        status = "missing" if actual is None else "ok" if actual == entry.sha256 else "mismatch"
        results[name] = {
            "file": str(entry.path),
            "ok": status == "ok",
            "status": status,
            "sha256": actual,
            "expected": entry.sha256,
            "kind": "committed",
            "required": True,
            "detail": "" if status == "ok" else f"expected SHA-256 {entry.sha256}",
        }
    return results


@models_app.command("verify")
def verify_command(
    names: Annotated[
        list[str] | None,
        typer.Argument(help="Models to check, committed or from the zoo (default: all, as described above)."),
    ] = None,
    profile: ProfileOption = None,
    models_dir: ModelsDirOption = None,
    manifest: ManifestOption = None,
    as_json: JsonOption = False,
) -> None:
    """Check SHA-256 (and size) of the committed weights and the zoo's files; one line per file.

    Without names: every committed weights file, and each zoo file (a zoo file not yet pulled is
    listed as MISSING but does not fail). Named models, or --profile, must all be present. Exit 1
    on any required file missing, and on any file that is wrong or has no pin.
    """
    with one_line_errors(as_json):
        from faceanonymixer.models.weights import committed_weights
        from faceanonymixer.models.zoo import resolve_models_dir, verify_model

        directory = resolve_models_dir(models_dir)
        committed = committed_weights()
        named_zoo = [name for name in names or () if name not in committed]
        results: dict[str, dict[str, object]] = {}
        if profile is None:
            results.update(_committed_results(None if names is None else list(names)))
        if names is None or named_zoo:
            required = names is not None or profile is not None
            for model in _zoo_selection(named_zoo or None, profile, manifest):
                check = verify_model(model, directory)
                results[model.name] = {**check.to_json(), "kind": "zoo", "required": required}

        def render() -> None:
            for name, result in results.items():
                detail = f"  {result['detail']}" if result["detail"] and not result["ok"] else ""
                typer.echo(f"{_LABELS[str(result['status'])]:8} {name}  {result['file']}{detail}")

        emit(as_json, results, render)
        failed = [
            result
            for result in results.values()
            if not result["ok"] and (result["required"] or result["status"] != "missing")
        ]
        if failed:
            raise typer.Exit(1)
