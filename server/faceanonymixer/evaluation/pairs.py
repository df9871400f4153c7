"""Which photos pair with which, and the distances of those pairs.

Embeddings are (n, d) float64 arrays aligned with a list of n identity labels; a row of NaN is a
photo whose face a judge did not find (or that was not protected): its pairs are left out and
counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

Diagonal = Literal["include", "exclude", "only"]


def unordered_pairs(labels: Sequence[str], *, same: bool) -> tuple[np.ndarray, np.ndarray]:
    """Index arrays (i, j), i < j, of all pairs whose labels are equal (``same``) or differ."""
    label_array = np.asarray(labels, dtype=object)
    first, second = np.triu_indices(len(label_array), k=1)
    equal = label_array[first] == label_array[second] if len(first) else np.zeros(0, dtype=bool)
    keep = equal if same else ~equal
    return first[keep].astype(np.int64), second[keep].astype(np.int64)


def same_identity_pairs(labels: Sequence[str], *, diagonal: Diagonal) -> tuple[np.ndarray, np.ndarray]:
    """Ordered index arrays (i, j) of photos of one identity: with i == j too, without, or only."""
    label_array = np.asarray(labels, dtype=object)
    n = len(label_array)
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    first, second = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    keep = label_array[first] == label_array[second]
    if diagonal == "exclude":
        keep &= first != second
    elif diagonal == "only":
        keep &= first == second
    return first[keep].astype(np.int64), second[keep].astype(np.int64)


def stack_embeddings(embeddings: Sequence[np.ndarray | None]) -> np.ndarray:
    """(n, d) float64 array; rows of faces not found (None) are NaN."""
    found = [e for e in embeddings if e is not None]
    width = int(np.asarray(found[0]).size) if found else 1
    stacked = np.full((len(embeddings), width), np.nan, dtype=np.float64)
    for row, embedding in enumerate(embeddings):
        if embedding is not None:
            stacked[row] = np.asarray(embedding, dtype=np.float64).reshape(-1)
    return stacked


def pair_distances_between(
    left: np.ndarray, right: np.ndarray, first: np.ndarray, second: np.ndarray
) -> tuple[np.ndarray, int]:
    """Euclidean distances of rows ``left[first[k]]`` and ``right[second[k]]``.

    Returns (distances of the pairs where both rows are present, number of pairs left out
    because a row is missing: NaN, i.e. no face found).
    """
    if len(first) == 0:
        return np.zeros(0, dtype=np.float64), 0
    distances = np.linalg.norm(left[first] - right[second], axis=1)
    present = np.isfinite(distances)
    return distances[present], int(np.count_nonzero(~present))


def faces_found(rows: np.ndarray) -> dict[str, int | float | None]:
    """``{"found", "total", "rate"}``: the rows that are not NaN (a judge found the face) among all;
    ``rate`` is None without rows."""
    found = int(np.count_nonzero(np.all(np.isfinite(rows), axis=1)))
    return {"found": found, "total": len(rows), "rate": found / len(rows) if len(rows) else None}
