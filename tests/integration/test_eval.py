"""``faceanonymixer eval``: the measures on made-up embeddings, then the real command on a slice.

The slice: 5 ORL people x 3 photos (grey photos, the hardest colour case for the engine) plus one
identity whose only "photo" holds no face, protected with 3 optimisation steps (the report's
schema and the unprotected sanity do not depend on the steps; the protection's quality at the
full 50 steps is measured in docs/evaluation.md), judged by dlib and FaceNet. Runs once
per module as a subprocess of the real CLI.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from faceanonymixer.evaluation.measures import judge_measures, learned_attack, unlinkability_bins
from faceanonymixer.evaluation.metrics import fmr_thresholds
from faceanonymixer.evaluation.pairs import pair_distances_between, unordered_pairs
from faceanonymixer.evaluation.report import render_markdown

EVAL_TIMEOUT = 900
PEOPLE, PHOTOS = 5, 3

# ---- the measures, on embeddings made up for the purpose -------------------------------------------


def people(count: int, photos: int, *, spread: float, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """``count`` identities in 16-d, far apart (distance ~ 4), each photo ``spread`` from its centre."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(count, 16)) * 3
    labels = [f"p{i}" for i in range(count) for _ in range(photos)]
    rows = np.repeat(centres, photos, axis=0) + rng.normal(size=(count * photos, 16)) * spread
    return labels, rows


def test_measures_of_a_protection_that_changes_nothing() -> None:
    labels, original = people(6, 3, spread=0.1)
    same = {"original": original, "A": original, "B": original, "S": original}
    report = judge_measures(labels, same, seed=0).report
    assert report["unprotected"]["eer"] == 0.0 and report["unprotected"]["auc"] == 1.0
    assert report["anonymity"]["psr"] == {"1e-2": 0.0, "1e-3": 0.0}  # every pair still matches
    assert report["irreversibility"]["direct"] == {"1e-2": 1.0, "1e-3": 1.0}
    assert report["cross_key"]["match_rate"]["1e-2"] == 1.0  # B links to A perfectly
    assert report["unlinkability"]["d_sys"] > 0.9
    # everyone under one key that changes nothing: impostors match as often as unprotected ones
    achieved = report["unprotected"]["threshold_details"]["1e-2"]["achieved_fmr"]
    assert report["same_key_different_people"]["match_rate"]["1e-2"] == achieved <= 0.01


def test_measures_of_an_ideal_protection() -> None:
    labels, original = people(30, 3, spread=0.1)
    # each key gives each person a new random identity; photos of one person stay together
    _, a = people(30, 3, spread=0.1, seed=1)
    _, b = people(30, 3, spread=0.1, seed=2)
    _, s = people(30, 3, spread=0.1, seed=3)
    report = judge_measures(labels, {"original": original, "A": a, "B": b, "S": s}, seed=0).report
    assert report["protected_same_key"]["tar"] == {"1e-2": 1.0, "1e-3": 1.0}
    assert report["anonymity"]["psr"]["1e-2"] >= 0.95
    # A-B pairs of one person are as far apart as two people: matching only at about the FMR
    assert report["cross_key"]["match_rate"]["1e-2"] <= 0.1
    assert report["cross_key"]["auc"] == pytest.approx(0.5, abs=0.15)
    assert report["unlinkability"]["d_sys"] < 0.5
    assert report["same_key_different_people"]["match_rate"]["1e-2"] <= 0.05


def test_missing_faces_leave_their_pairs_out_and_are_counted() -> None:
    labels, original = people(4, 2, spread=0.1)
    protected = original + 10.0
    protected[0] = np.nan  # the judge found no face in photo 0's protected image
    report = judge_measures(
        labels, {"original": original, "A": protected, "B": protected, "S": protected}, seed=0
    )
    assert report.report["detection"]["A"] == {"found": 7, "total": 8, "rate": 7 / 8}
    assert report.scores["same key genuine"].skipped == 1  # photo 0 with photo 1 (same person)
    assert report.report["protected_same_key"]["genuine_pairs"] == 3


def test_learned_attack_recovers_a_linear_disguise_and_not_noise() -> None:
    labels, original = people(20, 3, spread=0.1)
    impostor, _ = pair_distances_between(original, original, *unordered_pairs(labels, same=False))
    thresholds = fmr_thresholds(impostor)
    rotation = np.linalg.qr(np.random.default_rng(5).normal(size=(16, 16)))[0]
    disguised = learned_attack(labels, original @ rotation + 1.0, original, thresholds, seed=0)
    assert disguised["1e-2"] == 1.0 and disguised["impostor_match_rate"]["1e-2"] < 0.05
    noise = np.random.default_rng(6).normal(size=original.shape) * 3
    hopeless = learned_attack(labels, noise, original, thresholds, seed=0)
    assert hopeless["1e-2"] is not None and hopeless["1e-2"] < 0.3
    assert disguised["train_photos"] + disguised["test_photos"] == 60


def test_unlinkability_bins_follow_the_sample() -> None:
    assert unlinkability_bins(4, 1000) == 5
    assert unlinkability_bins(900, 5000) == 30
    assert unlinkability_bins(10**6, 10**6) == 100


# ---- the command on a slice of ORL ----------------------------------------------------------------


@pytest.fixture(scope="module")
def dataset(faces_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Links to 5 ORL people x 3 photos, and an identity whose photo holds no face."""
    root = tmp_path_factory.mktemp("dataset")
    orl = faces_root / "orl"
    if not orl.is_dir():
        pytest.skip(f"{orl} is absent")
    for person in sorted(p for p in orl.iterdir() if p.is_dir())[:PEOPLE]:
        (root / person.name).mkdir()
        for photo in sorted(person.iterdir())[:PHOTOS]:
            (root / person.name / photo.name).symlink_to(photo)
    (root / "zz-nobody").mkdir()
    Image.new("L", (92, 112), 128).save(root / "zz-nobody" / "blank.png")
    return root


@pytest.fixture(scope="module")
def evaluated(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], str]:
    out = tmp_path_factory.mktemp("report") / "out"
    command = [sys.executable, "-m", "faceanonymixer.cli", "eval", str(dataset), "--out", str(out)]
    command += ["--steps", "3", "--judges", "dlib,facenet", "--seed", "7", "--threads", "1"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=EVAL_TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    print(f"\n{(out / 'report.md').read_text()}")
    return out, report, done.stdout


RATE_WORDS = ("rate", "psr", "tar", "eer", "auc", "d_sys")


def rates_in_range(node: Any) -> list[str]:
    """Paths of rate-like numbers outside [0, 1] anywhere under ``node``."""
    bad: list[str] = []

    def walk(value: Any, path: str) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(item, f"{path}.{key}")
        elif (
            isinstance(value, float)
            and any(word in path for word in ("rate", "psr", "tar", "eer", "auc", "d_sys"))
            and not 0.0 <= value <= 1.0
        ):
            bad.append(f"{path}={value}")

    walk(node, "")
    return bad


@pytest.mark.slow  # a real `faceanonymixer eval` process: its start-up alone takes seconds
def test_report_has_the_documented_schema(evaluated: tuple[Path, dict[str, Any], str]) -> None:
    _, report, _ = evaluated
    assert {"dataset", "profile", "judges", "quality", "cost", "baselines"} <= set(report)
    for name in ("dlib", "facenet"):
        judge = report["judges"][name]
        assert set(judge["unprotected"]) >= {"eer", "auc", "thresholds"}
        assert set(judge["unprotected"]["thresholds"]) == {"1e-2", "1e-3"}
        assert set(judge["protected_same_key"]) >= {"eer", "auc", "tar"}
        assert set(judge["protected_same_key"]["tar"]) == {"1e-2", "1e-3"}
        assert set(judge["anonymity"]["psr"]) == {"1e-2", "1e-3"}
        assert set(judge["cross_key"]) >= {"eer", "auc"}
        assert isinstance(judge["unlinkability"]["d_sys"], float)
        assert set(judge["same_key_different_people"]["match_rate"]) == {"1e-2", "1e-3"}
        assert "1e-3" in judge["irreversibility"]["direct"] and "1e-3" in judge["irreversibility"]["learned"]
        assert set(report["baselines"]["naive_mix"][name]) >= {"anonymity", "cross_key", "protected_same_key"}
    assert report["cost"]["seconds_per_image"]["p50"] > 0
    assert report["settings"]["torch_threads_per_job"] == 1  # --threads 1
    assert rates_in_range(report) == []


@pytest.mark.slow  # a real `faceanonymixer eval` process: its start-up alone takes seconds
def test_report_is_sane_on_orl(evaluated: tuple[Path, dict[str, Any], str]) -> None:
    out, report, stdout = evaluated
    assert report["dataset"]["identities"] == PEOPLE and report["dataset"]["photos"] == PEOPLE * PHOTOS
    assert report["dataset"]["skipped"] == 1 and "blank.png" in report["dataset"]["skipped_photos"][0]["path"]
    dlib = report["judges"]["dlib"]
    assert dlib["unprotected"]["eer"] < 0.02  # ORL is easy for dlib unprotected
    threshold = dlib["unprotected"]["threshold_details"]["1e-2"]
    assert threshold["impostor_pairs"] == (PEOPLE * PHOTOS) * (PEOPLE * PHOTOS - PHOTOS) // 2
    # even 3 steps move the face away from the original for dlib at FMR 1e-2
    assert dlib["anonymity"]["psr"]["1e-2"] >= 0.5
    for name in report["plots"]:
        with Image.open(out / name) as plot:
            assert plot.format == "PNG" and plot.width > 100
    assert {"det_dlib.png", "scores_facenet.png", "unlinkability_dlib.png", "examples.png"} <= set(
        report["plots"]
    )
    assert stdout.startswith("# FaceAnonyMixer evaluation") and "| anonymity PSR" in stdout
    assert render_markdown(report) == (out / "report.md").read_text()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


def eval_command(*arguments: str | Path) -> Any:
    """``faceanonymixer eval`` in this process: argument errors come before any model loads."""
    from typer.testing import CliRunner

    from faceanonymixer.cli.main import app

    return CliRunner().invoke(app, ["eval", *map(str, arguments)])


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--judges", "dlib,nobody"], "unknown judge"),
        (["--max-identities", "1"], "--max-identities"),
    ],
)
def test_bad_arguments_are_one_line_errors(
    dataset: Path, tmp_path: Path, arguments: list[str], message: str
) -> None:
    command = [dataset, "--out", tmp_path / "o", *arguments]
    done = eval_command(*command)
    assert done.exit_code == 2 and message in done.stderr
    assert not (tmp_path / "o" / "report.json").exists()
    if arguments[0] == "--max-identities":
        return  # a usage error found by the option parser: on stderr, --json or not
    as_json = eval_command(*command, "--json")
    assert as_json.exit_code == 2 and as_json.stderr == ""
    assert message in json.loads(as_json.stdout)["error"]["message"]


def test_missing_dataset_and_non_empty_out_are_refused(tmp_path: Path) -> None:
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "keep.txt").write_text("mine")
    for dataset, out in ((tmp_path / "absent", tmp_path / "o"), (tmp_path, tmp_path / "used")):
        done = eval_command(dataset, "--out", out)
        lines = done.stderr.strip().splitlines()
        assert done.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error:"), done.stderr
    assert (tmp_path / "used" / "keep.txt").read_text() == "mine"
