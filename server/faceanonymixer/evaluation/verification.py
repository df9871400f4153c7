"""Verification scores and error rates for embeddings compared by Euclidean distance."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def pair_distances(embeddings: np.ndarray, labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Distances of all unordered pairs, split into (genuine, impostor)."""
    if len(embeddings) != len(labels):
        raise ValueError("one label per embedding is needed")
    squared = np.sum(embeddings.astype(np.float64) ** 2, axis=1)
    gram = embeddings.astype(np.float64) @ embeddings.T.astype(np.float64)
    distances = np.sqrt(np.maximum(squared[:, None] + squared[None, :] - 2 * gram, 0.0))
    upper = np.triu_indices(len(labels), k=1)
    label_array = np.asarray(labels)
    same = label_array[upper[0]] == label_array[upper[1]]
    values = distances[upper]
    return values[same], values[~same]


def equal_error_rate(genuine: np.ndarray, impostor: np.ndarray) -> tuple[float, float]:
    """(EER, distance threshold at the EER) for distances where smaller means same person."""
    from sklearn.metrics import roc_curve  # the [eval] extra

    if len(genuine) == 0 or len(impostor) == 0:
        raise ValueError("the EER needs both genuine and impostor pairs")
    truth = np.concatenate([np.ones(len(genuine)), np.zeros(len(impostor))])
    scores = -np.concatenate([genuine, impostor])
    false_match, true_match, thresholds = roc_curve(truth, scores)
    false_non_match = 1.0 - true_match
    index = int(np.nanargmin(np.abs(false_non_match - false_match)))
    eer = (false_match[index] + false_non_match[index]) / 2.0
    return float(eer), float(-thresholds[index])


def match_rates(
    genuine: np.ndarray, impostor: np.ndarray, threshold: float
) -> tuple[float | None, float | None]:
    """(share of genuine pairs that match, share of impostor pairs that match) at a threshold.

    A rate is None when there are no pairs of that kind.
    """
    return _share_below(genuine, threshold), _share_below(impostor, threshold)


def _share_below(distances: np.ndarray, threshold: float) -> float | None:
    return float(np.mean(distances < threshold)) if len(distances) else None
