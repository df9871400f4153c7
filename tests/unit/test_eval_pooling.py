"""Several runs' saved judge embeddings scored as one, at one threshold per judge (evaluation.pooling)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from faceanonymixer.evaluation.operating import operating_measures
from faceanonymixer.evaluation.pooling import (
    PoolError,
    distinct_originals,
    format_runs,
    load_embeddings,
    load_runs,
    pool_runs,
    save_embeddings,
)

LABELS = ["set/a", "set/a", "set/b", "set/b"]
ORIGINAL = np.array([[0.0, 0.0], [0.2, 0.0], [3.0, 0.0], [3.2, 0.0]])


def write_run(path: Path, shared: np.ndarray, judge: str = "facenet") -> Path:
    """A run whose protected faces under A and B are far from everything; S is given."""
    far = np.array([[10.0, 0.0], [10.2, 0.0], [20.0, 0.0], [20.2, 0.0]])
    save_embeddings(path, LABELS, {judge: {"original": ORIGINAL, "A": far, "B": far + 100.0, "S": shared}})
    return path


def test_saved_embeddings_come_back_to_be_rescored(tmp_path: Path) -> None:
    labels = ["set/a", "set/a", "set/b"]
    original = np.array([[0.0, 0.0], [0.4, 0.0], [2.0, 0.0]])
    protected = np.array([[5.0, 0.0], [np.nan, np.nan], [5.5, 0.0]])
    path = tmp_path / "deeper" / "embeddings.npz"
    save_embeddings(path, labels, {"facenet": {"original": original, "A": protected}})
    loaded_labels, loaded = load_embeddings(path)
    assert loaded_labels == labels
    np.testing.assert_array_equal(loaded["facenet"]["A"], protected)  # NaN rows (no face) kept
    # the one pair of protected photos of different people, (a0 under A, b under A), at 0.5
    assert operating_measures(labels, loaded["facenet"], 0.6)["own_key_impostor_nonmatch"]["rate"] == 0.0
    assert operating_measures(labels, loaded["facenet"], 0.4)["own_key_impostor_nonmatch"]["rate"] == 1.0


def test_rates_add_up_pairs_over_runs_at_one_threshold(tmp_path: Path) -> None:
    # run 1: under S the two people land together (all 4 impostor pairs match);
    # run 2: they stay apart (none match)
    together = np.array([[50.0, 0.0], [50.1, 0.0], [50.2, 0.0], [50.3, 0.0]])
    apart = np.array([[50.0, 0.0], [50.1, 0.0], [60.0, 0.0], [60.1, 0.0]])
    runs = load_runs([write_run(tmp_path / "one.npz", together), write_run(tmp_path / "two.npz", apart)])
    pooled, by_run = pool_runs(runs, {"facenet": 1.0}, 0.01)
    assert by_run["facenet"]["one"]["shared_key_impostor_nonmatch"]["rate"] == 0.0
    assert by_run["facenet"]["two"]["shared_key_impostor_nonmatch"]["rate"] == 1.0
    shared = pooled["facenet"]["measures"]["shared_key_impostor_nonmatch"]
    assert shared["pairs"] == 8 and shared["rate"] == 0.5
    assert shared["mean_distance"] == pytest.approx((4 * 0.2 + 4 * 10.0) / 8)  # pair-weighted
    assert pooled["facenet"]["threshold"] == 1.0 and pooled["facenet"]["threshold_source"] == "given"
    assert pooled["facenet"]["measures"]["cross_key_nonmatch"]["combined"]["pairs"] == 16
    assert pooled["facenet"]["detection"]["S"] == {"found": 8, "total": 8, "rate": 1.0}
    # two runs with one file name keep apart
    (tmp_path / "other").mkdir()
    again = write_run(tmp_path / "other" / "one.npz", apart)
    assert [run.name for run in load_runs([tmp_path / "one.npz", again])] == ["one", str(again)]


def test_the_genuine_match_over_keys_counts_the_pairs_of_every_key(tmp_path: Path) -> None:
    # A and B keep each person's two photos together; S splits person a's
    split = np.array([[50.0, 0.0], [55.0, 0.0], [60.0, 0.0], [60.1, 0.0]])
    pooled, by_run = pool_runs(load_runs([write_run(tmp_path / "one.npz", split)]), {"facenet": 1.0})
    measures = pooled["facenet"]["measures"]
    assert measures["same_key_genuine_match"]["rate"] == 1.0
    assert measures["shared_key_genuine_match"]["rate"] == 0.5
    over_keys = measures["any_key_genuine_match"]
    assert over_keys["pairs"] == 6 and over_keys["rate"] == pytest.approx(5 / 6)
    assert "genuine A+B+S" in format_runs(by_run)


def test_the_fmr_threshold_counts_each_photo_once(tmp_path: Path) -> None:
    shared = np.full((4, 2), np.nan)  # no face found under S
    paths = [write_run(tmp_path / f"{seed}.npz", shared) for seed in range(3)]
    labels, original = distinct_originals(load_runs(paths), "facenet")
    assert labels == LABELS
    np.testing.assert_array_equal(original, ORIGINAL)
    pooled, _ = pool_runs(load_runs(paths), {}, 0.0)
    # the 4 impostor pairs of the 4 distinct photos, not the pairs of 12 copies; fmr 0: the smallest
    assert pooled["facenet"]["threshold"] == pytest.approx(2.8)
    assert pooled["facenet"]["threshold_source"] == "fmr 0, 4 impostor pairs"
    assert pooled["facenet"]["detection"]["S"]["found"] == 0


def test_a_judge_with_its_own_threshold_keeps_it_and_what_cannot_be_pooled_is_refused(
    tmp_path: Path,
) -> None:
    dlib = write_run(tmp_path / "dlib.npz", np.zeros((4, 2)), judge="dlib")
    pooled, _ = pool_runs(load_runs([dlib]), {})
    assert pooled["dlib"]["threshold"] == 0.6 and pooled["dlib"]["threshold_source"] == "judge"
    facenet = write_run(tmp_path / "facenet.npz", np.zeros((4, 2)))
    with pytest.raises(PoolError, match="no judge in common"):
        pool_runs(load_runs([facenet, dlib]), {})
    with pytest.raises(PoolError, match="a threshold for a judge the runs do not share: dlib"):
        pool_runs(load_runs([facenet]), {"dlib": 0.5})
    with pytest.raises(PoolError, match="no such embeddings file"):
        load_runs([tmp_path / "missing.npz"])
