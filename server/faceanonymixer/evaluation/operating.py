"""The judge protocol's rates at one *operating threshold* per judge (docs/evaluation.md's targets).

A judge's operating threshold (:func:`operating_threshold`) is its published one (dlib 0.6), else
the one at FMR 1e-2 of the unprotected impostor pairs of the same photos. A pair matches when its
distance is strictly below it. Every rate is a :func:`~faceanonymixer.evaluation.metrics.rate_entry`:
the share of pairs, the number of pairs, the pairs left out (a face the judge did not find) and
the mean distance.

The embeddings are the harness's (:func:`faceanonymixer.evaluation.harness.judge_embeddings`):
"original" and the protected settings "A" (each person's own key), "B" (a second key per person)
and "S" (one key shared by everyone), (n, d) rows aligned with the ``<set>/<identity>`` labels.
:func:`operating_measures`:

``unprotected``
    ``genuine_match`` (pairs of one person's photos) and ``impostor_nonmatch`` (pairs of
    different people) of the original photos.
``anonymity``
    (photo i under A, unprotected photo j of the same person) pairs that do NOT match;
    ``source`` is i == j, ``others`` is i != j, ``combined`` is both.
``same_key_genuine_match`` / ``own_key_impostor_nonmatch``
    pairs of protected photos (each under its person's A) of one person that match / of
    different people that do not.
``shared_key_genuine_match`` / ``shared_key_impostor_nonmatch``
    the same with everyone under the one key S.
``any_key_genuine_match``
    the genuine pairs under A, B and S together (three times the pairs: each key is one draw).
``cross_key_nonmatch`` (unlinkability)
    (photo i under A, photo j under B) of one person, any i and j, that do not match (``combined``),
    also split into ``same_photo`` (i == j) and ``other_photos``.

A rate whose settings are absent from the embeddings is left out. The per-group tables
(:mod:`.cells`) are flat views of these rates; :mod:`.pooling` adds them up over several runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from faceanonymixer.evaluation.judges import published_threshold, threshold_at_fmr
from faceanonymixer.evaluation.metrics import rate_entry
from faceanonymixer.evaluation.pairs import (
    faces_found,
    pair_distances_between,
    same_identity_pairs,
    unordered_pairs,
)

#: the false match rate of the threshold of a judge that publishes none
OPERATING_FMR = 1e-2
#: the protected settings of a run (the harness's ``KEYS``; not imported: the harness loads torch)
KEYS = ("A", "B", "S")
Kind = Literal["match", "nonmatch"]
Pairs = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class OperatingThreshold:
    #: None when it must come from impostor pairs and there are none
    threshold: float | None
    #: "given", "judge" (published) or "fmr <fmr>, <n> impostor pairs"
    source: str
    #: the unprotected impostor pairs behind a threshold at an FMR, else None
    impostor_pairs: int | None = None


def operating_threshold(
    judge: str,
    labels: Sequence[str],
    original: np.ndarray,
    *,
    fmr: float = OPERATING_FMR,
    given: float | None = None,
) -> OperatingThreshold:
    """``given`` when set, else the judge's published threshold, else the one at ``fmr`` of the
    impostor pairs of ``original`` (unprotected embeddings aligned with ``labels``)."""
    if given is not None:
        return OperatingThreshold(given, "given")
    published = published_threshold(judge)
    if published is not None:
        return OperatingThreshold(published, "judge")
    distances, _ = pair_distances_between(original, original, *unordered_pairs(labels, same=False))
    source = f"fmr {fmr:g}, {len(distances)} impostor pairs"
    threshold = threshold_at_fmr(distances, fmr) if len(distances) else None
    return OperatingThreshold(threshold, source, len(distances))


def verification_rates(labels: Sequence[str], rows: np.ndarray, threshold: float | None) -> dict[str, Any]:
    """``genuine_match`` and ``impostor_nonmatch`` of one set of embeddings at ``threshold``."""
    return {
        "genuine_match": _entry(rows, rows, unordered_pairs(labels, same=True), threshold, "match"),
        "impostor_nonmatch": _entry(rows, rows, unordered_pairs(labels, same=False), threshold, "nonmatch"),
    }


def operating_measures(
    labels: Sequence[str], embeddings: Mapping[str, np.ndarray], threshold: float | None
) -> dict[str, Any]:
    """Every rate of the module docstring for one judge at ``threshold``."""
    genuine = unordered_pairs(labels, same=True)
    impostor = unordered_pairs(labels, same=False)
    source = same_identity_pairs(labels, diagonal="only")
    others = same_identity_pairs(labels, diagonal="exclude")
    every = same_identity_pairs(labels, diagonal="include")

    def entry(left: str, right: str, pairs: Pairs, kind: Kind) -> dict[str, Any] | None:
        if left not in embeddings or right not in embeddings:
            return None
        return _entry(embeddings[left], embeddings[right], pairs, threshold, kind)

    over_keys = None
    if all(key in embeddings for key in KEYS):
        parts = [pair_distances_between(embeddings[key], embeddings[key], *genuine) for key in KEYS]
        over_keys = rate_entry(
            np.concatenate([distances for distances, _ in parts]),
            threshold,
            kind="match",
            skipped=sum(skipped for _, skipped in parts),
        )
    measures = {
        "unprotected": (
            verification_rates(labels, embeddings["original"], threshold)
            if "original" in embeddings
            else None
        ),
        "anonymity": {
            "source": entry("A", "original", source, "nonmatch"),
            "others": entry("A", "original", others, "nonmatch"),
            "combined": entry("A", "original", every, "nonmatch"),
        },
        "same_key_genuine_match": entry("A", "A", genuine, "match"),
        "own_key_impostor_nonmatch": entry("A", "A", impostor, "nonmatch"),
        "shared_key_genuine_match": entry("S", "S", genuine, "match"),
        "shared_key_impostor_nonmatch": entry("S", "S", impostor, "nonmatch"),
        "any_key_genuine_match": over_keys,
        "cross_key_nonmatch": {
            "combined": entry("A", "B", every, "nonmatch"),
            "same_photo": entry("A", "B", source, "nonmatch"),
            "other_photos": entry("A", "B", others, "nonmatch"),
        },
    }
    return _present(measures)


def operating_report(
    labels: Sequence[str],
    embeddings: Mapping[str, Mapping[str, np.ndarray]],
    *,
    fmr: float = OPERATING_FMR,
    thresholds: Mapping[str, float] | None = None,
) -> dict[str, dict[str, Any]]:
    """Per judge (``embeddings``: judge -> setting -> rows): its operating threshold (``thresholds``
    where given), the faces found per setting and :func:`operating_measures`."""
    report: dict[str, dict[str, Any]] = {}
    for judge, rows in embeddings.items():
        chosen = operating_threshold(
            judge, labels, rows["original"], fmr=fmr, given=(thresholds or {}).get(judge)
        )
        report[judge] = {
            "threshold": chosen.threshold,
            "threshold_source": chosen.source,
            "impostor_pairs_for_threshold": chosen.impostor_pairs,
            "detection": detection(rows),
            "measures": operating_measures(labels, rows, chosen.threshold),
        }
    return report


def detection(rows: Mapping[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    """Setting -> :func:`~faceanonymixer.evaluation.pairs.faces_found` of one judge's embeddings."""
    return {setting: faces_found(values) for setting, values in rows.items()}


def measure_entry(measures: Mapping[str, Any], path: Sequence[str]) -> dict[str, Any] | None:
    """The rate entry at ``path`` (e.g. ("anonymity", "combined")), None where there is none."""
    entry: Any = measures
    for part in path:
        entry = entry.get(part) if isinstance(entry, Mapping) else None
    return entry if isinstance(entry, dict) and "rate" in entry else None


#: the rows of :func:`format_table`: title, path into :func:`operating_measures`
TABLE_ROWS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("unprotected genuine match", ("unprotected", "genuine_match")),
    ("unprotected impostor non-match", ("unprotected", "impostor_nonmatch")),
    ("anonymity: source photo", ("anonymity", "source")),
    ("anonymity: other photos", ("anonymity", "others")),
    ("anonymity: combined", ("anonymity", "combined")),
    ("same key genuine match", ("same_key_genuine_match",)),
    ("own key impostor non-match", ("own_key_impostor_nonmatch",)),
    ("shared key genuine match", ("shared_key_genuine_match",)),
    ("shared key impostor non-match", ("shared_key_impostor_nonmatch",)),
    ("genuine match, keys A+B+S", ("any_key_genuine_match",)),
    ("cross key non-match", ("cross_key_nonmatch", "combined")),
    ("cross key non-match: same photo", ("cross_key_nonmatch", "same_photo")),
)


def format_table(judges: Mapping[str, Mapping[str, Any]]) -> str:
    """A plain-text table of :func:`operating_report` (or a pooled one): one column per judge, each
    cell "rate n=pairs d=mean distance"; rows without a value anywhere are left out."""
    names = list(judges)
    rows: list[list[str]] = [["measure", *names]]
    rows.append(["threshold", *(_threshold_cell(judges[name]) for name in names)])
    settings = list(dict.fromkeys(setting for name in names for setting in judges[name]["detection"]))
    for setting in settings:
        found = [judges[name]["detection"].get(setting) for name in names]
        rows.append(
            [
                f"detection rate: {setting}",
                *(
                    "-" if d is None or d["rate"] is None else f"{d['rate']:.3f} ({d['found']}/{d['total']})"
                    for d in found
                ),
            ]
        )
    for title, path in TABLE_ROWS:
        cells = [_rate_cell(measure_entry(judges[name]["measures"], path)) for name in names]
        if any(cell != "-" for cell in cells):
            rows.append([title, *cells])
    return text_table(rows, rule=True)


def text_table(rows: Sequence[Sequence[str]], *, rule: bool = False) -> str:
    """Rows of cells as left-aligned columns (a dashed rule under the first row with ``rule``)."""
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    if rule:
        lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def _entry(
    left: np.ndarray, right: np.ndarray, pairs: Pairs, threshold: float | None, kind: Kind
) -> dict[str, Any]:
    distances, skipped = pair_distances_between(left, right, *pairs)
    return rate_entry(distances, threshold, kind=kind, skipped=skipped)


def _present(tree: dict[str, Any]) -> dict[str, Any]:
    """``tree`` without its None leaves and the sections left empty."""
    kept: dict[str, Any] = {}
    for name, value in tree.items():
        if isinstance(value, dict) and "rate" not in value:
            value = _present(value) or None
        if value is not None:
            kept[name] = value
    return kept


def _threshold_cell(judge: Mapping[str, Any]) -> str:
    if judge["threshold"] is None:
        return "n/a"
    return f"{judge['threshold']:.4f} ({judge['threshold_source']})"


def _rate_cell(entry: Mapping[str, Any] | None) -> str:
    if entry is None:
        return "-"
    rate = "n/a" if entry["rate"] is None else f"{entry['rate']:.3f}"
    distance = "" if entry["mean_distance"] is None else f" d={entry['mean_distance']:.3f}"
    return f"{rate} n={entry['pairs']}{distance}"
