"""The protection loop's attribute-classifier term in the engine: a profile without classifiers
refuses the setting before loading anything, the term is measured in the loss trace, and its weight
pulls the protected face's apparent gender and age group towards the photo's.

Needs the committed weights and the shared face photos (skips otherwise); tiny step counts.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from committed import committed_entry

from faceanonymixer.engine.profiles import EMBEDDED
from faceanonymixer.engine.protection import PreparedFace, ProtectionEngine, ProtectionResult, Subject
from faceanonymixer.engine.protection_key import ProtectionKey
from faceanonymixer.faces.embedding import chips_to_tensor

pytestmark = pytest.mark.usefixtures("one_thread")

KEY = ProtectionKey(bytes(range(32)), key_id="a")
STEPS = 8


@pytest.fixture(scope="module")
def engine() -> ProtectionEngine:
    committed_entry("dlib-attribute-classifiers", "the loss recognizer's attribute classifiers")
    return ProtectionEngine(EMBEDDED, device="cpu")


@pytest.fixture(scope="module")
def face(engine: ProtectionEngine, faces_root: Path) -> PreparedFace:
    return engine.prepare(faces_root / "fr_examples" / "rose_leslie" / "img1.jpg")


def run(engine: ProtectionEngine, face: PreparedFace, weight: float) -> ProtectionResult:
    config = engine.profile.optimisation.with_overrides(steps=STEPS, lambda_attr_classes=weight)
    return engine.protect([Subject([face], KEY)], optimisation=config)[0][0]


@pytest.mark.parametrize("setting", [{"lambda_attr_classes": 1.0}, {"attribute_targets": True}])
def test_a_profile_without_classifiers_refuses_the_settings(setting: dict[str, object]) -> None:
    without = replace(EMBEDDED, attribute_classifiers=None)
    config = without.optimisation.with_overrides(**setting)
    with pytest.raises(ValueError, match=f"no attribute classifiers for {next(iter(setting))}"):
        ProtectionEngine(without, optimisation=config, device="cpu")


def test_the_term_is_traced_and_its_weight_pulls_attributes_back(
    engine: ProtectionEngine, face: PreparedFace
) -> None:
    unweighted, weighted = run(engine, face, 0.0), run(engine, face, 20.0)
    assert len(unweighted.loss_trace.attribute_classes) == STEPS
    # measured at weight 0 too: where the key's target leaves the photo's gender and age, the
    # protected face drifts away from them
    assert unweighted.loss_trace.attribute_classes[-1] > 0.05
    assert weighted.loss_trace.attribute_classes[-1] < 0.5 * unweighted.loss_trace.attribute_classes[-1]


def test_attribute_targets_are_read_as_the_photo_is(engine: ProtectionEngine, face: PreparedFace) -> None:
    classes = engine.identities.attributes
    assert classes is not None
    mean = engine.passes.embed(chips_to_tensor([face.chip.image], engine.device))
    plain_config = engine.profile.optimisation
    kept_config = plain_config.with_overrides(attribute_targets=True)
    _, plain = engine.key_start_and_target(KEY, mean, plain_config)
    _, kept = engine.key_start_and_target(KEY, mean, kept_config)
    photo_gender, photo_age = classes.log_probabilities(mean)
    kept_gender, kept_age = classes.log_probabilities(kept)
    torch.testing.assert_close(kept_gender, photo_gender, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(kept_age, photo_age, atol=1e-4, rtol=1e-4)
    # the key's target is moved, not replaced: far from the photo still, and close to where it was
    assert (kept - mean).norm() > 0.5 * (plain - mean).norm()
    assert (kept - plain).norm() < (plain - mean).norm()


def test_a_kept_shift_moves_everyone_under_one_key_alike(
    engine: ProtectionEngine, face: PreparedFace
) -> None:
    config = engine.profile.optimisation.with_overrides(attribute_targets=False, kept_shift=0.0)
    shifted = config.with_overrides(kept_shift=1.0)
    mean = engine.passes.embed(chips_to_tensor([face.chip.image], engine.device))
    other = mean + 0.05 * torch.randn(mean.shape, generator=torch.Generator().manual_seed(0))

    def target(key: ProtectionKey, embedding: torch.Tensor, settings: object) -> torch.Tensor:
        return engine.key_start_and_target(key, embedding, settings)[1]

    # one key: both people move by the same offset, so their distance is the same as without it
    offset = target(KEY, mean, shifted) - target(KEY, mean, config)
    torch.testing.assert_close(target(KEY, other, shifted) - target(KEY, other, config), offset)
    # the offset lies along the kept axes, about kept_shift standard deviations of real faces there
    kept = engine.identities.axes(config.kept_axes, "kept_axes")
    assert kept is not None and engine.identities.basis is not None
    torch.testing.assert_close(offset @ kept @ kept.T, offset, atol=1e-5, rtol=1e-4)
    spread = engine.identities.basis.variances[: config.kept_axes].sum().sqrt()
    assert 0.05 * spread < offset.norm() < 4 * spread
    # another key: another offset
    another = ProtectionKey(bytes(range(1, 33)), key_id="b")
    other_offset = target(another, mean, shifted) - target(another, mean, config)
    assert (other_offset - offset).norm() > 0.1 * spread
