"""benchmarks/pool_judge.py: several judge runs scored as one, at one threshold per judge."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from script_loader import load_script

from faceanonymixer.evaluation.judges import published_threshold

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def judge() -> ModuleType:
    return load_script(BENCHMARKS / "judge_protection.py")


@pytest.fixture(scope="module")
def pool(judge: ModuleType) -> ModuleType:
    return load_script(BENCHMARKS / "pool_judge.py")


LABELS = ["set/a", "set/a", "set/b", "set/b"]
ORIGINAL = np.array([[0.0, 0.0], [0.2, 0.0], [3.0, 0.0], [3.2, 0.0]])


def write_run(judge: ModuleType, path: Path, shared: np.ndarray, judge_name: str = "facenet") -> Path:
    """A run whose protected faces under A and B are far from everything; S is given."""
    far = np.array([[10.0, 0.0], [10.2, 0.0], [20.0, 0.0], [20.2, 0.0]])
    settings = {"original": ORIGINAL, "A": far, "B": far + 100.0, "S": shared}
    judge.save_embeddings(path, LABELS, {judge_name: settings})
    return path


def test_rates_add_up_pairs_over_runs_at_one_threshold(
    judge: ModuleType, pool: ModuleType, tmp_path: Path
) -> None:
    # run 1: under S the two people land together (all 4 impostor pairs match);
    # run 2: they stay apart (none match)
    together = np.array([[50.0, 0.0], [50.1, 0.0], [50.2, 0.0], [50.3, 0.0]])
    apart = np.array([[50.0, 0.0], [50.1, 0.0], [60.0, 0.0], [60.1, 0.0]])
    runs = pool.load_runs(
        [write_run(judge, tmp_path / "one.npz", together), write_run(judge, tmp_path / "two.npz", apart)]
    )
    pooled, by_run = pool.pool_runs(runs, {"facenet": 1.0}, 0.01)
    assert by_run["facenet"]["one"]["shared_key_impostor_nonmatch"]["rate"] == 0.0
    assert by_run["facenet"]["two"]["shared_key_impostor_nonmatch"]["rate"] == 1.0
    shared = pooled["facenet"]["measures"]["shared_key_impostor_nonmatch"]
    assert shared["pairs"] == 8 and shared["rate"] == 0.5
    assert pooled["facenet"]["threshold"] == 1.0 and pooled["facenet"]["threshold_source"] == "given"
    assert pooled["facenet"]["measures"]["cross_key_nonmatch"]["combined"]["pairs"] == 16
    assert pooled["facenet"]["detection"]["S"] == {"found": 8, "total": 8, "rate": 1.0}
    # two runs with one file name keep apart
    (tmp_path / "other").mkdir()
    again = write_run(judge, tmp_path / "other" / "one.npz", apart)
    names = [run[0] for run in pool.load_runs([tmp_path / "one.npz", again])]
    assert names == ["one", str(again)]


def test_the_genuine_match_over_keys_counts_the_pairs_of_every_key(
    judge: ModuleType, pool: ModuleType, tmp_path: Path
) -> None:
    # A and B keep each person's two photos together; S splits person a's
    split = np.array([[50.0, 0.0], [55.0, 0.0], [60.0, 0.0], [60.1, 0.0]])
    runs = pool.load_runs([write_run(judge, tmp_path / "one.npz", split)])
    pooled, by_run = pool.pool_runs(runs, {"facenet": 1.0}, 0.01)
    measures = pooled["facenet"]["measures"]
    assert measures["same_key_genuine_match"]["rate"] == 1.0
    assert measures["shared_key_genuine_match"]["rate"] == 0.5
    over_keys = measures["any_key_genuine_match"]
    assert over_keys["pairs"] == 6 and over_keys["rate"] == pytest.approx(5 / 6)
    assert "genuine A+B+S" in pool.format_runs(by_run)


def test_the_fmr_threshold_counts_each_photo_once(
    judge: ModuleType, pool: ModuleType, tmp_path: Path
) -> None:
    shared = np.full((4, 2), np.nan)  # no face found under S
    paths = [write_run(judge, tmp_path / f"{seed}.npz", shared) for seed in range(3)]
    labels, original = pool.distinct_originals(pool.load_runs(paths), "facenet")
    assert labels == LABELS
    np.testing.assert_array_equal(original, ORIGINAL)
    pooled, _ = pool.pool_runs(pool.load_runs(paths), {}, 0.0)
    # the 4 impostor pairs of the 4 distinct photos, not the pairs of 12 copies; fmr 0: the smallest
    assert pooled["facenet"]["threshold"] == pytest.approx(2.8)
    assert pooled["facenet"]["threshold_source"] == "fmr 0, 4 impostor pairs"
    assert pooled["facenet"]["detection"]["S"]["found"] == 0


def test_a_judge_with_its_own_threshold_keeps_it(judge: ModuleType, pool: ModuleType, tmp_path: Path) -> None:
    path = write_run(judge, tmp_path / "dlib.npz", np.zeros((4, 2)), judge_name="dlib")
    pooled, _ = pool.pool_runs(pool.load_runs([path]), {}, 0.01)
    assert published_threshold("dlib") == 0.6 and published_threshold("facenet") is None
    assert pooled["dlib"]["threshold"] == 0.6 and pooled["dlib"]["threshold_source"] == "judge"
    with pytest.raises(ValueError, match="unknown judge"):
        published_threshold("arcface")


def test_the_command_reports_and_refuses_what_it_cannot_pool(
    judge: ModuleType, pool: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    facenet = write_run(judge, tmp_path / "facenet.npz", np.zeros((4, 2)))
    dlib = write_run(judge, tmp_path / "dlib.npz", np.zeros((4, 2)), judge_name="dlib")
    out = tmp_path / "pooled.json"
    assert pool.main([str(facenet), "--threshold", "facenet=1.5", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["judges"]["facenet"]["threshold"] == 1.5
    assert "shared key impostor non-match" in capsys.readouterr().out

    assert pool.main([str(facenet), str(dlib)]) == 2
    assert "no judge in common" in capsys.readouterr().err
    assert pool.main([str(facenet), "--threshold", "dlib=0.5"]) == 2
    assert "a threshold for a judge the runs do not share: dlib" in capsys.readouterr().err
    assert pool.main([str(tmp_path / "missing.npz")]) == 2
    assert "no such embeddings file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        pool.main([str(facenet), "--threshold", "facenet=high"])
