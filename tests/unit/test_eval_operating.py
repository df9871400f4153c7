"""The judge protocol at one operating threshold (evaluation.operating), on hand-made embeddings."""

from __future__ import annotations

import numpy as np
import pytest

from faceanonymixer.evaluation.cells import group_rates
from faceanonymixer.evaluation.metrics import rate_entry
from faceanonymixer.evaluation.operating import (
    format_table,
    measure_entry,
    operating_measures,
    operating_report,
    operating_threshold,
    verification_rates,
)
from faceanonymixer.evaluation.pairs import faces_found

LABELS = ["s/a", "s/a", "s/b"]
ORIGINAL = np.array([[0.0, 0.0], [0.4, 0.0], [2.0, 0.0]])
#: under A person a's photos stay together (0.3) and near b (0.5, 0.2); B is far from A
PROTECTED_A = np.array([[5.0, 0.0], [5.3, 0.0], [5.5, 0.0]])
#: under S person a's photos fall apart (3.0) and b is far from both
SHARED = np.array([[0.0, 0.0], [3.0, 0.0], [6.0, 0.0]])
EMBEDDINGS = {"original": ORIGINAL, "A": PROTECTED_A, "B": PROTECTED_A + 10.0, "S": SHARED}


def rate(measures: dict, *path: str) -> float | None:
    entry = measure_entry(measures, path)
    assert entry is not None, path
    return entry["rate"]


def test_every_rate_at_one_threshold() -> None:
    measures = operating_measures(LABELS, EMBEDDINGS, 0.6)
    assert rate(measures, "unprotected", "genuine_match") == 1.0  # (a0, a1) at 0.4
    assert rate(measures, "unprotected", "impostor_nonmatch") == 1.0  # 2.0 and 1.6
    assert rate(measures, "anonymity", "combined") == 1.0
    assert measures["anonymity"]["source"]["pairs"] == 3 and measures["anonymity"]["others"]["pairs"] == 2
    assert rate(measures, "same_key_genuine_match") == 1.0
    assert rate(measures, "own_key_impostor_nonmatch") == 0.0  # 0.5 and 0.2 both match
    assert rate(measures, "shared_key_genuine_match") == 0.0
    assert rate(measures, "shared_key_impostor_nonmatch") == 1.0
    # A and B keep a's pair together, S does not: 2 of the 3 genuine pairs over the keys
    over_keys = measures["any_key_genuine_match"]
    assert over_keys["pairs"] == 3 and over_keys["rate"] == pytest.approx(2 / 3)
    cross = measures["cross_key_nonmatch"]
    assert [cross[part]["pairs"] for part in ("combined", "same_photo", "other_photos")] == [5, 3, 2]
    assert cross["combined"]["rate"] == 1.0
    assert measures["own_key_impostor_nonmatch"]["mean_distance"] == pytest.approx(0.35)


def test_a_face_not_found_is_counted_and_a_missing_setting_left_out() -> None:
    protected = PROTECTED_A.copy()
    protected[1] = np.nan
    measures = operating_measures(LABELS, {"original": ORIGINAL, "A": protected}, 0.6)
    assert set(measures) == {
        "unprotected",
        "anonymity",
        "same_key_genuine_match",
        "own_key_impostor_nonmatch",
    }
    genuine = measures["same_key_genuine_match"]
    assert genuine == {"rate": None, "kind": "match", "pairs": 0, "skipped": 1, "mean_distance": None}
    assert measures["own_key_impostor_nonmatch"]["skipped"] == 1
    assert faces_found(protected) == {"found": 2, "total": 3, "rate": 2 / 3}
    assert faces_found(np.zeros((0, 2)))["rate"] is None


def test_the_groups_rates_are_the_protocols() -> None:
    measures = operating_measures(LABELS, EMBEDDINGS, 0.6)
    rates = group_rates(LABELS, EMBEDDINGS, 0.6)
    assert rates["shared_key_impostor_nonmatch"] == rate(measures, "shared_key_impostor_nonmatch")
    assert rates["anonymity"] == rate(measures, "anonymity", "combined")
    assert rates["cross_key_nonmatch"] == rate(measures, "cross_key_nonmatch", "combined")
    assert rates["pairs"]["cross_key_nonmatch"] == 5 and rates["threshold"] == 0.6


def test_rate_entries_and_verification_rates() -> None:
    assert rate_entry(np.array([0.1, 0.9]), 0.5, kind="nonmatch", skipped=2) == {
        "rate": 0.5,
        "kind": "nonmatch",
        "pairs": 2,
        "skipped": 2,
        "mean_distance": 0.5,
    }
    assert rate_entry(np.array([0.1]), None, kind="match")["rate"] is None
    assert rate_entry(np.zeros(0), 0.5, kind="match")["mean_distance"] is None
    rates = verification_rates(["x", "x", "y"], ORIGINAL, 0.3)
    assert rates["genuine_match"]["rate"] == 0.0 and rates["impostor_nonmatch"]["pairs"] == 2


def test_the_operating_threshold_is_given_published_or_at_the_fmr() -> None:
    assert operating_threshold("facenet", LABELS, ORIGINAL, given=1.5).source == "given"
    dlib = operating_threshold("dlib", LABELS, ORIGINAL)
    assert (dlib.threshold, dlib.source, dlib.impostor_pairs) == (0.6, "judge", None)
    # FaceNet publishes none: at FMR 0 the smallest of the 2 impostor distances (1.6 and 2.0)
    facenet = operating_threshold("facenet", LABELS, ORIGINAL, fmr=0.0)
    assert facenet.threshold == pytest.approx(1.6)
    assert (facenet.source, facenet.impostor_pairs) == ("fmr 0, 2 impostor pairs", 2)
    alone = operating_threshold("facenet", ["s/a", "s/a"], ORIGINAL[:2])
    assert alone.threshold is None and alone.impostor_pairs == 0


def test_the_report_and_its_table() -> None:
    report = operating_report(LABELS, {"dlib": EMBEDDINGS})
    assert report["dlib"]["threshold"] == 0.6
    assert report["dlib"]["detection"]["S"] == {"found": 3, "total": 3, "rate": 1.0}
    table = format_table(report)
    assert "0.6000 (judge)" in table and "detection rate: A" in table
    row = next(line for line in table.splitlines() if line.startswith("own key impostor non-match"))
    assert row.split()[-3:] == ["0.000", "n=2", "d=0.350"]
    # a rate no judge has is not a row
    assert "shared key" not in format_table(operating_report(LABELS, {"dlib": {"original": ORIGINAL}}))
