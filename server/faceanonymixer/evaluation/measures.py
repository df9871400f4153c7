"""The ISO/IEC 24745 properties, measured for one judge from its embeddings of one protection run.

Distances are Euclidean; a pair matches when its distance is strictly below a threshold. The
thresholds are set at FMR 1e-2 and 1e-3 on the *unprotected* impostor pairs and kept for every
protected measure, as a deployed recognizer keeps its operating point.

``unprotected``
    genuine = unordered pairs of one identity's photos, impostor = pairs of different identities:
    EER, AUC, the thresholds (with the impostor pairs behind each), TAR at them.
``protected_same_key``
    the same pairs, every photo protected under its identity's own key A: EER, AUC, TAR and FMR
    at the thresholds. Verification must keep working.
``anonymity``
    PSR (protection success rate) = share of (photo i protected under A, unprotected photo j of the
    same identity) pairs that do NOT match; ``psr_source`` is i == j, ``psr_others`` i != j,
    ``psr`` both.
``cross_key``
    genuine = (photo i under A, photo j under B) of one identity, any i, j; impostor = (under A,
    under B) of different identities: EER and AUC (0.5 means the keys leave nothing to link),
    and the share of cross-key genuine pairs that match.
``unlinkability``
    Gomez-Barrero et al.'s D<->sys with mated = the cross-key genuine scores and non-mated = the
    cross-key impostor scores (histogram bins: :func:`unlinkability_bins`).
``same_key_different_people``
    everyone under one shared key S: the share of impostor pairs that match (differentiation), and
    the genuine match rate under S for context.
``irreversibility``
    ``direct``: share of (protected under A, unprotected same identity) pairs that match (1 - PSR);
    ``learned``: an attacker who knows the system protects faces of their own (half of the
    identities, chosen by the seed) and fits a ridge regression from protected to original
    embeddings; on the other half, the share of (predicted, unprotected same identity) pairs that
    match, with ``impostor_match_rate`` of (predicted, unprotected other identity) pairs beside it:
    an attack that matches everyone has recovered nothing.
``detection``
    share of photos in which the judge's own detector finds a face, per setting.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from faceanonymixer.evaluation.metrics import (
    ThresholdInfo,
    Unlinkability,
    auc,
    eer,
    fmr_thresholds,
    match_rate,
    score_summary,
    unlinkability,
)
from faceanonymixer.evaluation.pairs import (
    faces_found,
    pair_distances_between,
    same_identity_pairs,
    unordered_pairs,
)

FMRS = (1e-2, 1e-3)


@dataclass(frozen=True)
class Scores:
    """Distances of one kind of pair, and how many pairs were left out (a face not found)."""

    distances: np.ndarray
    skipped: int


@dataclass
class JudgeMeasures:
    report: dict[str, Any]
    #: named score sets, for the plots
    scores: dict[str, Scores]
    thresholds: dict[str, ThresholdInfo]
    #: mated = cross-key genuine, non-mated = cross-key impostor; None without both
    unlinkability: Unlinkability | None


class _Pairs:
    def __init__(self, labels: Sequence[str]) -> None:
        self.genuine = unordered_pairs(labels, same=True)
        self.impostor = unordered_pairs(labels, same=False)
        self.source = same_identity_pairs(labels, diagonal="only")
        self.others = same_identity_pairs(labels, diagonal="exclude")
        self.every = same_identity_pairs(labels, diagonal="include")


def _rates(
    distances: np.ndarray, thresholds: Mapping[str, ThresholdInfo], *, matching: bool
) -> dict[str, float | None]:
    rates: dict[str, float | None] = {}
    for key, info in thresholds.items():
        rate = match_rate(distances, info.threshold)
        rates[key] = rate if rate is None or matching else 1.0 - rate
    return rates


def _separation(genuine: Scores, impostor: Scores) -> dict[str, Any]:
    """EER and AUC (None where a side has no pairs), with the pair counts behind them."""
    both = len(genuine.distances) and len(impostor.distances)
    return {
        "eer": eer(genuine.distances, impostor.distances) if both else None,
        "auc": auc(genuine.distances, impostor.distances) if both else None,
        "genuine_pairs": len(genuine.distances),
        "impostor_pairs": len(impostor.distances),
        "skipped_pairs": genuine.skipped + impostor.skipped,
    }


def judge_measures(
    labels: Sequence[str], embeddings: Mapping[str, np.ndarray], *, seed: int, prefix: str = ""
) -> JudgeMeasures:
    """Every measure for one judge. ``embeddings`` maps "original", "A", "B", "S" (with ``prefix``,
    e.g. "naive_A") to (n, d) arrays aligned with ``labels``; NaN rows are faces not found."""
    pairs = _Pairs(labels)
    original = embeddings["original"]
    a, b, s = (embeddings[prefix + key] for key in ("A", "B", "S"))

    def scores(left: np.ndarray, right: np.ndarray, which: tuple[np.ndarray, np.ndarray]) -> Scores:
        return Scores(*pair_distances_between(left, right, *which))

    sets = {
        "unprotected genuine": scores(original, original, pairs.genuine),
        "unprotected impostor": scores(original, original, pairs.impostor),
        "same key genuine": scores(a, a, pairs.genuine),
        "own keys impostor": scores(a, a, pairs.impostor),
        "protected vs original (same photo)": scores(a, original, pairs.source),
        "protected vs original (other photos)": scores(a, original, pairs.others),
        "protected vs original": scores(a, original, pairs.every),
        "cross-key genuine": scores(a, b, pairs.every),
        "cross-key impostor": scores(a, b, pairs.impostor),
        "shared key genuine": scores(s, s, pairs.genuine),
        "shared key impostor": scores(s, s, pairs.impostor),
    }
    if not len(sets["unprotected impostor"].distances):
        raise ValueError(
            "the thresholds need unprotected impostor pairs: at least two identities with faces found"
        )
    thresholds = fmr_thresholds(sets["unprotected impostor"].distances, FMRS)

    def rates(name: str, *, matching: bool) -> dict[str, float | None]:
        return _rates(sets[name].distances, thresholds, matching=matching)

    mated, non_mated = sets["cross-key genuine"].distances, sets["cross-key impostor"].distances
    linkage = None
    if len(mated) and len(non_mated):
        linkage = unlinkability(mated, non_mated, bins=unlinkability_bins(len(mated), len(non_mated)))
    report: dict[str, Any] = {
        "unprotected": {
            **_separation(sets["unprotected genuine"], sets["unprotected impostor"]),
            "thresholds": {key: info.threshold for key, info in thresholds.items()},
            "threshold_details": {key: info.as_dict() for key, info in thresholds.items()},
            "tar": rates("unprotected genuine", matching=True),
        },
        "protected_same_key": {
            **_separation(sets["same key genuine"], sets["own keys impostor"]),
            "tar": rates("same key genuine", matching=True),
            "fmr": rates("own keys impostor", matching=True),
        },
        "anonymity": {
            "psr": rates("protected vs original", matching=False),
            "psr_source": rates("protected vs original (same photo)", matching=False),
            "psr_others": rates("protected vs original (other photos)", matching=False),
            "pairs": len(sets["protected vs original"].distances),
        },
        "cross_key": {
            **_separation(sets["cross-key genuine"], sets["cross-key impostor"]),
            "match_rate": rates("cross-key genuine", matching=True),
        },
        "unlinkability": linkage.as_dict() if linkage else {"d_sys": None},
        "same_key_different_people": {
            "match_rate": rates("shared key impostor", matching=True),
            "genuine_match_rate": rates("shared key genuine", matching=True),
            "impostor_pairs": len(sets["shared key impostor"].distances),
        },
        "irreversibility": {
            "direct": rates("protected vs original", matching=True),
            "learned": learned_attack(labels, a, original, thresholds, seed=seed),
        },
        "distances": {name: score_summary(score.distances) for name, score in sets.items()},
        "detection": {
            setting: faces_found(embeddings[setting])
            for setting in embeddings
            if setting == "original" or setting.startswith(prefix)
        },
    }
    return JudgeMeasures(report, sets, thresholds, linkage)


def learned_attack(
    labels: Sequence[str],
    protected: np.ndarray,
    original: np.ndarray,
    thresholds: Mapping[str, ThresholdInfo],
    *,
    seed: int,
) -> dict[str, Any]:
    """Ridge regression protected -> original embedding, trained on half the identities, tested on
    the rest (see the module docstring). Rates are None when a half has no usable photo."""
    from sklearn.linear_model import RidgeCV

    identities = sorted(set(labels))
    order = np.random.default_rng(seed).permutation(len(identities))
    train_ids = {identities[i] for i in order[: len(identities) // 2]}
    label_array = np.asarray(labels, dtype=object)
    usable = np.all(np.isfinite(protected), axis=1) & np.all(np.isfinite(original), axis=1)
    train = usable & np.isin(label_array, list(train_ids))
    test = usable & ~np.isin(label_array, list(train_ids))
    empty = {"1e-2": None, "1e-3": None}
    if train.sum() < 2 or test.sum() < 1:
        return {
            **{key: None for key in thresholds},
            "impostor_match_rate": dict(empty),
            "train_photos": int(train.sum()),
            "test_photos": int(test.sum()),
        }
    model = RidgeCV(alphas=np.logspace(-3, 3, 13)).fit(protected[train], original[train])
    predicted = np.full_like(original, np.nan)
    predicted[test] = model.predict(protected[test])
    same = Scores(
        *pair_distances_between(predicted, original, *same_identity_pairs(labels, diagonal="include"))
    )
    first, second = np.meshgrid(np.arange(len(labels)), np.arange(len(labels)), indexing="ij")
    different = label_array[first] != label_array[second]
    other = Scores(*pair_distances_between(predicted, original, first[different], second[different]))
    return {
        **_rates(same.distances, thresholds, matching=True),
        "impostor_match_rate": _rates(other.distances, thresholds, matching=True),
        "train_photos": int(train.sum()),
        "test_photos": int(test.sum()),
        "alpha": float(model.alpha_),
    }


def unlinkability_bins(mated: int, non_mated: int) -> int:
    """Histogram bins for D<->sys: about the square root of the smaller sample, 5 to 100.

    With few scores a fine histogram leaves each bin to one side alone and reports full
    linkability from sampling noise; the paper's 100 bins suit thousands of scores.
    """
    return int(np.clip(round(np.sqrt(min(mated, non_mated))), 5, 100))
