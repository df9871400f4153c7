"""``models train-generator``'s loop: deterministic, resumable to the same weights, and its output
loads as a DCGAN checkpoint with its SHA-256 checked. Tiny random networks and data: no weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from faceanonymixer.models.dcgan import DigiFaceDCGAN, load_digiface_dcgan, save_dcgan
from faceanonymixer.models.latent_encoder import LatentEncoder
from faceanonymixer.training import generator as training
from faceanonymixer.training.encoder import TrainingFaces
from faceanonymixer.training.generator import (
    GeneratorTraining,
    cached_training_faces,
    train_generator,
    write_training_record,
)
from faceanonymixer.utils.errors import FaceAnonyMixerError, ModelFormatError

#: tiny steps: one torch thread (the shared fixture in conftest.py)
pytestmark = pytest.mark.usefixtures("one_thread")

CONFIG = GeneratorTraining(steps=4, batch_size=2, r1_every=2, checkpoint_every=1)


def networks() -> tuple[DigiFaceDCGAN, LatentEncoder]:
    torch.manual_seed(1)
    return DigiFaceDCGAN(), LatentEncoder()


def faces() -> torch.Tensor:
    return torch.rand(6, 3, 64, 64, generator=torch.Generator().manual_seed(2)) * 2 - 1


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.clone() for name, value in model.state_dict().items()}


def test_resumed_training_equals_one_run(tmp_path: Path) -> None:
    generator, encoder = networks()
    before = weights(generator)
    train_generator(generator, encoder, faces(), config=CONFIG)
    whole = weights(generator), weights(encoder)
    assert any(not torch.equal(before[name], whole[0][name]) for name in before)

    generator, encoder = networks()
    checkpoint = tmp_path / "state.pt"
    first = train_generator(generator, encoder, faces(), config=CONFIG, checkpoint=checkpoint, stop_at=2)
    assert first.step == 2
    generator, encoder = networks()  # a fresh process: everything comes from the checkpoint
    second = train_generator(generator, encoder, faces(), config=CONFIG, checkpoint=checkpoint)
    assert second.step == CONFIG.steps
    for trained, expected in zip((weights(generator), weights(encoder)), whole, strict=True):
        assert trained.keys() == expected.keys()
        for name in expected:
            torch.testing.assert_close(trained[name], expected[name], rtol=0, atol=0)
    assert not any(p.requires_grad for p in generator.parameters())


def test_refuses_to_resume_with_other_settings(tmp_path: Path) -> None:
    checkpoint = tmp_path / "state.pt"
    train_generator(*networks(), faces(), config=CONFIG, checkpoint=checkpoint, stop_at=1)
    other = GeneratorTraining(steps=4, batch_size=2, r1_every=2, reconstruction_weight=1.0)
    with pytest.raises(ValueError, match="other training settings"):
        train_generator(*networks(), faces(), config=other, checkpoint=checkpoint)
    # more steps is a continuation, not other settings
    longer = GeneratorTraining(steps=5, batch_size=2, r1_every=2, checkpoint_every=1)
    assert train_generator(*networks(), faces(), config=longer, checkpoint=checkpoint).step == 5


def test_rejects_faces_of_another_size() -> None:
    with pytest.raises(ValueError, match="64"):
        train_generator(*networks(), torch.zeros(2, 3, 32, 32), config=CONFIG)


def test_saved_generator_loads_with_its_sha256(tmp_path: Path) -> None:
    generator, _ = networks()
    path = tmp_path / "g.pt"
    sha256 = save_dcgan(generator, path)
    loaded = load_digiface_dcgan(path, sha256=sha256)
    z = torch.randn(2, 100)
    torch.testing.assert_close(loaded(z), generator.eval()(z))
    with pytest.raises(ModelFormatError, match="SHA-256"):
        load_digiface_dcgan(path, sha256="0" * 64)


def test_the_record_lists_the_photos_and_draws_samples_and_reconstructions(tmp_path: Path) -> None:
    data = tmp_path / "data"
    paths = [data / "lfw_train" / "ann" / "1.jpg", data / "utk_train" / "bob" / "2.jpg"]
    state = train_generator(*networks(), faces(), config=GeneratorTraining(steps=1, batch_size=2))
    photos, grid = write_training_record(state, TrainingFaces(faces(), paths), tmp_path, "g")
    assert photos.read_text() == "lfw_train/ann/1.jpg\nutk_train/bob/2.jpg\n"  # which set, too
    with Image.open(grid) as image:
        assert image.size == (12 * 64, 4 * 64)  # 2 rows of samples, real crops, reconstructions
    assert sorted(path.name for path in tmp_path.iterdir()) == ["g_photos.txt", "g_samples.png"]


def test_aligned_faces_are_cached_with_their_photos(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data, cache = tmp_path / "data", tmp_path / "state.pt.faces.pt"
    selected = [data / "set" / "ann" / "1.jpg", data / "set" / "ann" / "2.jpg"]
    aligned = TrainingFaces(faces()[:1], selected[1:])  # the first photo has no face
    calls = []

    def align(photos: list[Path], generator: object) -> TrainingFaces:
        calls.append(list(photos))
        return aligned

    monkeypatch.setattr(training, "aligned_training_faces", align)
    first = cached_training_faces(selected, None, cache)  # type: ignore[arg-type]
    again = cached_training_faces(selected, None, cache)  # type: ignore[arg-type]
    assert calls == [selected] and again.paths == first.paths == aligned.paths
    torch.testing.assert_close(again.pixels, aligned.pixels, rtol=0, atol=0)
    with pytest.raises(FaceAnonyMixerError, match="delete it"):
        cached_training_faces(selected[:1], None, cache)  # type: ignore[arg-type]


def test_training_photos_take_an_equal_spread_share_of_each_folder(tmp_path: Path) -> None:
    from faceanonymixer.faces.datasets import training_photos

    for name, count in (("small", 3), ("large", 10)):
        for index in range(count):
            folder = tmp_path / name / f"{index:02d}_person"
            folder.mkdir(parents=True)
            (folder / "a.jpg").write_bytes(b"")
    chosen = training_photos([tmp_path / "small", tmp_path / "large"], 8)
    small = [path for path in chosen if path.parts[-3] == "small"]
    large = [path.parent.name for path in chosen if path.parts[-3] == "large"]
    assert len(small) == 3  # all it has (fewer than its share of 4)
    assert large == ["00_person", "02_person", "05_person", "07_person"]  # spread, not the first four
    assert len(training_photos([tmp_path / "large"], 100)) == 10  # a folder smaller than the limit: all
