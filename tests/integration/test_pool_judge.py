"""benchmarks/pool_judge.py: the command over evaluation.pooling (whose rates tests/unit/test_eval_pooling.py
checks)."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from script_loader import load_script

from faceanonymixer.evaluation.pooling import save_embeddings

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"

LABELS = ["set/a", "set/a", "set/b", "set/b"]
ORIGINAL = np.array([[0.0, 0.0], [0.2, 0.0], [3.0, 0.0], [3.2, 0.0]])


@pytest.fixture(scope="module")
def pool() -> ModuleType:
    return load_script(BENCHMARKS / "pool_judge.py")


def write_run(path: Path, judge: str) -> Path:
    far = np.array([[10.0, 0.0], [10.2, 0.0], [20.0, 0.0], [20.2, 0.0]])
    settings = {"original": ORIGINAL, "A": far, "B": far + 100.0, "S": np.zeros((4, 2))}
    save_embeddings(path, LABELS, {judge: settings})
    return path


def test_the_command_reports_and_refuses_what_it_cannot_pool(
    pool: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    facenet = write_run(tmp_path / "facenet.npz", "facenet")
    dlib = write_run(tmp_path / "dlib.npz", "dlib")
    out = tmp_path / "pooled.json"
    assert pool.main([str(facenet), "--threshold", "facenet=1.5", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["judges"]["facenet"]["threshold"] == 1.5
    assert report["per_run"]["facenet"]["facenet"]["shared_key_impostor_nonmatch"]["rate"] == 0.0
    printed = capsys.readouterr().out
    assert "shared key impostor non-match" in printed and "facenet: run" in printed

    assert pool.main([str(facenet), str(dlib)]) == 2
    assert "no judge in common" in capsys.readouterr().err
    assert pool.main([str(facenet), "--threshold", "dlib=0.5"]) == 2
    assert "a threshold for a judge the runs do not share: dlib" in capsys.readouterr().err
    assert pool.main([str(tmp_path / "missing.npz")]) == 2
    assert "no such embeddings file" in capsys.readouterr().err
    for wrong in ("facenet=high", "=1.0", "facenet"):
        with pytest.raises(SystemExit):
            pool.main([str(facenet), "--threshold", wrong])
