"""The loop's re-alignment (``realign_at``): the loss sees the photo's chip cut where the aligner
finds the protected face pasted back, as a downstream recognizer will, from the step named on.

Needs the committed weights and the shared face photos (skips otherwise); tiny step counts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from faceanonymixer.engine.profiles import EMBEDDED, OptimisationConfig
from faceanonymixer.engine.protection import PreparedFace, ProtectionEngine, Subject
from faceanonymixer.engine.protection_key import ProtectionKey

pytestmark = pytest.mark.usefixtures("one_thread")

KEY = ProtectionKey(bytes(range(32)), key_id="a")


@pytest.fixture(scope="module")
def engine() -> ProtectionEngine:
    return ProtectionEngine(EMBEDDED, device="cpu")


@pytest.fixture(scope="module")
def face(engine: ProtectionEngine, faces_root: Path) -> PreparedFace:
    return engine.prepare(faces_root / "fr_examples" / "rose_leslie" / "img1.jpg")


def crop_tensor(face: PreparedFace) -> torch.Tensor:
    return torch.from_numpy(face.crop.image.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1.0


def test_the_chip_follows_the_face_pasted_back(engine: ProtectionEngine, face: PreparedFace) -> None:
    crop_pixels_per_photo_pixel = np.linalg.norm(face.crop.transform[:, 0])
    # the photo's own face pasted back: found where it was, give or take the 64 px rendering
    (same,) = engine._realigned([face], crop_tensor(face))
    assert np.abs(same.chip.landmarks - face.chip.landmarks).max() * crop_pixels_per_photo_pixel < 1.0
    # the face moved 4 px right on the 64 px crop: found further right, chip cut from the photo
    (moved,) = engine._realigned([face], torch.roll(crop_tensor(face), 4, dims=-1))
    shift = (moved.chip.landmarks - face.chip.landmarks)[:, 0].mean()
    assert shift * crop_pixels_per_photo_pixel == pytest.approx(4.0, abs=1.0)
    assert moved.crop is face.crop
    assert not torch.equal(moved.grid, face.grid)


def test_a_face_no_longer_found_keeps_its_chip(engine: ProtectionEngine, face: PreparedFace) -> None:
    (kept,) = engine._realigned([face], torch.zeros_like(crop_tensor(face)))
    assert kept is face


def test_the_loss_changes_its_view_at_the_step_named(engine: ProtectionEngine, face: PreparedFace) -> None:
    steps = 6
    plain = engine.profile.optimisation.with_overrides(steps=steps)
    realigned = plain.with_overrides(realign_at=(0.5,))
    before, after = (engine.protect([Subject([face], KEY)], optimisation=c)[0][0] for c in (plain, realigned))
    assert before.loss_trace.total[:3] == after.loss_trace.total[:3]
    assert before.loss_trace.identity[3] != after.loss_trace.identity[3]
    # the final distance is measured in the view the loop ended with
    assert before.target_distance != after.target_distance


@pytest.mark.parametrize("fractions", [(0.0,), (1.0,), (0.5, 1.2)])
def test_realign_at_takes_fractions_inside_the_loop(fractions: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match="realign_at"):
        OptimisationConfig(realign_at=fractions)
