"""The refinement of the encoder's code before the loop (``inversion_steps``): with
``inversion_identity_weight`` 0 it fits the photo's pixels alone, without running the recognizer.

Needs the committed weights and the shared face photos (skips otherwise); tiny step counts.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from faceanonymixer.engine.profiles import EMBEDDED, OptimisationConfig
from faceanonymixer.engine.protection import PreparedFace, ProtectionEngine

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def engine() -> ProtectionEngine:
    return ProtectionEngine(EMBEDDED, device="cpu")


@pytest.fixture(scope="module")
def face(engine: ProtectionEngine, faces_root: Path) -> PreparedFace:
    return engine.prepare(faces_root / "fr_examples" / "rose_leslie" / "img1.jpg")


@contextmanager
def counted_passes(engine: ProtectionEngine) -> Iterator[list[int]]:
    """The recognizer's passes while the block runs, one entry each."""
    forward = engine.recognizer.forward
    calls: list[int] = []

    def counted(*inputs: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return forward(*inputs)

    engine.recognizer.forward = counted  # type: ignore[method-assign]
    try:
        yield calls
    finally:
        del engine.recognizer.forward


def refined(
    engine: ProtectionEngine,
    face: PreparedFace,
    recognizer_calls: list[int] | None = None,
    **settings: object,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(the refined latent's pixel L1 to the crop, the latent); counts the recognizer's passes
    during the refinement into ``recognizer_calls``."""
    config = engine.profile.optimisation.with_overrides(**settings)
    chips, crops, composite = engine._pixels([face])
    original = engine.original_embeddings(chips, config)
    with counted_passes(engine) as calls:
        latent = engine._invert(crops, original, composite, lambda: False, config)
    if recognizer_calls is not None:
        recognizer_calls.extend(calls)
    with torch.no_grad():
        error = (engine.generator.synthesize(latent) - crops).abs().mean()
    return error, latent


def test_a_pixel_only_refinement_fits_the_crop_without_the_recognizer(
    engine: ProtectionEngine, face: PreparedFace
) -> None:
    encoder_error, _ = refined(engine, face, inversion_steps=0)
    pixel_calls: list[int] = []
    pixel_error, pixel_latent = refined(
        engine, face, pixel_calls, inversion_steps=20, inversion_identity_weight=0.0
    )
    assert not pixel_calls
    assert pixel_error < 0.9 * encoder_error
    both_calls: list[int] = []
    _, both_latent = refined(engine, face, both_calls, inversion_steps=20, inversion_identity_weight=1.0)
    assert len(both_calls) == 20
    assert not torch.equal(pixel_latent, both_latent)


def test_a_reconstruction_without_an_identity_term_does_not_read_the_photos_identity(
    engine: ProtectionEngine, face: PreparedFace
) -> None:
    pixels_only = engine.profile.optimisation.with_overrides(inversion_steps=3, inversion_identity_weight=0.0)
    with counted_passes(engine) as calls:
        engine.reconstruct([face], optimisation=pixels_only)
    assert not calls
    with counted_passes(engine) as calls:
        engine.reconstruct([face], optimisation=pixels_only.with_overrides(inversion_identity_weight=1.0))
    # the photo's identity (its original views), then one pass per refinement step
    assert len(calls) == pixels_only.original_views + 3


def test_the_identity_weight_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="inversion_identity_weight"):
        OptimisationConfig(inversion_identity_weight=-1.0)
