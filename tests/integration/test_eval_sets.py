"""``faceanonymixer eval`` on several sets at once, one of them a one-photo set: the CI slice.

The slice: lfw with two men and two women (two photos each, from the names list) and utk_dev with
two photos per race x gender cell (20 one-photo folders), 2 optimisation steps, no naive-mix
baseline, judged by dlib and FaceNet. The report's new keys (realism, attributes, sets, cells,
worst cell, skipped measures) are checked, not the protection's quality at 2 steps (measured at
the full 50 in docs/evaluation.md). Runs once per module as a subprocess of the real CLI; about
50 s on a quiet 2-core machine, under 5 minutes on a loaded one.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from faceanonymixer.evaluation.labels import RACES
from faceanonymixer.evaluation.report import render_markdown
from faceanonymixer.models.attribute_classifiers import GENDERS

pytestmark = pytest.mark.slow

EVAL_TIMEOUT = 1200
PER_CELL, LFW_PHOTOS = 2, 2
UTK_CELLS = [f"utk_dev/{race}-{gender}" for race in RACES for gender in GENDERS]


@pytest.fixture(scope="module")
def evaluated(faces_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    sets = [faces_root / "lfw", faces_root / "utk_dev"]
    for folder in sets:
        if not folder.is_dir():
            pytest.skip(f"{folder} is absent")
    out = tmp_path_factory.mktemp("report") / "out"
    command = [sys.executable, "-m", "faceanonymixer.cli", "eval", *map(str, sets), "--out", str(out)]
    command += ["--per-cell", str(PER_CELL), "--max-images", str(LFW_PHOTOS), "--steps", "2"]
    command += ["--no-baselines", "--judges", "dlib,facenet", "--json"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=EVAL_TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert json.loads(done.stdout) == report
    print(f"\n{(out / 'report.md').read_text()}")
    return out, report


def test_each_set_and_the_pooled_figures_are_reported(evaluated: tuple[Path, dict[str, Any]]) -> None:
    _, report = evaluated
    assert report["schema"] == 2 and report["dataset"]["sets"] == ["lfw", "utk_dev"]
    lfw, utk = report["sets"]["lfw"], report["sets"]["utk_dev"]
    assert (
        lfw["dataset"]["identities"] == 2 * PER_CELL and lfw["dataset"]["photos"] == 2 * PER_CELL * LFW_PHOTOS
    )
    assert not lfw["dataset"]["one_photo_per_identity"]
    assert utk["dataset"]["one_photo_per_identity"] and utk["dataset"]["identities"] == 10 * PER_CELL
    assert report["dataset"]["identities"] == lfw["dataset"]["identities"] + utk["dataset"]["identities"]
    for entry in (report, lfw, utk):
        assert set(entry["operating"]) == {"dlib", "facenet"}
        assert entry["operating"]["dlib"]["threshold"] == 0.6
    # a one-photo set: no genuine pairs, said so, and the measures that need them are null
    assert utk["judges"]["dlib"]["protected_same_key"]["eer"] is None
    assert utk["operating"]["dlib"]["same_key_genuine_match"] is None
    assert any("no genuine pairs" in item["reason"] for item in utk["skipped_measures"])
    assert utk["judges"]["dlib"]["same_key_different_people"]["impostor_pairs"] == 190
    assert lfw["judges"]["dlib"]["protected_same_key"]["eer"] is not None


def test_realism_against_its_two_references(evaluated: tuple[Path, dict[str, Any]]) -> None:
    _, report = evaluated
    for quality in (report["quality"], report["sets"]["utk_dev"]["quality"]):
        realism = quality["realism"]
        assert set(realism["kid"]) >= {"protected", "protected_se", "reconstruction", "real"}
        assert realism["fid"] is None and "2,000" in realism["fid_note"]
        assert realism["samples"] > 0
        # real people against other real people sit far below any generated face
        assert realism["kid"]["real"] < realism["kid"]["reconstruction"]
        assert realism["kid"]["real"] < realism["kid"]["protected"]
    assert report["quality"]["fid"]["value"] is None  # the schema-1 key, read from realism


def test_attributes_beside_the_classifiers_ceiling(evaluated: tuple[Path, dict[str, Any]]) -> None:
    _, report = evaluated
    attributes = report["quality"]["attributes"]
    for key in (
        "gender_agreement",
        "age_group_agreement",
        "age_group_within_one",
        "ita_abs_diff_median",
        "pose_error_median_deg",
    ):
        assert attributes[key] is not None, key
    ceiling = report["sets"]["utk_dev"]["quality"]["attributes"]["classifier_accuracy"]
    assert 0.0 <= ceiling["gender"] <= 1.0 and ceiling["gender_photos"] >= 15
    assert report["sets"]["lfw"]["quality"]["attributes"]["classifier_accuracy"]["age_photos"] == 0


def test_cells_and_the_worst_cell(evaluated: tuple[Path, dict[str, Any]]) -> None:
    out, report = evaluated
    cells = report["cells"]
    assert set(cells) == {*UTK_CELLS, "lfw/male", "lfw/female"}
    for name in UTK_CELLS:
        cell = cells[name]
        assert cell["count"] == PER_CELL
        for judge in ("dlib", "facenet"):
            assert cell[judge]["pairs"]["shared_key_impostor_nonmatch"] == 1  # within the cell only
            assert {"shared_key_impostor_nonmatch", "unprotected_impostor_nonmatch"} <= set(cell[judge])
        assert set(cell["detection"]) == {"dlib", "facenet"} and "gender_agreement" in cell["attributes"]
    worst = report["worst_cell"]["dlib.shared_key_impostor_nonmatch"]
    assert worst["cell"] in cells and worst["value"] == min(
        cell["dlib"]["shared_key_impostor_nonmatch"] for cell in cells.values()
    )
    assert "unprotected" in worst and "attributes.pose_error_median_deg" in report["worst_cell"]
    for name in ("cells.png", "grid_cells.png"):
        assert name in report["plots"]
        with Image.open(out / name) as image:
            assert image.format == "PNG" and image.width > 300
    markdown = (out / "report.md").read_text()
    assert render_markdown(report) == markdown
    assert "## The worst group" in markdown and "## Per group" in markdown and "## Realism" in markdown
