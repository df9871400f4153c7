"""The protection engine on real photos, with few steps: latent mixing by layout, loss terms,
determinism per key, cancellation, typed errors and output shapes.

Needs the committed encoder weights ("digiface-dcgan-encoder" in weights/manifest.json) and the shared
face photos; skips with the reason when either is missing. One engine serves the whole module.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from committed import committed_entry

from faceanonymixer.engine.identity_target import (
    key_target_map,
    synthetic_code,
    target_identity,
    with_attributes_of,
)
from faceanonymixer.engine.protection import ProtectionEngine, ProtectionResult, Subject, views_at_step
from faceanonymixer.engine.protection_key import ProtectionKey
from faceanonymixer.engine.protector import Protector
from faceanonymixer.faces.embedding import chips_to_tensor
from faceanonymixer.faces.imageio import load_image
from faceanonymixer.models.dcgan import CENTRE_CELLS, DCGANGenerator
from faceanonymixer.models.generator_base import LatentRole
from faceanonymixer.utils.errors import InvalidKeyError, NoFaceError, ProtectionCancelledError

#: tiny steps: one torch thread (the shared fixture in conftest.py)
pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = 4
INVERSION_STEPS = 2
KEY_A = ProtectionKey(bytes(range(32)), key_id="a")
KEY_B = ProtectionKey(bytes(range(100, 132)), key_id="b")


@pytest.fixture(scope="module")
def protector() -> Protector:
    committed_entry("digiface-dcgan-encoder", "the embedded profile's encoder")
    # CPU: the determinism checks compare outputs bit for bit
    return Protector("embedded", device="cpu", steps=STEPS, inversion_steps=INVERSION_STEPS)


@pytest.fixture(scope="module")
def engine(protector: Protector) -> ProtectionEngine:
    return protector.engine


@pytest.fixture(scope="module")
def photo_path(faces_root: Path) -> Path:
    return faces_root / "fr_examples" / "kit_harington" / "john2.jpeg"


@pytest.fixture(scope="module")
def result_a(protector: Protector, photo_path: Path) -> ProtectionResult:
    (result,) = protector.protect(photo_path, KEY_A, keep_latents=True)
    return result


def variant(engine: ProtectionEngine, **overrides: object) -> ProtectionEngine:
    """The same models with other optimisation settings (a shallow copy: nothing is reloaded)."""
    clone = copy.copy(engine)
    clone.config = dataclasses.replace(engine.config, **overrides)  # type: ignore[arg-type]
    return clone


def protect_one(
    engine: ProtectionEngine, photo: Path, key: ProtectionKey, **kwargs: object
) -> ProtectionResult:
    return engine.protect([Subject([engine.prepare(photo)], key)], **kwargs)[0][0]  # type: ignore[arg-type]


# ---- outputs ---------------------------------------------------------------------------------


def test_outputs_have_the_documented_shapes(
    result_a: ProtectionResult, photo_path: Path, engine: ProtectionEngine
) -> None:
    size = engine.profile.output_size
    assert result_a.face.shape == (size, size, 3) and result_a.face.dtype == np.uint8
    assert result_a.original_face.shape == (size, size, 3) and result_a.original_face.dtype == np.uint8
    photo = load_image(photo_path)
    assert result_a.photo.shape == photo.shape and result_a.photo.dtype == np.uint8
    assert result_a.key_id == "a" and result_a.key_version == 1 and result_a.profile_id == "embedded"
    assert {"decode", "align", "invert", "optimise", "encode", "total"} <= set(result_a.timings)
    assert result_a.latents is not None
    assert {name: array.shape for name, array in result_a.latents.items()} == {
        "real": (16, 512),
        "synthetic": (16, 512),
        "protected": (16, 512),
    }


def test_the_photo_changes_only_around_the_face(result_a: ProtectionResult, photo_path: Path) -> None:
    photo = load_image(photo_path)
    changed = np.abs(result_a.photo.astype(int) - photo.astype(int)).max(axis=2) > 0
    assert changed.any(), "the protected face was not pasted back"
    assert changed.mean() < 0.5, "more than half of the photo changed"
    # the photo's corners lie outside the pasted face
    for corner in (changed[:10, :10], changed[:10, -10:], changed[-10:, :10], changed[-10:, -10:]):
        assert not corner.any()
    assert not np.array_equal(result_a.face, result_a.original_face)


def expected_synthetic(engine: ProtectionEngine, photo: Path, key: ProtectionKey) -> np.ndarray:
    """The key's start for this photo, computed here from the documented formula: the key's own
    draw, mixed (weight w > 0) with the code of the photo's key-derived target under the
    profile's fitted map."""
    face = engine.prepare(photo)
    config, centre = engine.config, engine.identities.centre
    assert engine.identities.code_map is not None
    with torch.no_grad():
        chip = chips_to_tensor([face.chip.image])
        original = engine.recognizer(chip)
        if config.original_views == 2:
            original = (original + engine.recognizer(chip.flip(-1))) / 2

        def top_axes(count: int) -> torch.Tensor | None:
            if not count:
                return None
            assert engine.identities.basis is not None
            return engine.identities.basis.top(count)

        def rotated(axes: torch.Tensor | None) -> torch.Tensor | None:
            return None if axes is None else axes[:, config.kept_axes :]

        mapping = config.target_gain * key_target_map(
            key,
            "embedded",
            original.shape[1],
            config.target_rank,
            rotated(top_axes(config.target_subspace)),
            rotated(top_axes(config.source_axes)),
        )
        kept = top_axes(config.kept_axes)
        if kept is not None:  # the identity along the top axes is kept, unrotated
            mapping = mapping + kept @ kept.T
        # the key's offset of the kept coordinates, the same for the target and the coarse start
        shift = engine.identities.kept_offset(key, config)
        target = target_identity(original, centre, mapping) + shift
        classes = engine.identities.attributes
        if config.attribute_targets:  # moved to where the classifiers read it as the photo
            assert classes is not None
            target = with_attributes_of(target, original, classes.directions())
        start = target - centre
        axes = top_axes(config.start_axes)
        if axes is not None:
            start = (original - centre) @ axes @ axes.T @ mapping.T + shift
            if config.attribute_targets:
                assert classes is not None
                start = with_attributes_of(centre + start, original, classes.directions()) - centre
        z = synthetic_code(
            key,
            "embedded",
            engine.generator.z_dim,
            original - centre,
            config.synthetic_identity_weight,
            engine.identities.code_map.code(start) if config.synthetic_identity_weight > 0 else None,
        )
        return engine.generator.mapping(z)[0].numpy()


def test_synthetic_latent_is_the_keys_code_for_this_identity(
    result_a: ProtectionResult, engine: ProtectionEngine, photo_path: Path, faces_root: Path
) -> None:
    assert result_a.latents is not None
    np.testing.assert_allclose(
        result_a.latents["synthetic"], expected_synthetic(engine, photo_path, KEY_A), rtol=1e-6, atol=1e-6
    )
    other_path = faces_root / "lfw" / "Al_Sharpton" / "Al_Sharpton_0001.jpg"
    key_only = variant(engine, synthetic_identity_weight=0.0, steps=0, inversion_steps=0)
    key_only_latents = protect_one(key_only, photo_path, KEY_A, keep_latents=True).latents
    assert key_only_latents is not None
    for weight in (0.5, 1.0):
        # drawn partly (or wholly) from the target identity: another person under the same key
        # starts from another face, and so does this person under another key
        start = variant(engine, synthetic_identity_weight=weight, steps=0, inversion_steps=0)
        mine, other, another_key = (
            protect_one(start, path, key, keep_latents=True).latents
            for path, key in ((photo_path, KEY_A), (other_path, KEY_A), (photo_path, KEY_B))
        )
        assert mine is not None and other is not None and another_key is not None
        np.testing.assert_allclose(
            mine["synthetic"], expected_synthetic(start, photo_path, KEY_A), rtol=1e-6, atol=1e-6
        )
        assert not np.allclose(mine["synthetic"], key_only_latents["synthetic"], atol=1e-3)
        assert not np.allclose(other["synthetic"], mine["synthetic"], atol=1e-3)
        assert not np.allclose(another_key["synthetic"], mine["synthetic"], atol=1e-3)


# the key's face of a subject under a shared key follows its identity: read from the photo and its
# mirror image (original_views 2), and from its coarse part only (start_axes k)
@pytest.mark.parametrize(
    ("setting", "plain", "other", "refused"), [("original_views", 1, 2, 3), ("start_axes", 0, 16, -1)]
)
def test_the_keys_face_follows_the_identity_as_the_settings_read_it(
    engine: ProtectionEngine, photo_path: Path, setting: str, plain: int, other: int, refused: int
) -> None:
    latents = {}
    for value in (plain, other):
        start = variant(engine, synthetic_identity_weight=1.0, steps=0, inversion_steps=0, **{setting: value})
        result = protect_one(start, photo_path, KEY_A, keep_latents=True)
        assert result.latents is not None
        np.testing.assert_allclose(
            result.latents["synthetic"], expected_synthetic(start, photo_path, KEY_A), rtol=1e-6, atol=1e-6
        )
        latents[value] = result.latents["synthetic"]
    assert not np.allclose(latents[plain], latents[other], atol=1e-4)
    with pytest.raises(ValueError, match=setting):
        dataclasses.replace(engine.config, **{setting: refused})


def test_targets_in_the_subspace_lie_inside_the_real_face_axes(engine: ProtectionEngine) -> None:
    assert engine.identities.basis is not None
    mean = engine.identities.centre[None] + 0.1 * torch.randn(
        1, 128, generator=torch.Generator().manual_seed(5)
    )
    axes = engine.identities.basis.top(64)
    for count in (64, 96):
        _, target = engine.key_start_and_target(
            KEY_A, mean, dataclasses.replace(engine.config, target_subspace=count, attribute_targets=False)
        )
        offset = (target - engine.identities.centre)[0]
        inside = engine.identities.basis.top(count)
        assert (offset - inside @ (inside.T @ offset)).norm() < 1e-4 * offset.norm()
    # the whole space (0): most of the target lies off the 64 main axes of real faces
    _, anywhere = engine.key_start_and_target(
        KEY_A, mean, dataclasses.replace(engine.config, target_subspace=0, kept_axes=0, kept_shift=0.0)
    )
    offset = (anywhere - engine.identities.centre)[0]
    assert (offset - axes @ (axes.T @ offset)).norm() > 0.3 * offset.norm()


def test_targets_from_source_axes_ignore_the_identity_off_them(engine: ProtectionEngine) -> None:
    assert engine.identities.basis is not None
    # the key's map alone: the attribute classifiers read the whole embedding (attribute_targets)
    config = dataclasses.replace(
        engine.config, source_axes=32, target_rank=32, kept_axes=0, kept_shift=0.0, attribute_targets=False
    )
    draws = torch.randn(2, 128, generator=torch.Generator().manual_seed(6))
    mean = engine.identities.centre[None] + 0.1 * draws[:1]
    axes = engine.identities.basis.top(32)
    off_axes = 0.1 * (draws[1:] - (draws[1:] @ axes) @ axes.T)
    _, target = engine.key_start_and_target(KEY_A, mean, config)
    _, moved = engine.key_start_and_target(KEY_A, mean + off_axes, config)
    torch.testing.assert_close(moved, target, atol=1e-5, rtol=0)
    _, along = engine.key_start_and_target(KEY_A, mean + 0.1 * draws[1:] @ axes @ axes.T, config)
    assert (along - target).norm() > 0.01
    with pytest.raises(ValueError, match="source_axes"):
        dataclasses.replace(engine.config, source_axes=16, target_rank=32, kept_axes=0)


def test_kept_axes_keep_the_group_level_identity_and_rotate_the_rest(engine: ProtectionEngine) -> None:
    assert engine.identities.basis is not None
    config = dataclasses.replace(
        engine.config,
        kept_axes=4,
        source_axes=52,
        target_subspace=64,
        target_rank=48,
        kept_shift=0.0,
        attribute_targets=False,
    )
    draws = torch.randn(2, 128, generator=torch.Generator().manual_seed(7))
    mean = engine.identities.centre[None] + 0.1 * draws[:1]
    kept = engine.identities.basis.top(4)
    _, target = engine.key_start_and_target(KEY_A, mean, config)
    _, other_key = engine.key_start_and_target(KEY_B, mean, config)
    offset, original = (target - engine.identities.centre)[0], (mean - engine.identities.centre)[0]
    # along the kept axes the target is the photo's identity, under any key
    torch.testing.assert_close(kept.T @ offset, kept.T @ original, atol=1e-5, rtol=0)
    torch.testing.assert_close(
        kept.T @ (other_key - engine.identities.centre)[0], kept.T @ original, atol=1e-5, rtol=0
    )
    # off them the key moves it: the rest of the target differs between keys and from the photo
    rest = offset - kept @ (kept.T @ offset)
    assert (rest - (original - kept @ (kept.T @ original))).norm() > 0.5 * rest.norm()
    assert ((target - other_key)[0]).norm() > 0.5 * rest.norm()
    # with none kept, the kept axes are rotated like the rest
    _, rotated = engine.key_start_and_target(KEY_A, mean, dataclasses.replace(config, kept_axes=0))
    assert (kept.T @ (rotated - mean)[0]).norm() > 0.01
    with pytest.raises(ValueError, match="kept_axes"):
        dataclasses.replace(engine.config, kept_axes=8, source_axes=48, target_rank=48)


@pytest.mark.parametrize(
    "overrides",
    [{"target_subspace": 64}, {"source_axes": 64}, {"start_axes": 16, "synthetic_identity_weight": 1.0}],
)
def test_axes_without_an_identity_basis_are_refused(
    engine: ProtectionEngine, overrides: dict[str, object]
) -> None:
    # only the setting under test asks for axes (the default profile asks for all three)
    clone = variant(
        engine,
        **{
            "target_subspace": 0,
            "source_axes": 0,
            "start_axes": 0,
            "kept_axes": 0,
            "kept_shift": 0.0,
            **overrides,
        },
    )
    clone.identities = dataclasses.replace(engine.identities, basis=None)
    with pytest.raises(ValueError, match=f"no identity basis for {next(iter(overrides))}"):
        clone.key_start_and_target(KEY_A, engine.identities.centre[None])


# ---- latent mixing by layout -----------------------------------------------------------------


@pytest.fixture(scope="module")
def central_engine(engine: ProtectionEngine) -> ProtectionEngine:
    """The engine with a generator that optimises only the central cells; the rest stay REAL."""
    clone = copy.copy(engine)
    network = engine.generator.network  # type: ignore[attr-defined]
    clone.generator = DCGANGenerator(network, optimised_cells=CENTRE_CELLS)
    return clone


def test_real_rows_are_kept_and_optimised_rows_move(
    central_engine: ProtectionEngine, photo_path: Path
) -> None:
    layout = central_engine.generator.layout
    real_rows, optimised_rows = layout.rows(LatentRole.REAL), layout.rows(LatentRole.OPTIMISED)
    assert optimised_rows == list(CENTRE_CELLS) and len(real_rows) == 12
    result = protect_one(central_engine, photo_path, KEY_A, keep_latents=True)
    assert result.latents is not None
    real, synthetic, protected = (result.latents[name] for name in ("real", "synthetic", "protected"))
    np.testing.assert_array_equal(protected[real_rows], real[real_rows])
    # every optimised row moved away from the real face (and is not simply the key's rows)
    for row in optimised_rows:
        assert np.abs(protected[row] - real[row]).max() > 1e-3, row
        assert np.abs(protected[row] - synthetic[row]).max() > 1e-3, row


def test_without_steps_optimised_rows_start_from_the_key_blend(
    central_engine: ProtectionEngine, photo_path: Path
) -> None:
    still = variant(central_engine, steps=0)
    result = protect_one(still, photo_path, KEY_A, keep_latents=True)
    assert result.latents is not None
    real, synthetic, protected = (result.latents[name] for name in ("real", "synthetic", "protected"))
    weight = still.generator.layout.key_blend
    assert weight == 0.5
    rows = list(CENTRE_CELLS)
    np.testing.assert_allclose(
        protected[rows], (1 - weight) * real[rows] + weight * synthetic[rows], atol=1e-5
    )
    other = [row for row in range(16) if row not in rows]
    np.testing.assert_array_equal(protected[other], real[other])
    assert result.loss_trace.total == []


# ---- loss terms ------------------------------------------------------------------------------


def test_loss_trace_has_one_value_per_step_and_no_negative_terms(
    result_a: ProtectionResult, engine: ProtectionEngine
) -> None:
    trace = result_a.loss_trace
    for name in ("total", "anonymity", "identity", "attributes", "attribute_classes"):
        values = getattr(trace, name)
        assert len(values) == STEPS, name
        assert all(np.isfinite(values)) and min(values) >= 0.0, (name, values)
    config = engine.config
    for step in range(STEPS):
        expected = (
            config.lambda_anon * trace.anonymity[step]
            + config.lambda_id * trace.identity[step]
            + config.lambda_attr * trace.attributes[step]
            + config.lambda_attr_classes * trace.attribute_classes[step]
        )
        assert trace.total[step] == pytest.approx(expected, rel=1e-5)


def test_optimisation_pulls_to_the_target_and_away_from_the_original(result_a: ProtectionResult) -> None:
    trace = result_a.loss_trace
    assert trace.identity[-1] < trace.identity[0], trace.identity
    assert trace.anonymity[-1] <= trace.anonymity[0], trace.anonymity
    assert trace.total[-1] < trace.total[0], trace.total
    assert result_a.target_distance > 0 and result_a.original_distance > 0


def test_optimisation_gets_closer_to_the_target_than_its_starting_point(
    result_a: ProtectionResult, engine: ProtectionEngine, photo_path: Path
) -> None:
    """Against the un-optimised start (steps=0: the real/key blend), in the loss space.

    Not asserted: that ``original_distance`` also grows. The anonymity term is a hinge at the
    margin (0): once the centred cosine is below it, nothing pushes further from the original,
    and the pull toward the target may bring the face back a little (seen with other keys).
    """
    start = protect_one(variant(engine, steps=0), photo_path, KEY_A)
    assert result_a.target_distance < start.target_distance
    # the protected face does not match the original for the loss recognizer
    threshold = engine.recognizer.match_threshold
    assert threshold is not None
    assert result_a.original_distance > threshold


def test_views_taken_in_turn_show_the_loss_one_view_a_step(
    engine: ProtectionEngine, photo_path: Path
) -> None:
    """views_per_step 1 of 2 views: the first step sees the plain view only (as a one-view loop
    does, bit for bit), the second the mirrored one (so the two loops part), and the loop differs
    from one that sees both views at every step."""

    def protected(steps: int, **overrides: object) -> np.ndarray:
        start = variant(engine, steps=steps, inversion_steps=0, **overrides)
        result = protect_one(start, photo_path, KEY_A, keep_latents=True)
        assert result.latents is not None
        return result.latents["protected"]

    np.testing.assert_array_equal(protected(1, views=2, views_per_step=1), protected(1, views=1))
    in_turn = protected(2, views=2, views_per_step=1)
    assert not np.allclose(in_turn, protected(2, views=1), atol=1e-4)
    assert not np.allclose(in_turn, protected(2, views=2, views_per_step=0), atol=1e-4)
    with pytest.raises(ValueError, match="views_per_step"):
        dataclasses.replace(engine.config, views=2, views_per_step=3)


def test_views_at_step_cycle_through_every_view() -> None:
    views = ["plain", "mirror", "turned"]
    assert [views_at_step(views, step, 1) for step in range(4)] == [
        ["plain"],
        ["mirror"],
        ["turned"],
        ["plain"],
    ]
    assert [views_at_step(views, step, 2) for step in range(3)] == [
        ["plain", "mirror"],
        ["turned", "plain"],
        ["mirror", "turned"],
    ]
    assert views_at_step(views, 5, 0) == views_at_step(views, 5, 3) == views


# ---- determinism per key ---------------------------------------------------------------------


def test_same_photo_and_key_give_the_same_output(
    protector: Protector, result_a: ProtectionResult, photo_path: Path
) -> None:
    (again,) = protector.protect(photo_path, KEY_A.material)
    np.testing.assert_array_equal(again.photo, result_a.photo)
    np.testing.assert_array_equal(again.face, result_a.face)
    assert again.loss_trace == result_a.loss_trace
    assert again.key_id is None  # raw bytes carry no key id


def test_another_key_gives_another_output(
    protector: Protector, result_a: ProtectionResult, photo_path: Path
) -> None:
    (other,) = protector.protect(photo_path, KEY_B)
    assert not np.array_equal(other.face, result_a.face)
    assert np.abs(other.face.astype(int) - result_a.face.astype(int)).mean() > 1.0
    # a re-issued key (same material, next version) is another key too
    (reissued,) = protector.protect(photo_path, dataclasses.replace(KEY_A, version=2))
    assert not np.array_equal(reissued.face, result_a.face)
    assert reissued.key_version == 2


# ---- cancellation ----------------------------------------------------------------------------


class CountingStop:
    def __init__(self, allowed: int) -> None:
        self.allowed, self.calls = allowed, 0

    def __call__(self) -> bool:
        self.calls += 1
        return self.calls > self.allowed


@pytest.mark.parametrize("allowed", [1, INVERSION_STEPS + 1])
def test_should_stop_cancels_midway(engine: ProtectionEngine, photo_path: Path, allowed: int) -> None:
    """``should_stop`` is asked before every inversion and optimisation step."""
    stop = CountingStop(allowed)
    with pytest.raises(ProtectionCancelledError):
        protect_one(engine, photo_path, KEY_A, should_stop=stop)
    assert stop.calls == allowed + 1


def test_should_stop_is_asked_once_per_step(engine: ProtectionEngine, photo_path: Path) -> None:
    stop = CountingStop(10**6)
    protect_one(engine, photo_path, KEY_A, should_stop=stop)
    assert stop.calls == INVERSION_STEPS + STEPS


@pytest.fixture
def counted_steps(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    steps: list[int] = []
    original = torch.optim.Adam.step

    def step(self: torch.optim.Adam, *args: object, **kwargs: object) -> object:
        steps.append(1)
        return original(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(torch.optim.Adam, "step", step)
    yield steps


def test_a_stop_before_anything_takes_no_step(
    engine: ProtectionEngine, photo_path: Path, counted_steps: list[int]
) -> None:
    synthesized: list[int] = []
    clone = copy.copy(engine)
    generator = copy.copy(engine.generator)
    original = generator.synthesize

    def synthesize(latent: torch.Tensor) -> torch.Tensor:
        synthesized.append(1)
        return original(latent)

    generator.synthesize = synthesize  # type: ignore[method-assign]
    clone.generator = generator
    stop = CountingStop(0)
    with pytest.raises(ProtectionCancelledError):
        protect_one(clone, photo_path, KEY_A, should_stop=stop)
    assert stop.calls == 1 and counted_steps == [] and synthesized == []
    # and without inversion steps it stops before the first optimisation step
    stop = CountingStop(0)
    with pytest.raises(ProtectionCancelledError):
        protect_one(variant(clone, inversion_steps=0), photo_path, KEY_A, should_stop=stop)
    assert stop.calls == 1 and counted_steps == [] and synthesized == []


# ---- typed errors ----------------------------------------------------------------------------


def test_a_photo_without_a_face_is_no_face_error(protector: Protector, engine: ProtectionEngine) -> None:
    grey = np.full((200, 200, 3), 128, dtype=np.uint8)
    with pytest.raises(NoFaceError):
        engine.prepare(grey)
    with pytest.raises(NoFaceError):
        protector.protect(grey, KEY_A)


def test_one_faceless_photo_fails_the_whole_call(protector: Protector, photo_path: Path) -> None:
    grey = np.full((200, 200, 3), 128, dtype=np.uint8)
    with pytest.raises(NoFaceError):
        protector.protect([photo_path, grey], KEY_A)


@pytest.mark.parametrize("material", [b"", b"\x01" * 31, b"\x01" * 33])
def test_invalid_key_bytes_are_invalid_key_error(
    protector: Protector, photo_path: Path, material: bytes
) -> None:
    with pytest.raises(InvalidKeyError):
        protector.protect(photo_path, material)


def test_no_images_is_a_value_error(protector: Protector) -> None:
    with pytest.raises(ValueError, match="no images"):
        protector.protect([], KEY_A)


def test_unknown_optimisation_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown optimisation settings"):
        Protector("embedded", device="cpu", stepz=3)
