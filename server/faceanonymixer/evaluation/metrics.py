"""Verification and unlinkability metrics over Euclidean distances.

Scores are *distances*: smaller means more alike, and a pair matches when its distance is
strictly below the threshold t. For genuine (same person / mated) distances g and impostor
(different person / non-mated) distances i:

``FMR(t)  = #{i < t} / #i``          false match rate
``FNMR(t) = #{g >= t} / #g = 1 - #{g < t} / #g``   false non-match rate
``EER``   the error rate where FMR(t) = FNMR(t) (the ROC operating point closest to it,
          averaged, as in :func:`faceanonymixer.evaluation.verification.equal_error_rate`)
``AUC``   = P(g < i) + P(g = i) / 2 for g, i drawn at random: the area under the ROC curve,
          i.e. the Mann-Whitney statistic with ties counting half

Unlinkability follows M. Gomez-Barrero, J. Galbally, C. Rathgeb, C. Busch, "General Framework to
Evaluate Unlinkability in Biometric Template Protection Systems", IEEE TIFS 13(6), 2018. With
p(s|H_m) and p(s|H_nm) the score distributions of mated and non-mated template pairs (estimated
here by histograms over common bins, each summing to 1), LR(s) = p(s|H_m) / p(s|H_nm) and
omega = p(H_m) / p(H_nm) the prior ratio:

``D<->(s)   = 2 * omega*LR(s) / (1 + omega*LR(s)) - 1``  where omega*LR(s) > 1, else 0
``D<->sys   = sum_s p(s|H_m) * D<->(s)``

D<->(s) = 1 where p(s|H_nm) = 0 < p(s|H_m) (the limit of LR -> inf). Both lie in [0, 1]: 0 means
mated and non-mated pairs cannot be told apart (fully unlinkable), 1 means they always can.

Inputs are 1-D float arrays. Empty or non-finite input raises ValueError where a metric is
undefined; a rate over an empty set is None.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from faceanonymixer.evaluation.judges import threshold_at_fmr
from faceanonymixer.evaluation.verification import equal_error_rate

__all__ = [
    "ThresholdInfo",
    "Unlinkability",
    "auc",
    "det_curve_points",
    "eer",
    "fmr_key",
    "fmr_thresholds",
    "match_rate",
    "rate_entry",
    "score_summary",
    "unlinkability",
]


def _scores(values: np.ndarray, name: str, *, allow_empty: bool = False) -> np.ndarray:
    """``values`` as a 1-D float64 array, or ValueError when not 1-D, empty or non-finite."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of scores, got shape {array.shape}")
    if not allow_empty and array.size == 0:
        raise ValueError(f"{name} is empty: the metric is undefined without scores")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains non-finite scores (nan or inf)")
    return array


def _labelled(genuine: np.ndarray, impostor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(truth, score) for scikit-learn: genuine is the positive class, score = -distance."""
    g = _scores(genuine, "genuine")
    i = _scores(impostor, "impostor")
    truth = np.concatenate([np.ones(g.size), np.zeros(i.size)])
    # scikit-learn expects larger = more likely positive, so distances are negated
    return truth, -np.concatenate([g, i])


def eer(genuine: np.ndarray, impostor: np.ndarray) -> float:
    """Equal error rate of genuine vs impostor distances (see the module docstring)."""
    g = _scores(genuine, "genuine")
    i = _scores(impostor, "impostor")
    return equal_error_rate(g, i)[0]


def auc(genuine: np.ndarray, impostor: np.ndarray) -> float:
    """Area under the ROC curve: P(genuine < impostor) + P(genuine = impostor) / 2."""
    from sklearn.metrics import roc_auc_score  # the [eval] extra

    truth, score = _labelled(genuine, impostor)
    return float(roc_auc_score(truth, score))


def match_rate(distances: np.ndarray, threshold: float) -> float | None:
    """Share of ``distances`` strictly below ``threshold`` (which may be inf); None when empty."""
    values = _scores(distances, "distances", allow_empty=True)
    if math.isnan(threshold):
        raise ValueError("threshold must not be nan")
    return float(np.mean(values < threshold)) if values.size else None


def rate_entry(
    distances: np.ndarray,
    threshold: float | None,
    *,
    kind: Literal["match", "nonmatch"],
    skipped: int = 0,
) -> dict[str, Any]:
    """One rate of a protocol table: the share of pairs that match (``kind`` "match") or do not
    ("nonmatch") at ``threshold``, with the number of pairs, the pairs left out (``skipped``: a face
    not found) and the mean distance. ``rate`` is None without pairs or without a threshold."""
    values = _scores(distances, "distances", allow_empty=True)
    matched = match_rate(values, threshold) if threshold is not None else None
    rate = matched if matched is None or kind == "match" else 1.0 - matched
    return {
        "rate": rate,
        "kind": kind,
        "pairs": int(values.size),
        "skipped": skipped,
        "mean_distance": float(np.mean(values)) if values.size else None,
    }


def fmr_key(fmr: float) -> str:
    """Short JSON key of a false match rate: 0.01 -> "1e-2", 0.001 -> "1e-3", 0.025 -> "2.5e-2"."""
    mantissa, exponent = f"{fmr:.6e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


@dataclass(frozen=True)
class ThresholdInfo:
    """A distance threshold chosen for a target false match rate on a set of impostor distances.

    ``threshold`` comes from :func:`faceanonymixer.evaluation.judges.threshold_at_fmr`: the
    largest threshold letting at most floor(fmr * n) of the n impostor pairs match.
    ``achieved_fmr`` is the share of impostor distances strictly below it (at most ``fmr``,
    less with ties). ``supported`` is n * fmr >= 1: there are enough impostor pairs for at least
    one false match. When it is False no false match is allowed, the threshold is simply the
    smallest impostor distance, and the FMR is not really estimated (only bounded by 1 / n).
    """

    fmr: float
    threshold: float
    impostor_pairs: int
    achieved_fmr: float
    supported: bool

    def as_dict(self) -> dict[str, float | int | bool]:
        return {
            "fmr": self.fmr,
            "threshold": self.threshold,
            "impostor_pairs": self.impostor_pairs,
            "achieved_fmr": self.achieved_fmr,
            "supported": self.supported,
        }


def fmr_thresholds(impostor: np.ndarray, fmrs: Iterable[float] = (1e-2, 1e-3)) -> dict[str, ThresholdInfo]:
    """Thresholds at each target FMR in (0, 1), keyed by :func:`fmr_key` ("1e-2", "1e-3")."""
    distances = _scores(impostor, "impostor")
    n = int(distances.size)
    result: dict[str, ThresholdInfo] = {}
    for fmr in fmrs:
        # fmr = 1 would give an infinite threshold, which JSON cannot carry
        if not 0.0 < fmr < 1.0:
            raise ValueError(f"a target FMR must lie in (0, 1), got {fmr}")
        key = fmr_key(fmr)
        if key in result:
            raise ValueError(f"target FMRs {result[key].fmr} and {fmr} share the key {key!r}")
        threshold = threshold_at_fmr(distances, fmr)
        result[key] = ThresholdInfo(
            fmr=float(fmr),
            threshold=threshold,
            impostor_pairs=n,
            achieved_fmr=float(np.mean(distances < threshold)),
            # same epsilon as threshold_at_fmr, so supported <=> it allowed at least one false match
            supported=math.floor(fmr * n + 1e-9) >= 1,
        )
    return result


@dataclass(frozen=True, eq=False)  # eq=False: numpy arrays have no truth value for ==
class Unlinkability:
    """Gomez-Barrero et al.'s unlinkability measures from histograms (see the module docstring).

    ``bin_edges`` has one more entry than the per-bin arrays. ``mated_density`` and
    ``non_mated_density`` are the per-bin probabilities p(s|H_m) and p(s|H_nm) (each sums to 1),
    ``local`` is D<->(s) per bin and ``d_sys`` the global D<->sys.
    """

    d_sys: float
    omega: float
    bin_edges: np.ndarray
    local: np.ndarray
    mated_density: np.ndarray
    non_mated_density: np.ndarray

    @property
    def bins(self) -> int:
        return len(self.bin_edges) - 1

    def as_dict(self) -> dict[str, float | int]:
        return {"d_sys": self.d_sys, "bins": self.bins, "omega": self.omega}


def unlinkability(
    mated: np.ndarray, non_mated: np.ndarray, *, bins: int = 100, omega: float = 1.0
) -> Unlinkability:
    """D<->(s) and D<->sys of mated vs non-mated scores over ``bins`` equal bins spanning both.

    The edges are ``numpy.histogram_bin_edges`` of all scores together: from the smallest to the
    largest score (+-0.5 around it when all are equal); bins are half-open except the last.

    The measure does not depend on the direction of the scale: negating every score (distance
    vs similarity) mirrors the bins and gives the same D<->sys, except that a score lying
    exactly on an inner bin edge may then fall into the neighbouring bin (bins are half-open).
    """
    m = _scores(mated, "mated scores")
    nm = _scores(non_mated, "non-mated scores")
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    if not (math.isfinite(omega) and omega > 0):
        raise ValueError(f"omega (the prior ratio p(H_m) / p(H_nm)) must be positive, got {omega}")
    edges = np.histogram_bin_edges(np.concatenate([m, nm]), bins=bins)
    if not np.all(np.diff(edges) > 0):
        raise ValueError(f"the scores span too narrow a range to split into {bins} bins")
    mated_counts = np.histogram(m, bins=edges)[0].astype(np.float64)
    non_mated_counts = np.histogram(nm, bins=edges)[0].astype(np.float64)
    p_m = mated_counts / m.size
    p_nm = non_mated_counts / nm.size

    local = np.zeros(bins)
    both = p_nm > 0
    weighted_lr = omega * p_m[both] / p_nm[both]
    # (x - 1) / (x + 1) equals 2x / (1 + x) - 1 but is exactly 0 at x = 1 (identical densities)
    local[both] = np.where(weighted_lr > 1, (weighted_lr - 1) / (weighted_lr + 1), 0.0)
    local[(~both) & (p_m > 0)] = 1.0
    # sum of p_m * D computed as sum(count * D) / n: exactly 1 when every mated bin has D = 1
    d_sys = math.fsum((mated_counts * local).tolist()) / m.size
    return Unlinkability(
        d_sys=d_sys,
        omega=float(omega),
        bin_edges=edges,
        local=local,
        mated_density=p_m,
        non_mated_density=p_nm,
    )


def det_curve_points(genuine: np.ndarray, impostor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FMR, FNMR) at every distinct operating point, from scikit-learn's ``det_curve``.

    scikit-learn accepts at score >= t, i.e. distance <= -t; that is the strict rule at a
    threshold just above each distinct distance, so the set of (FMR, FNMR) points is the same.
    """
    from sklearn.metrics import det_curve  # the [eval] extra

    truth, score = _labelled(genuine, impostor)
    false_match, false_non_match, _ = det_curve(truth, score)
    return np.asarray(false_match, dtype=np.float64), np.asarray(false_non_match, dtype=np.float64)


def score_summary(distances: np.ndarray) -> dict[str, int | float | None]:
    """n, mean and the 5th / 50th / 95th percentiles (linear interpolation); None when empty."""
    values = _scores(distances, "distances", allow_empty=True)
    if values.size == 0:
        return {"n": 0, "mean": None, "p5": None, "p50": None, "p95": None}
    p5, p50, p95 = np.percentile(values, [5.0, 50.0, 95.0])
    return {
        "n": int(values.size),
        "mean": float(np.mean(values)),
        "p5": float(p5),
        "p50": float(p50),
        "p95": float(p95),
    }
