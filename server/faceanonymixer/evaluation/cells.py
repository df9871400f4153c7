"""Rates per group of people (a *cell*: race x gender on UTKFace, men / women on LFW) and the worst one.

An average over everyone can hide one group failing; these tables exist to show it. For one
group (a set of photos) and one judge, at the judge's *operating threshold* (its published one,
dlib 0.6, or else the one at FMR 1e-2 of the set's unprotected impostor pairs, as the product's
quality targets are stated):

``unprotected_impostor_nonmatch``
    pairs of different people *within the group*, unprotected, that do not match: how well the
    recognizer separates this group on its own (some groups less well than others).
``shared_key_impostor_nonmatch``
    the same pairs, everyone protected under one shared key S: protection must not make the
    group's people alike.
``own_key_impostor_nonmatch``
    the same pairs, each person under their own key A.
``anonymity``
    (photo protected under A, unprotected photo of the same person) pairs, the same photo
    included, that do not match.
``cross_key_nonmatch``
    (photo under A, photo of the same person under B) pairs, the same photo included, that do not
    match.
``unprotected_genuine_match``, ``same_key_genuine_match``, ``shared_key_genuine_match``
    pairs of one person's photos that match (unprotected, both under A, both under S); None in a
    group of one photo per person (no genuine pairs).

Each rate comes with its number of pairs; pairs with a face the judge did not find are left out.
The rates are those of :func:`faceanonymixer.evaluation.operating.operating_measures` (the judge
protocol's, there with their mean distances and more splits) over the group's photos.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from faceanonymixer.evaluation.operating import measure_entry, operating_measures
from faceanonymixer.evaluation.pairs import faces_found

#: the fewest photos a cell needs to be named the worst (smaller cells are listed, not ranked,
#: unless no cell is that big: a small slice then ranks all of its cells)
WORST_CELL_MIN_COUNT = 10

#: measure -> its rate in :func:`faceanonymixer.evaluation.operating.operating_measures`
_RATES: dict[str, tuple[str, ...]] = {
    "unprotected_impostor_nonmatch": ("unprotected", "impostor_nonmatch"),
    "shared_key_impostor_nonmatch": ("shared_key_impostor_nonmatch",),
    "own_key_impostor_nonmatch": ("own_key_impostor_nonmatch",),
    "anonymity": ("anonymity", "combined"),
    "cross_key_nonmatch": ("cross_key_nonmatch", "combined"),
    "unprotected_genuine_match": ("unprotected", "genuine_match"),
    "same_key_genuine_match": ("same_key_genuine_match",),
    "shared_key_genuine_match": ("shared_key_genuine_match",),
}
#: the unprotected rate shown beside each impostor measure
UNPROTECTED_OF = {
    "shared_key_impostor_nonmatch": "unprotected_impostor_nonmatch",
    "own_key_impostor_nonmatch": "unprotected_impostor_nonmatch",
    "same_key_genuine_match": "unprotected_genuine_match",
    "shared_key_genuine_match": "unprotected_genuine_match",
}


def group_rates(
    labels: Sequence[str], embeddings: Mapping[str, np.ndarray], threshold: float
) -> dict[str, Any]:
    """Every rate of the module docstring over the photos ``labels`` (one group), at ``threshold``.

    ``embeddings`` maps "original", "A", "B", "S" to (n, d) rows aligned with ``labels``.
    """
    measures = operating_measures(labels, embeddings, threshold)
    result: dict[str, Any] = {"threshold": threshold}
    counts: dict[str, int] = {}
    for name, path in _RATES.items():
        entry = measure_entry(measures, path)
        if entry is not None:
            result[name] = entry["rate"]
            counts[name] = entry["pairs"]
    result["pairs"] = counts
    return result


def detection_rate(rows: np.ndarray) -> float | None:
    """Share of rows that are not NaN (the judge found the face)."""
    return faces_found(rows)["rate"]


def cell_table(
    cells: Sequence[str | None],
    labels: Sequence[str],
    embeddings: Mapping[str, Mapping[str, np.ndarray]],
    thresholds: Mapping[str, float],
    attributes: Callable[[np.ndarray], dict[str, Any]] | None = None,
    *,
    prefix: str = "",
) -> dict[str, dict[str, Any]]:
    """``{"<prefix><cell>": {"count", "identities", "<judge>": group_rates, "detection": {judge: rate},
    "attributes": ...}}`` for every cell named in ``cells`` (one entry per photo; None: no cell).

    ``embeddings`` maps judge -> setting -> rows; ``thresholds`` judge -> operating threshold;
    ``attributes`` (optional) gives the attribute summary of a photo mask.
    """
    table: dict[str, dict[str, Any]] = {}
    names = np.array([cell or "" for cell in cells], dtype=object)
    label_array = np.asarray(labels, dtype=object)
    for cell in sorted({cell for cell in cells if cell}):
        rows = names == cell
        members = [str(label) for label in label_array[rows]]
        entry: dict[str, Any] = {"count": int(rows.sum()), "identities": len(set(members))}
        for judge, per_setting in embeddings.items():
            chosen = {setting: values[rows] for setting, values in per_setting.items()}
            entry[judge] = group_rates(members, chosen, thresholds[judge])
        entry["detection"] = {
            judge: detection_rate(values["A"][rows]) for judge, values in embeddings.items()
        }
        if attributes is not None:
            entry["attributes"] = attributes(rows)
        table[f"{prefix}{cell}"] = entry
    return table


#: measure path in a cell -> True when a larger value is worse
_ATTRIBUTE_MEASURES = {
    "gender_agreement": False,
    "age_group_agreement": False,
    "age_group_within_one": False,
    "ita_abs_diff_median": True,
    "pose_error_median_deg": True,
}
_JUDGE_MEASURES = (
    "shared_key_impostor_nonmatch",
    "own_key_impostor_nonmatch",
    "anonymity",
    "cross_key_nonmatch",
    "same_key_genuine_match",
    "shared_key_genuine_match",
)


def worst_cells(
    table: Mapping[str, Mapping[str, Any]], judges: Sequence[str], *, min_count: int = WORST_CELL_MIN_COUNT
) -> dict[str, dict[str, Any]]:
    """``{"<measure>": {"cell", "value", "count"[, "unprotected"]}}``: per measure the cell where
    it is worst, among cells of at least ``min_count`` photos (or, when no cell has that many,
    among all cells) that have a value.

    Measures are paths into a cell: ``<judge>.<rate>``, ``detection.<judge>``,
    ``attributes.<name>``; every rate is worst at its lowest, the medians of |delta ITA| and of
    the pose error at their highest.
    """
    candidates: list[tuple[str, Callable[[Mapping[str, Any]], Any], bool, str | None]] = []
    for judge in judges:
        for measure in _JUDGE_MEASURES:
            candidates.append(
                (f"{judge}.{measure}", _getter(judge, measure), False, UNPROTECTED_OF.get(measure))
            )
        candidates.append((f"detection.{judge}", _getter("detection", judge), False, None))
    for measure, higher_is_worse in _ATTRIBUTE_MEASURES.items():
        candidates.append((f"attributes.{measure}", _getter("attributes", measure), higher_is_worse, None))

    worst: dict[str, dict[str, Any]] = {}
    eligible = {name: cell for name, cell in table.items() if cell["count"] >= min_count} or dict(table)
    for path, get, higher_is_worse, unprotected in candidates:
        values = [(name, get(cell)) for name, cell in eligible.items()]
        values = [(name, value) for name, value in values if value is not None]
        if not values:
            continue
        name, value = (max if higher_is_worse else min)(values, key=lambda item: item[1])
        entry: dict[str, Any] = {"cell": name, "value": value, "count": table[name]["count"]}
        if unprotected is not None:
            entry["unprotected"] = table[name][path.split(".")[0]].get(unprotected)
        worst[path] = entry
    return worst


def _getter(section: str, key: str) -> Callable[[Mapping[str, Any]], Any]:
    def get(cell: Mapping[str, Any]) -> Any:
        part = cell.get(section)
        return part.get(key) if isinstance(part, Mapping) else None

    return get
