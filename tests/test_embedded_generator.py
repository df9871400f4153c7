"""The embedded profile's generator trained on real faces: its committed weights load only with
their SHA-256, and one key shared by everyone keeps one person's photos together and two people
apart, as dlib's own C++ pipeline (threshold 0.6) judges the protected photos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from committed import committed_entry

from faceanonymixer.errors import ModelFormatError
from faceanonymixer.profiles import get_profile
from faceanonymixer.protection_key import ProtectionKey
from faceanonymixer.weights import weights_entry

PROFILE = "embedded"
SHARED_KEY = ProtectionKey(bytes(range(100, 132)))


@pytest.fixture(scope="module")
def trained_weights() -> None:
    profile = get_profile(PROFILE)
    for name in (profile.generator, profile.encoder):
        committed_entry(name, f"the {PROFILE} profile's {name}")


def test_the_committed_generator_loads_only_with_its_sha256(trained_weights: None, tmp_path: Path) -> None:
    from faceanonymixer.models.dcgan import load_digiface_dcgan

    entry = weights_entry(get_profile(PROFILE).generator)
    load_digiface_dcgan(entry.path, sha256=entry.sha256)
    tampered = tmp_path / entry.path.name
    data = bytearray(entry.path.read_bytes())
    data[-1] ^= 1
    tampered.write_bytes(bytes(data))
    with pytest.raises(ModelFormatError, match="SHA-256"):
        load_digiface_dcgan(tampered, sha256=entry.sha256)


@pytest.mark.slow
def test_one_shared_key_keeps_a_person_together_and_people_apart(
    trained_weights: None, faces_root: Path
) -> None:
    from faceanonymixer.evaluation.judges import DlibJudge
    from faceanonymixer.protector import Protector

    lfw = faces_root / "lfw"
    photos = [
        lfw / "Al_Sharpton" / "Al_Sharpton_0001.jpg",
        lfw / "Al_Sharpton" / "Al_Sharpton_0002.jpg",
        lfw / "Alastair_Campbell" / "Alastair_Campbell_0001.jpg",
    ]
    protector = Protector(PROFILE)
    # each photo in its own call, as probes arrive
    protected = [protector.protect(photo, SHARED_KEY)[0].photo for photo in photos]
    judge = DlibJudge()
    embeddings = [judge.embed(image) for image in protected]
    assert all(embedding is not None for embedding in embeddings), "dlib found no face in a protected photo"
    same, first_other, second_other = (
        float(np.linalg.norm(embeddings[a] - embeddings[b]))  # type: ignore[operator]
        for a, b in ((0, 1), (0, 2), (1, 2))
    )
    print(f"{PROFILE}, one shared key, dlib: same {same:.3f}, others {first_other:.3f} {second_other:.3f}")
    assert same < 0.6
    assert first_other >= 0.6 and second_other >= 0.6


def test_the_trained_generator_takes_the_key_face_mostly_in_the_centre(trained_weights: None) -> None:
    from faceanonymixer.generators import CENTRE_CELLS, load_generator

    layout = load_generator(get_profile(PROFILE).generator).layout
    weights = layout.key_blend_of(range(16))
    assert {weights[cell] for cell in CENTRE_CELLS} == {0.7}
    assert {weight for cell, weight in enumerate(weights) if cell not in CENTRE_CELLS} == {0.2}
