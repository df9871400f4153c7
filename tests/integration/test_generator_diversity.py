"""benchmarks/generator_diversity.py: the rates it reports from a judge's embeddings."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from script_loader import load_script

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def diversity() -> ModuleType:
    load_script(BENCHMARKS / "judge_protection.py")  # its selection options, imported by name
    return load_script(BENCHMARKS / "generator_diversity.py")


def test_rates_count_pairs_of_different_and_of_the_same_people(diversity: ModuleType) -> None:
    labels = ["a", "a", "b", "c"]
    embeddings = np.array([[0.0, 0.0], [0.5, 0.0], [0.3, 0.0], [3.0, 0.0]])
    measures = diversity.variant_measures(labels, embeddings, embeddings, 0.6)
    # impostor pairs: (a0, b) 0.3 matches, (a1, b) 0.2 matches, a0-c, a1-c, b-c do not
    assert measures["impostor_nonmatch"]["pairs"] == 5
    assert measures["impostor_nonmatch"]["rate"] == pytest.approx(3 / 5)
    assert measures["genuine_match"]["pairs"] == 1
    assert measures["genuine_match"]["rate"] == 1.0
    assert measures["found"] == 1.0


def test_a_face_not_found_leaves_its_pairs_out(diversity: ModuleType) -> None:
    labels = ["a", "a", "b"]
    embeddings = np.array([[0.0, 0.0], [np.nan, np.nan], [2.0, 0.0]])
    measures = diversity.variant_measures(labels, embeddings, embeddings, 0.6)
    assert measures["found"] == pytest.approx(2 / 3)
    assert measures["impostor_nonmatch"]["pairs"] == 1
    assert measures["impostor_nonmatch"]["skipped"] == 1
    assert measures["genuine_match"]["pairs"] == 0
    assert measures["genuine_match"]["rate"] is None


def test_each_image_is_compared_with_the_photo_it_was_made_from(diversity: ModuleType) -> None:
    labels = ["a", "a", "b"]
    photos = np.array([[0.0, 0.0], [1.0, 0.0], [5.0, 0.0]])
    # the first image is near its own photo, the second near the other photo of its person (not
    # its own), the third has no face
    images = np.array([[0.2, 0.0], [0.1, 0.0], [np.nan, np.nan]])
    own = diversity.variant_measures(labels, images, photos, 0.6)["own_photo_match"]
    assert own["pairs"] == 2 and own["skipped"] == 1
    assert own["rate"] == pytest.approx(1 / 2)
    assert own["mean_distance"] == pytest.approx((0.2 + 0.9) / 2)


def test_cell_rates_count_pairs_inside_each_group_only(diversity: ModuleType) -> None:
    labels = ["a", "b", "c", "d", "e"]
    cells = ["women", "women", "men", "men", None]
    near, far = np.array([[0.0, 0.0], [0.3, 0.0]]), np.array([[0.0, 0.0], [3.0, 0.0]])
    # across the groups every face is at distance 0.1 of another group's: those pairs do not count
    rows = {
        "unprotected": np.vstack([far, far + 0.1, [[9.0, 9.0]]]),
        "crop": np.vstack([near, far, [[9.0, 9.0]]]),
        "reconstruction": np.vstack([near, near, [[9.0, 9.0]]]),
        "sample": np.vstack([far, [[np.nan, np.nan]], [0.0, 0.0], [[9.0, 9.0]]]),
    }
    rates = diversity.cell_rates(labels, cells, rows, 0.6)
    assert set(rates) == {"men", "women"}
    assert rates["women"] == {"unprotected": 1.0, "crop": 0.0, "reconstruction": 0.0, "sample": 1.0}
    assert rates["men"]["unprotected"] == 1.0 and rates["men"]["crop"] == 1.0
    assert rates["men"]["reconstruction"] == 0.0
    assert rates["men"]["sample"] is None  # its one pair has a face not found
