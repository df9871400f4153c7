"""``faceanonymixer models``: train, list and verify the models behind the profiles."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

from faceanonymixer.cli_common import emit, one_line_errors

models_app = typer.Typer(help="Train, list and verify model weights.", no_args_is_help=True)

ENCODER_WEIGHTS_NAME = "embedded-encoder"


def _reproducing_command() -> str:
    """This command line, without where its resumable state was kept (it does not change the result)."""
    arguments, skip = [], False
    for argument in sys.argv[2:]:
        if skip or argument.startswith("--checkpoint="):
            skip = False
            continue
        if argument == "--checkpoint":
            skip = True
            continue
        arguments.append(argument)
    return shlex.join(["faceanonymixer", "models", *arguments])


@models_app.command("train-encoder")
def train_encoder_command(
    data: Annotated[Path, typer.Option(help="Folder of <identity>/<image> training photos (lfw_train).")],
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

        from faceanonymixer.generators import load_generator
        from faceanonymixer.training.encoder import EncoderTraining, aligned_training_faces, train_encoder
        from faceanonymixer.weights import WEIGHTS_DIR, record_weights

        torch.manual_seed(seed)
        model = load_generator(generator)
        config = EncoderTraining(steps=steps, seed=seed, max_real_photos=max_real_photos)
        faces = aligned_training_faces(data, model, limit=config.max_real_photos)
        target = out or WEIGHTS_DIR / "embedded_encoder.pt"
        sha256 = train_encoder(model, faces, target, config=config, checkpoint=checkpoint)
        if target.parent.resolve() == WEIGHTS_DIR.resolve():
            record_weights(ENCODER_WEIGHTS_NAME, target.name, sha256, _reproducing_command())
        typer.echo(f"{target}  sha256 {sha256}")


@models_app.command("identity-stats")
def identity_stats_command(
    data: Annotated[Path, typer.Option(help="Folder of <identity>/<image> training photos (lfw_train).")],
    recognizer: Annotated[str, typer.Option(help="Recognizer whose embedding space is measured.")] = "dlib",
    limit: Annotated[int, typer.Option(min=1, help="Photos to embed.")] = 4000,
) -> None:
    """Measure and commit the mean real-face embedding of a recognizer."""
    with one_line_errors():
        from faceanonymixer.identity_stats import measure_identity_mean, save_identity_mean
        from faceanonymixer.recognizers import load_recognizer
        from faceanonymixer.weights import WEIGHTS_DIR, record_weights

        mean = measure_identity_mean(data, load_recognizer(recognizer, device="cpu"), limit=limit)
        target = WEIGHTS_DIR / f"{recognizer}_identity_mean.npy"
        sha256 = save_identity_mean(mean, target)
        record_weights(f"{recognizer}-identity-mean", target.name, sha256, _reproducing_command())
        typer.echo(f"{target}  sha256 {sha256}")


@models_app.command("verify")
def verify_command(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Check the SHA-256 of every committed weights file; exit 1 on any mismatch."""
    with one_line_errors():
        from faceanonymixer.weights import committed_weights, file_sha256

        results = {}
        for name, entry in committed_weights().items():
            actual = file_sha256(entry.path) if entry.path.exists() else None
            results[name] = {"file": str(entry.path), "ok": actual == entry.sha256, "sha256": actual}

        def render() -> None:
            for name, result in results.items():
                typer.echo(f"{'ok' if result['ok'] else 'MISMATCH':8} {name}  {result['file']}")

        emit(as_json, results, render)
        if not all(result["ok"] for result in results.values()):
            raise typer.Exit(1)
