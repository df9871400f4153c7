"""Training the identity-to-code network: its objective is the engine's own start, a run resumes
from its checkpoint exactly, and the command writes a network the profile's loader reads.

Needs the committed weights and the shared face photos (skips otherwise); a few tiny steps.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from faceanonymixer.cli.main import app
from faceanonymixer.engine.profiles import EMBEDDED
from faceanonymixer.engine.protection import ProtectionEngine
from faceanonymixer.engine.protection_key import ProtectionKey
from faceanonymixer.models.generator_base import LatentRole
from faceanonymixer.models.identity_code import IdentityCodeNetwork, load_identity_code_map
from faceanonymixer.training.identity_code_network import (
    CodeNetworkTrainer,
    CodeNetworkTraining,
    TrainingFaces,
    cached_training_faces,
    jittered,
    prepare_training_faces,
)

pytestmark = pytest.mark.usefixtures("one_thread", "weights")
runner = CliRunner()
PHOTOS = ("rose_leslie/img1.jpg", "rose_leslie/img2.jpg", "jennifer_aniston/img1.jpg")


@pytest.fixture(scope="module")
def engine() -> ProtectionEngine:
    return ProtectionEngine(EMBEDDED, device="cpu")


@pytest.fixture(scope="module")
def faces(engine: ProtectionEngine, faces_root: Path) -> TrainingFaces:
    return prepare_training_faces(engine, [faces_root / "fr_examples" / photo for photo in PHOTOS])


def test_the_objective_is_the_distance_of_the_engines_own_start(
    engine: ProtectionEngine, faces: TrainingFaces, faces_root: Path
) -> None:
    key = ProtectionKey(bytes(range(32)))
    trainer = CodeNetworkTrainer(engine, faces, CodeNetworkTraining(seed=1))
    with torch.no_grad():
        trained_view = trainer.distances([1], [key])
        # the same start as the engine builds it for a protection (an untrained network gives
        # the fitted map's codes)
        face = engine.prepare(faces_root / "fr_examples" / PHOTOS[1])
        chips, crops, composite = engine._pixels([face])
        original = engine.original_embeddings(chips, engine.config)
        synthetic, target = engine.key_start_and_target(key, original)
        base, initial = engine.mixed_start(engine.passes.invert(crops), synthetic)
        base[:, engine.generator.layout.rows(LatentRole.OPTIMISED)] = initial
        embedded = engine.recognizer(composite(engine.generator.synthesize(base)))
    torch.testing.assert_close(trained_view, (embedded - target).norm(dim=1), atol=1e-4, rtol=1e-4)
    assert 0.3 < float(trained_view[0]) < 3.0


def test_a_run_resumed_from_its_checkpoint_ends_where_an_uninterrupted_one_does(
    engine: ProtectionEngine, faces: TrainingFaces, tmp_path: Path
) -> None:
    settings = {"batch_size": 2, "seed": 3, "checkpoint_every": 2}
    straight = CodeNetworkTrainer(engine, faces, CodeNetworkTraining(steps=4, **settings)).run()
    checkpoint = tmp_path / "state.pt"
    CodeNetworkTrainer(engine, faces, CodeNetworkTraining(steps=2, **settings)).run(checkpoint)
    resumed = CodeNetworkTrainer(engine, faces, CodeNetworkTraining(steps=4, **settings))
    network = resumed.run(checkpoint)
    assert resumed.step == 4
    for (name, mine), (_, theirs) in zip(
        network.state_dict().items(), straight.state_dict().items(), strict=True
    ):
        torch.testing.assert_close(mine, theirs, msg=name)
    # it trained: the correction moved off its zero start
    assert network.correction[-1].weight.abs().max() > 0


def test_jittered_chips_keep_their_shape_and_range_and_follow_the_seed() -> None:
    chips = torch.rand(3, 3, 150, 150, generator=torch.Generator().manual_seed(0)) * 255
    torch.manual_seed(5)
    first = jittered(chips, 96)
    torch.manual_seed(5)
    again = jittered(chips, 96)
    torch.testing.assert_close(first, again)
    assert first.shape == chips.shape and float(first.min()) >= 0 and float(first.max()) <= 255
    assert float((first - chips).abs().mean()) > 1.0


def test_training_needs_a_fitted_linear_map_to_start_from(faces: TrainingFaces) -> None:
    from dataclasses import replace

    from faceanonymixer.utils.errors import FaceAnonyMixerError

    bare = ProtectionEngine(replace(EMBEDDED, identity_code_map=None), device="cpu")
    with pytest.raises(FaceAnonyMixerError, match="fitted linear identity code map"):
        CodeNetworkTrainer(bare, faces, CodeNetworkTraining())


def test_prepared_faces_are_cached_for_their_photos(
    engine: ProtectionEngine, faces: TrainingFaces, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from faceanonymixer.training import identity_code_network
    from faceanonymixer.utils.errors import FaceAnonyMixerError

    selected, cache = [tmp_path / "set" / "ann" / "1.jpg"], tmp_path / "s.pt.faces.pt"
    calls: list[list[Path]] = []

    def prepare(engine: ProtectionEngine, photos: list[Path]) -> TrainingFaces:
        calls.append(list(photos))
        return faces

    monkeypatch.setattr(identity_code_network, "prepare_training_faces", prepare)
    first = cached_training_faces(engine, selected, cache)
    again = cached_training_faces(engine, selected, cache)
    assert calls == [selected]
    for name in ("chips", "grids", "originals", "reals"):
        torch.testing.assert_close(getattr(again, name), getattr(first, name), rtol=0, atol=0)
    with pytest.raises(FaceAnonyMixerError, match="holds other training faces"):
        cached_training_faces(engine, [tmp_path / "set" / "bob" / "1.jpg"], cache)


def test_the_command_refuses_an_unknown_profile(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        [
            "models",
            "train-identity-code",
            "--data",
            str(tmp_path),
            "--checkpoint",
            str(tmp_path / "s.pt"),
            "--profile",
            "nope",
        ],
    )
    assert result.exit_code == 2 and "unknown profile 'nope'" in result.output
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("setting", "says"),
    [
        ("start_axes", "expected NAME=VALUE"),
        ("start_axes=zero", "expected NAME=VALUE with a JSON value"),
        ("no_such_setting=1", "unknown optimisation settings: no_such_setting"),
        ("kept_shift=1", "kept_shift must not be negative, and needs kept_axes"),
    ],
)
def test_the_command_refuses_a_bad_setting_before_reading_photos(
    tmp_path: Path, setting: str, says: str
) -> None:
    from faceanonymixer.engine.profiles import EMBEDDED

    command = ["models", "train-identity-code", "--data", str(tmp_path)]
    command += ["--checkpoint", str(tmp_path / "s.pt")]
    if "kept_shift" in setting:  # a setting that is valid alone but not with this profile's others
        command += ["--setting", "kept_axes=0"]
        assert EMBEDDED.optimisation.kept_axes
    result = runner.invoke(app, [*command, "--setting", setting])
    assert result.exit_code == 2 and says in " ".join(result.output.split())
    assert not list(tmp_path.iterdir())


def test_settings_are_read_as_json() -> None:
    from faceanonymixer.cli.common import parsed_settings

    items = ["start_axes=0", "attribute_targets=True", "milestones=[0.5]", " kept_shift = 1.5 "]
    assert parsed_settings(items) == {
        "start_axes": 0,
        "attribute_targets": True,
        "milestones": (0.5,),
        "kept_shift": 1.5,
    }
    assert parsed_settings(None) == {}


@pytest.mark.slow
def test_the_command_writes_a_network_the_profiles_loader_reads(faces_root: Path, tmp_path: Path) -> None:
    # a check of the command on a few photos, not a model
    command = ["models", "train-identity-code", "--data", str(faces_root / "fr_examples"), "--limit", "3"]
    command += ["--steps", "2", "--checkpoint", str(tmp_path / "state.pt"), "--out-dir", str(tmp_path)]
    result = runner.invoke(app, command)
    assert result.exit_code == 0, result.output
    assert "2 steps" in result.output
    assert (tmp_path / "state.pt.faces.pt").exists()
    network = load_identity_code_map(tmp_path / "lfw_dcgan_identity_code_network.npz")
    assert isinstance(network, IdentityCodeNetwork)
    assert (network.z_dim, network.embedding_dim) == (100, 128)
