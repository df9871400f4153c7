"""``models train-generator --identity-weight``: the identity term reads a reconstruction as the
protection loop reads a generated face (pasted into the photo's chip), mirrored crops are put back
the right way round, and a run with the term resumes from its checkpoint to the same weights.

Needs the committed weights and the shared face photos (skips otherwise); tiny networks, few steps.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from faceanonymixer.engine.profiles import EMBEDDED
from faceanonymixer.engine.protection import ProtectionEngine
from faceanonymixer.models.dcgan import DigiFaceDCGAN
from faceanonymixer.models.latent_encoder import LatentEncoder
from faceanonymixer.training.generator import (
    GeneratorTraining,
    IdentityTerm,
    cached_identity_faces,
    train_generator,
)
from faceanonymixer.training.identity_code import IdentityFaces, prepare_identity_faces

pytestmark = pytest.mark.usefixtures("one_thread", "weights")
PHOTOS = ("rose_leslie/img1.jpg", "obama/obama.jpg", "rose_leslie/img2.jpg")


@pytest.fixture(scope="module")
def engine() -> ProtectionEngine:
    return ProtectionEngine(EMBEDDED, device="cpu")


@pytest.fixture(scope="module")
def faces(engine: ProtectionEngine, faces_root: Path) -> IdentityFaces:
    return prepare_identity_faces(engine, [faces_root / "fr_examples" / photo for photo in PHOTOS])


def test_faces_are_the_engines_crops_chips_and_identities(
    engine: ProtectionEngine, faces: IdentityFaces
) -> None:
    assert len(faces.paths) == len(faces.pixels) == len(faces.chips) == len(faces.originals) == 3
    face = engine.prepare(faces.paths[1])
    torch.testing.assert_close(
        faces.pixels[1], torch.from_numpy(face.crop.image).permute(2, 0, 1) / 127.5 - 1.0
    )
    assert torch.equal(faces.chips[1], torch.from_numpy(face.chip.image))
    assert faces.crops().paths == faces.paths


def test_the_term_reads_each_crop_as_its_own_photo(engine: ProtectionEngine, faces: IdentityFaces) -> None:
    term = IdentityTerm(engine, faces)
    picks = torch.tensor([0, 1, 2])
    unflipped = torch.zeros(3, dtype=torch.bool)
    torch.manual_seed(0)
    with torch.no_grad():
        own = term.distances(faces.pixels[picks], picks, unflipped)
        # each photo's crop pasted into another person's chip (0 and 1 are two people)
        swapped = term.distances(faces.pixels[torch.tensor([1, 0])], picks[:2], unflipped[:2])
    assert own.shape == (3,) and bool((own < 0.3).all()), own
    assert bool((swapped > 0.6).all()), swapped
    # a mirrored crop marked as mirrored is put back: the same distances, drawn with the same jitter
    torch.manual_seed(0)
    with torch.no_grad():
        mirrored = term.distances(faces.pixels[picks].flip(-1), picks, ~unflipped)
    torch.testing.assert_close(mirrored, own)


def test_the_faces_are_cached_for_their_photos(
    engine: ProtectionEngine, faces: IdentityFaces, tmp_path: Path
) -> None:
    cache = tmp_path / "state.pt.identity-faces.pt"
    first = cached_identity_faces(engine, faces.paths[:2], cache)
    again = cached_identity_faces(engine, faces.paths[:2], cache)
    assert again.paths == first.paths == faces.paths[:2]
    torch.testing.assert_close(again.originals, faces.originals[:2], rtol=0, atol=0)


def test_a_run_with_the_term_resumes_to_the_same_weights(
    engine: ProtectionEngine, faces: IdentityFaces, tmp_path: Path
) -> None:
    config = GeneratorTraining(steps=4, batch_size=2, r1_every=2, identity_weight=1.0, identity_batch=2)
    term = IdentityTerm(engine, faces)

    def networks() -> tuple[DigiFaceDCGAN, LatentEncoder]:
        torch.manual_seed(1)
        return DigiFaceDCGAN(), LatentEncoder()

    generator, encoder = networks()
    whole = train_generator(generator, encoder, faces.pixels, config=config, identity=term)
    expected = {name: value.clone() for name, value in whole.generator.state_dict().items()}

    checkpoint = tmp_path / "state.pt"
    train_generator(*networks(), faces.pixels, config=config, identity=term, checkpoint=checkpoint, stop_at=2)
    torch.manual_seed(123)  # a fresh process: the jitter's draws come from the checkpoint too
    generator, encoder = networks()
    train_generator(generator, encoder, faces.pixels, config=config, identity=term, checkpoint=checkpoint)
    for name, value in generator.state_dict().items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=0)


def test_the_weight_needs_the_term_over_the_same_faces(
    engine: ProtectionEngine, faces: IdentityFaces
) -> None:
    config = GeneratorTraining(steps=1, batch_size=2, identity_weight=1.0)
    with pytest.raises(ValueError, match="identity term"):
        train_generator(DigiFaceDCGAN(), LatentEncoder(), faces.pixels, config=config)
    with pytest.raises(ValueError, match="identity term"):
        train_generator(
            DigiFaceDCGAN(),
            LatentEncoder(),
            faces.pixels[:2],
            config=config,
            identity=IdentityTerm(engine, faces),
        )
    with pytest.raises(ValueError, match="identity_weight"):
        GeneratorTraining(identity_weight=-1.0)
