"""The engine's speed-ups keep its results: it agrees with the plain reference loop of
``benchmarks/reference_loop.py`` (the speed baseline), and the opt-in early stop ends the loop only
when every loss term is satisfied, leaving the result of the steps it did take unchanged.

Needs the committed encoder weights and the shared face photos (skips otherwise); tiny step counts.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch
from committed import committed_entry
from script_loader import load_script

from faceanonymixer.engine.profiles import EMBEDDED_DIGIFACE, OptimisationConfig
from faceanonymixer.engine.protection import PreparedFace, ProtectionEngine, ProtectionResult, Subject
from faceanonymixer.engine.protection_key import ProtectionKey

#: tiny steps: one torch thread (the shared fixture in conftest.py)
pytestmark = pytest.mark.usefixtures("one_thread")

KEY = ProtectionKey(bytes(range(32)), key_id="a")
STEPS = 8
REFERENCE = Path(__file__).resolve().parents[2] / "benchmarks" / "reference_loop.py"


@pytest.fixture(scope="module")
def engine() -> ProtectionEngine:
    committed_entry("digiface-dcgan-encoder", "the embedded profile's encoder")
    return ProtectionEngine("embedded", device="cpu")


@pytest.fixture(scope="module")
def face(engine: ProtectionEngine, faces_root: Path) -> PreparedFace:
    return engine.prepare(faces_root / "fr_examples" / "biden" / "biden.jpg")


def run(engine: ProtectionEngine, face: PreparedFace, **overrides: object) -> ProtectionResult:
    config = engine.profile.optimisation.with_overrides(**{"inversion_steps": 0, "steps": STEPS, **overrides})
    return engine.protect([Subject([face], KEY)], optimisation=config, keep_latents=True)[0][0]


def test_off_by_default_runs_every_step(engine: ProtectionEngine, face: PreparedFace) -> None:
    assert OptimisationConfig().early_stop is False
    assert len(run(engine, face).loss_trace.total) == STEPS


def test_stops_once_every_face_is_done(engine: ProtectionEngine, face: PreparedFace) -> None:
    # margin 1: the anonymity term is relu(cos - 1) = 0 always; tolerance 1e9: any change is a plateau
    result = run(engine, face, margin=1.0, early_stop=True, early_stop_tolerance=1e9, early_stop_patience=2)
    trace = result.loss_trace
    assert len(trace.total) == 3  # a window of patience + 1 measured steps
    assert all(value == 0.0 for value in trace.anonymity)
    # the optimiser took 2 steps (the third measurement stops before stepping): the same latent as
    # a plain 2-step run, bit for bit
    plain = run(engine, face, margin=1.0, steps=2)
    assert result.latents is not None and plain.latents is not None
    np.testing.assert_array_equal(result.latents["protected"], plain.latents["protected"])
    np.testing.assert_array_equal(result.face, plain.face)


def test_does_not_stop_while_identity_still_improves(engine: ProtectionEngine, face: PreparedFace) -> None:
    trace = run(engine, face, margin=1.0, early_stop=True, early_stop_tolerance=1e-4).loss_trace
    assert len(trace.total) == STEPS
    # the reason: it improved by more than 1e-4 (relative) over every window of 5 steps
    identity = trace.identity
    assert all(identity[i] - identity[i + 5] > 1e-4 * identity[i] for i in range(STEPS - 5))


def test_does_not_stop_while_anonymity_is_positive(engine: ProtectionEngine, face: PreparedFace) -> None:
    # margin -1: relu(cos + 1) > 0 unless the embeddings point exactly apart
    trace = run(engine, face, margin=-1.0, early_stop=True, early_stop_tolerance=1e9).loss_trace
    assert len(trace.total) == STEPS
    assert min(trace.anonymity) > 0.0


def test_early_stop_off_gives_the_published_result(engine: ProtectionEngine, face: PreparedFace) -> None:
    # the flag alone (never triggered) must not change anything
    off = run(engine, face)
    never = run(engine, face, early_stop=True, early_stop_tolerance=1e-4)
    assert off.latents is not None and never.latents is not None
    assert len(never.loss_trace.total) == STEPS
    np.testing.assert_array_equal(off.latents["protected"], never.latents["protected"])


@pytest.mark.parametrize("overrides", [{"early_stop_tolerance": -0.1}, {"early_stop_patience": 0}])
def test_rejects_bad_early_stop_settings(overrides: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        OptimisationConfig().with_overrides(**overrides)


@pytest.fixture(scope="module")
def reference() -> ModuleType:
    return load_script(REFERENCE)


def test_engine_agrees_with_the_reference_loop(
    engine: ProtectionEngine, face: PreparedFace, reference: ModuleType
) -> None:
    # the engine batches, keeps fixed inputs, runs NHWC; the reference recomputes everything in NCHW.
    # Same algorithm: one step of each loop lands on the same latent up to float rounding; later
    # steps drift only where Adam's normalised step flips sign on a near-zero gradient.
    def both(steps: int, inversion_steps: int) -> tuple[ProtectionResult, Any]:
        # the key-only start, embedded's settings before 2026-12-06 (the DigiFace profile's loop at
        # gain 3.0: every identity-axis setting at its default), where fixed bounds hold; the
        # profile's own settings are compared against the engine's own rounding in the next test
        config = EMBEDDED_DIGIFACE.optimisation.with_overrides(
            steps=steps, inversion_steps=inversion_steps, target_gain=3.0
        )
        mine = engine.protect([Subject([face], KEY)], optimisation=config, keep_latents=True)[0][0]
        return mine, reference.reference_protect(engine, face, KEY, config)

    mine, theirs = both(1, 1)
    assert mine.latents is not None
    np.testing.assert_allclose(mine.latents["protected"], theirs.latent[0].numpy(), atol=1e-4)
    # float rounding of the latent can tip a pixel that sits near .5 to the next 8-bit level
    levels = np.abs(mine.face.astype(int) - theirs.face.astype(int))
    assert levels.max() <= 1 and levels.mean() < 0.01

    # more steps, no inversion: a second inversion step already flips signs on this CPU or that
    # (the inverted latent moves by 2 x 0.05 in places), so only the mixing loop is compared here
    mine, theirs = both(STEPS, 0)
    assert mine.latents is not None
    drift = np.abs(mine.latents["protected"] - theirs.latent[0].numpy())
    # 0.9 quantile: 1.4e-3 on an AMD EPYC host (2026-12-05), far below one step of 0.05
    assert np.quantile(drift, 0.9) < 5e-3 and drift.max() < 0.05  # the learning rate is 0.05 per step
    assert np.abs(mine.face.astype(int) - theirs.face.astype(int)).mean() < 0.5
    # and the reference hands the engine's models back as it found them
    for model in (engine.generator, engine.recognizer):
        kernels = [p for p in model.parameters() if p.dim() == 4]
        assert kernels and all(p.is_contiguous(memory_format=torch.channels_last) for p in kernels)


def test_engine_and_reference_differ_no_more_than_the_engine_from_itself(
    engine: ProtectionEngine, face: PreparedFace, reference: ModuleType
) -> None:
    # At the profile's settings with both views every step, 8 steps moved some latent values by up
    # to 10 x the learning rate between the two loops (0.9 quantile 9.6e-3, max 0.49), and the
    # engine run in NCHW instead of NHWC, the same code with other float rounding, as far (9.6e-3,
    # 0.49): Adam's sign-normalised step on near-zero gradients, not a difference between the
    # loops. With the views in turn both are smaller (8.8e-4, max 0.019, 2026-12-06). Either way
    # the reference must sit no further from the engine than the engine's own rounding.
    mine = run(engine, face).latents
    with reference.plain_memory_format(engine):  # NCHW, as the reference runs; NHWC again after
        rounded_otherwise = run(engine, face).latents
    assert mine is not None and rounded_otherwise is not None
    # run's settings: the profile's loop, STEPS steps, no inversion
    config = engine.profile.optimisation.with_overrides(steps=STEPS, inversion_steps=0)
    theirs = reference.reference_protect(engine, face, KEY, config).latent[0].numpy()

    # The engine's own rounding spread is itself a draw: for this photo at 8 steps it was 3.7e-4
    # under the profile of 2026-12-07 (kept_axes 2), 3.7e-3 under the one before and 1.1e-2 with
    # kept_axes 0, while the reference sat 4.4e-3, 3.7e-3 and 1.1e-2 away (targets and synthetic
    # latents equal to 1e-5: the loops part where a gradient component is near zero). The floor
    # of 2.5e-3 keeps one small draw from failing a faithful reference; the bound (at least 7e-3)
    # is below what the target_gain 1.5 reference (1.0e-2) and the view variants (4e-2) gave under
    # the profile before (not re-measured under this one).
    own = max(np.quantile(np.abs(mine["protected"] - rounded_otherwise["protected"]), 0.9), 2.5e-3)
    # with the views in turn (bound about 3.8e-3) it catches a reference that sees both views every
    # step (0.040), one view only (0.043) or target_gain 1.5 for 1.6 (0.010); with both views every
    # step the bound was 2.1e-2 and caught only the one-view loop (0.053). Finer differences stay
    # with the key-only test above
    assert np.quantile(np.abs(mine["protected"] - theirs), 0.9) < 2 * own + 2e-3, own
