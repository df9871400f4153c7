"""Verification and unlinkability metrics against hand-computed cases."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from faceanonymixer.evaluation.metrics import (
    ThresholdInfo,
    auc,
    det_curve_points,
    eer,
    fmr_key,
    fmr_thresholds,
    match_rate,
    score_summary,
    unlinkability,
)

# ---------------------------------------------------------------------------------------------- AUC


def test_auc_counts_genuine_below_impostor_pairs() -> None:
    # pairs (g, i): (0.1, 0.3) yes, (0.1, 0.9) yes, (0.4, 0.3) no, (0.4, 0.9) yes -> 3 / 4
    assert auc(np.array([0.1, 0.4]), np.array([0.3, 0.9])) == pytest.approx(0.75)


def test_auc_counts_ties_as_half() -> None:
    assert auc(np.array([0.5]), np.array([0.5])) == pytest.approx(0.5)
    # (0.2, 0.5) 1, (0.2, 0.7) 1, (0.5, 0.5) 1/2, (0.5, 0.7) 1 -> 3.5 / 4
    assert auc(np.array([0.2, 0.5]), np.array([0.5, 0.7])) == pytest.approx(0.875)


def test_auc_extremes() -> None:
    assert auc(np.array([0.1, 0.2]), np.array([0.8, 0.9])) == 1.0
    assert auc(np.array([0.8, 0.9]), np.array([0.1, 0.2])) == 0.0


# ---------------------------------------------------------------------------------------------- EER


def test_eer_is_zero_for_separated_sets() -> None:
    assert eer(np.array([0.1, 0.2, 0.3]), np.array([0.7, 0.8])) == 0.0


def test_eer_is_about_half_for_identical_sets() -> None:
    same = np.linspace(0.0, 1.0, 201)
    assert eer(same, same) == pytest.approx(0.5, abs=0.01)


def test_eer_hand_computed() -> None:
    # genuine 0.1 0.2 0.3 0.6, impostor 0.5 0.7 0.8 0.9: for t in (0.5, 0.6] the genuine 0.6 is
    # rejected (FNMR 1/4) and the impostor 0.5 accepted (FMR 1/4), so FMR = FNMR = 1/4
    genuine = np.array([0.1, 0.2, 0.3, 0.6])
    impostor = np.array([0.5, 0.7, 0.8, 0.9])
    assert eer(genuine, impostor) == pytest.approx(0.25)
    # g < i in 3 * 4 + 3 = 15 of 16 pairs
    assert auc(genuine, impostor) == pytest.approx(15 / 16)


# ---------------------------------------------------------------------------------------- match rate


def test_match_rate_is_strict() -> None:
    distances = np.array([0.1, 0.5, 0.9])
    assert match_rate(distances, 0.5) == pytest.approx(1 / 3)
    assert match_rate(distances, 0.1) == 0.0
    assert match_rate(distances, math.inf) == 1.0
    assert match_rate(distances, -math.inf) == 0.0


def test_match_rate_of_nothing_is_none() -> None:
    assert match_rate(np.array([]), 0.5) is None
    assert match_rate(np.array([]), math.inf) is None


def test_match_rate_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="nan"):
        match_rate(np.array([0.1]), math.nan)
    with pytest.raises(ValueError, match="non-finite"):
        match_rate(np.array([0.1, math.inf]), 0.5)
    with pytest.raises(ValueError, match="1-D"):
        match_rate(np.zeros((2, 2)), 0.5)


# ------------------------------------------------------------------------------------ FMR thresholds


def test_fmr_key() -> None:
    assert fmr_key(0.01) == "1e-2"
    assert fmr_key(0.001) == "1e-3"
    assert fmr_key(1e-4) == "1e-4"
    assert fmr_key(0.05) == "5e-2"
    assert fmr_key(0.025) == "2.5e-2"


def test_fmr_thresholds_on_distinct_distances() -> None:
    impostor = np.arange(1000) / 1000.0  # 0.000, 0.001, ..., 0.999
    result = fmr_thresholds(impostor)
    assert list(result) == ["1e-2", "1e-3"]
    # 10 false matches allowed at 1e-2: the threshold is the 11th smallest distance, 0.010
    assert result["1e-2"] == ThresholdInfo(
        fmr=0.01, threshold=0.01, impostor_pairs=1000, achieved_fmr=0.01, supported=True
    )
    assert result["1e-3"].threshold == pytest.approx(0.001)
    assert result["1e-3"].achieved_fmr == pytest.approx(0.001)
    assert result["1e-3"].supported


def test_fmr_thresholds_on_ties_achieve_less() -> None:
    # one false match is allowed at 1e-3, but the two smallest distances tie at 0.0: a threshold
    # that lets the first match lets the second match too, so the threshold is 0.0 and FMR 0
    impostor = np.concatenate([[0.0, 0.0], np.linspace(0.5, 1.0, 998)])
    info = fmr_thresholds(impostor, fmrs=(1e-3,))["1e-3"]
    assert info.threshold == 0.0
    assert info.achieved_fmr == 0.0
    assert info.supported


def test_fmr_thresholds_unsupported_below_one_false_match() -> None:
    impostor = np.linspace(0.2, 1.0, 100)
    result = fmr_thresholds(impostor)
    # 100 * 1e-2 = 1 false match: supported, threshold = 2nd smallest distance
    assert result["1e-2"].supported
    assert result["1e-2"].threshold == pytest.approx(impostor[1])
    assert result["1e-2"].achieved_fmr == pytest.approx(0.01)
    # 100 * 1e-3 = 0.1: none allowed, so the threshold is just the smallest distance
    assert not result["1e-3"].supported
    assert result["1e-3"].threshold == pytest.approx(0.2)
    assert result["1e-3"].achieved_fmr == 0.0


def test_fmr_thresholds_as_dict_is_json() -> None:
    result = fmr_thresholds(np.linspace(0.0, 1.0, 101), fmrs=(0.1,))
    loaded = json.loads(json.dumps({key: info.as_dict() for key, info in result.items()}))
    assert loaded == {
        "1e-1": {
            "fmr": 0.1,
            "threshold": pytest.approx(0.1),
            "impostor_pairs": 101,
            "achieved_fmr": pytest.approx(10 / 101),
            "supported": True,
        }
    }


@pytest.mark.parametrize("fmrs", [(0.0,), (1.0,), (-0.1,), (0.01, 0.01)])
def test_fmr_thresholds_rejects_bad_targets(fmrs: tuple[float, ...]) -> None:
    with pytest.raises(ValueError):
        fmr_thresholds(np.linspace(0.0, 1.0, 10), fmrs=fmrs)


def test_fmr_thresholds_rejects_empty_or_non_finite() -> None:
    with pytest.raises(ValueError, match="empty"):
        fmr_thresholds(np.array([]))
    with pytest.raises(ValueError, match="non-finite"):
        fmr_thresholds(np.array([0.1, math.nan]))


# ------------------------------------------------------------------------------------ unlinkability


def test_unlinkability_is_zero_for_identical_scores() -> None:
    scores = np.random.default_rng(0).normal(size=500)
    result = unlinkability(scores, scores.copy())
    assert result.d_sys == 0.0
    assert np.all(result.local == 0.0)


def test_unlinkability_is_one_for_disjoint_scores() -> None:
    result = unlinkability(np.array([0.1, 0.2, 0.25]), np.array([0.8, 0.9]))
    assert result.d_sys == 1.0
    assert result.mated_density.sum() == pytest.approx(1.0)
    assert result.non_mated_density.sum() == pytest.approx(1.0)


def test_unlinkability_hand_computed_two_bins() -> None:
    # scores span [0, 1], so 2 bins have edges 0, 0.5, 1
    mated = np.array([0.0, 0.6, 0.9, 1.0])  # counts [1, 3] -> p_m = [1/4, 3/4]
    non_mated = np.array([0.0, 0.2, 0.4, 1.0])  # counts [3, 1] -> p_nm = [3/4, 1/4]
    # LR = [1/3, 3]; omega = 1: D = [0 (LR <= 1), 2 * 3/4 - 1 = 1/2]; D_sys = 3/4 * 1/2 = 3/8
    result = unlinkability(mated, non_mated, bins=2)
    assert result.bin_edges.tolist() == [0.0, 0.5, 1.0]
    assert result.mated_density.tolist() == [0.25, 0.75]
    assert result.non_mated_density.tolist() == [0.75, 0.25]
    assert result.local.tolist() == pytest.approx([0.0, 0.5])
    assert result.d_sys == pytest.approx(3 / 8)
    # omega = 2: omega * LR = [2/3, 6]; D = [0, 2 * 6/7 - 1 = 5/7]; D_sys = 3/4 * 5/7 = 15/28
    assert unlinkability(mated, non_mated, bins=2, omega=2.0).d_sys == pytest.approx(15 / 28)
    # omega = 1/3: omega * LR = [1/9, 1], never above 1, so nothing is linkable
    assert unlinkability(mated, non_mated, bins=2, omega=1 / 3).d_sys == pytest.approx(0.0)
    assert result.as_dict() == {"d_sys": pytest.approx(0.375), "bins": 2, "omega": 1.0}


def test_unlinkability_bin_without_non_mated_scores_counts_fully() -> None:
    # edges 0, 0.5, 1; p_m = [1/2, 1/2], p_nm = [1, 0]: bin 0 has LR 1/2 -> D 0, bin 1 has no
    # non-mated scores -> D 1; D_sys = 1/2 * 0 + 1/2 * 1
    result = unlinkability(np.array([0.0, 1.0]), np.array([0.0, 0.1]), bins=2)
    assert result.local.tolist() == [0.0, 1.0]
    assert result.d_sys == 0.5


def test_unlinkability_of_a_single_value_uses_a_unit_range() -> None:
    result = unlinkability(np.array([0.3]), np.array([0.3]), bins=1)
    assert result.bin_edges.tolist() == pytest.approx([-0.2, 0.8])
    assert result.d_sys == 0.0


@pytest.mark.parametrize(
    ("mated", "non_mated", "kwargs"),
    [
        ([], [0.1], {}),
        ([0.1], [], {}),
        ([0.1, math.inf], [0.2], {}),
        ([0.1], [math.nan], {}),
        ([0.1], [0.2], {"bins": 0}),
        ([0.1], [0.2], {"omega": 0.0}),
        ([0.1], [0.2], {"omega": math.inf}),
    ],
)
def test_unlinkability_rejects_bad_input(
    mated: list[float], non_mated: list[float], kwargs: dict[str, float]
) -> None:
    with pytest.raises(ValueError):
        unlinkability(np.array(mated), np.array(non_mated), **kwargs)


_score_lists = st.lists(
    st.floats(min_value=-100.0, max_value=100.0, allow_nan=False, allow_subnormal=False),
    min_size=1,
    max_size=40,
)


# reproducible and without an example database in the repository, like the service fuzzers
@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.filter_too_much],
)
@given(mated=_score_lists, non_mated=_score_lists, bins=st.integers(1, 30))
def test_unlinkability_properties(mated: list[float], non_mated: list[float], bins: int) -> None:
    m, nm = np.array(mated), np.array(non_mated)
    edges = np.histogram_bin_edges(np.concatenate([m, nm]), bins=bins)
    assume(np.all(np.diff(edges) > 0))
    # a score exactly on an inner edge may change bins when the scale is mirrored
    inner = edges[1:-1]
    scale = float(edges[-1] - edges[0])
    assume(all(np.min(np.abs(inner - s), initial=math.inf) > 1e-9 * scale for s in [*mated, *non_mated]))

    result = unlinkability(m, nm, bins=bins)
    assert 0.0 <= result.d_sys <= 1.0
    assert np.all((result.local >= 0.0) & (result.local <= 1.0))
    assert unlinkability(m, m, bins=bins).d_sys == 0.0
    # distance vs similarity: negating every score mirrors the bins but changes nothing else
    mirrored = unlinkability(-m, -nm, bins=bins)
    assert mirrored.d_sys == pytest.approx(result.d_sys, abs=1e-12)
    assert mirrored.local[::-1] == pytest.approx(result.local, abs=1e-12)


# ---------------------------------------------------------------------------------------- DET curve


def test_det_curve_points_hand_computed() -> None:
    # strict thresholds: t in (0.1, 0.3] -> FMR 0, FNMR 1/2; t in (0.3, 0.4] -> 1/2, 1/2;
    # t in (0.4, 0.9] -> 1/2, 0 (scikit-learn leaves out the trivial end points)
    fmr, fnmr = det_curve_points(np.array([0.1, 0.4]), np.array([0.3, 0.9]))
    points = set(zip(fmr.tolist(), fnmr.tolist(), strict=True))
    assert points == {(0.0, 0.5), (0.5, 0.5), (0.5, 0.0)}


def test_det_curve_points_are_operating_points() -> None:
    rng = np.random.default_rng(1)
    genuine, impostor = rng.normal(0.4, 0.1, 60), rng.normal(0.8, 0.1, 80)
    fmr, fnmr = det_curve_points(genuine, impostor)
    assert len(fmr) == len(fnmr) > 0
    thresholds = np.concatenate([genuine, impostor]) + 1e-12
    achievable = {(match_rate(impostor, t), 1.0 - match_rate(genuine, t)) for t in thresholds}
    for point in zip(fmr.tolist(), fnmr.tolist(), strict=True):
        assert any(point == pytest.approx(candidate) for candidate in achievable)


def test_curve_metrics_reject_empty_or_non_finite() -> None:
    for function in (eer, auc, det_curve_points):
        with pytest.raises(ValueError, match="genuine"):
            function(np.array([]), np.array([0.5]))
        with pytest.raises(ValueError, match="impostor"):
            function(np.array([0.5]), np.array([]))
        with pytest.raises(ValueError, match="non-finite"):
            function(np.array([0.5, math.nan]), np.array([0.6]))


# -------------------------------------------------------------------------------------- summaries


def test_score_summary() -> None:
    # linear interpolation over 1..5: the p-th percentile is 1 + 4p / 100
    summary = score_summary(np.array([5.0, 1.0, 3.0, 2.0, 4.0]))
    assert summary == {
        "n": 5,
        "mean": 3.0,
        "p5": pytest.approx(1.2),
        "p50": 3.0,
        "p95": pytest.approx(4.8),
    }
    json.dumps(summary)


def test_score_summary_of_nothing() -> None:
    assert score_summary(np.array([])) == {"n": 0, "mean": None, "p5": None, "p50": None, "p95": None}
    with pytest.raises(ValueError):
        score_summary(np.array([math.inf]))
