"""Several protection runs scored as one, at one threshold per judge.

A run's judge embeddings are kept as one ``.npz`` (:func:`save_embeddings`: the labels and, per
judge and setting, the rows; NaN rows are faces not found) so that they can be re-scored at
another threshold. On 10 people one row of the protocol moves by up to 0.07 between runs of the
same setting, and FaceNet's threshold at FMR 1e-2 of 405 impostor pairs moves with the people: a
setting is decided on several slices and key seeds scored at one threshold.

Threshold per judge (:func:`pool_runs`): the one given, else the judge's own (dlib 0.6), else the
one at the FMR over the impostor pairs of every distinct unprotected photo of all runs (a photo
is its label and its place among that label's photos; runs of one slice under other seeds hold
the same photos and count once).

Pooling: every run is scored on its own (its pairs never cross into another run: other keys) by
:func:`faceanonymixer.evaluation.operating.operating_measures`, and each rate adds up matched
pairs and pairs over the runs; mean distances are pair-weighted. Detection adds up faces found.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from faceanonymixer.evaluation.operating import (
    OPERATING_FMR,
    detection,
    measure_entry,
    operating_measures,
    operating_threshold,
    text_table,
)
from faceanonymixer.utils.files import write_atomic_with

#: judge -> setting -> (n, d) rows
Embeddings = dict[str, dict[str, np.ndarray]]

#: the acceptance rows of :func:`format_runs`, one line per run
RUN_ROWS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("anonymity", ("anonymity", "combined")),
    ("same-key genuine", ("same_key_genuine_match",)),
    ("genuine A+B+S", ("any_key_genuine_match",)),
    ("own-key impostor", ("own_key_impostor_nonmatch",)),
    ("shared-key impostor", ("shared_key_impostor_nonmatch",)),
    ("cross-key", ("cross_key_nonmatch", "combined")),
)


class PoolError(ValueError):
    """Runs that cannot be pooled (no judge in common, a missing file, a threshold for no judge)."""


class Run(NamedTuple):
    name: str
    labels: list[str]
    embeddings: Embeddings


def save_embeddings(
    path: Path, labels: Sequence[str], embeddings: Mapping[str, Mapping[str, np.ndarray]]
) -> None:
    """Labels and every judge's embeddings per setting (NaN rows: no face) as one .npz (whole or
    not at all)."""
    # typed Any: numpy's stubs read ** into savez's allow_pickle
    arrays: dict[str, Any] = {
        f"{judge}/{setting}": array
        for judge, per_setting in embeddings.items()
        for setting, array in per_setting.items()
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic_with(path, lambda stream: np.savez(stream, labels=np.asarray(labels, dtype=str), **arrays))


def load_embeddings(path: Path) -> tuple[list[str], Embeddings]:
    """What :func:`save_embeddings` wrote."""
    embeddings: Embeddings = {}
    with np.load(path) as arrays:
        labels = [str(label) for label in arrays["labels"]]
        for name in arrays.files:
            if name != "labels":
                judge, setting = name.split("/", 1)
                embeddings.setdefault(judge, {})[setting] = arrays[name]
    return labels, embeddings


def load_runs(paths: Sequence[Path]) -> list[Run]:
    """The runs saved at ``paths``, each named by its file name (by its path where two share one)."""
    runs: list[Run] = []
    for path in paths:
        if not path.is_file():
            raise PoolError(f"no such embeddings file: {path}")
        labels, embeddings = load_embeddings(path)
        name = str(path) if any(run.name == path.stem for run in runs) else path.stem
        runs.append(Run(name, labels, embeddings))
    return runs


def common_judges(runs: Sequence[Run]) -> list[str]:
    names = [name for name in runs[0].embeddings if all(name in run.embeddings for run in runs)]
    if not names:
        raise PoolError("the runs have no judge in common")
    return names


def distinct_originals(runs: Sequence[Run], judge: str) -> tuple[list[str], np.ndarray]:
    """Every distinct unprotected photo of the runs (label, n-th photo of that label) once."""
    seen: dict[tuple[str, int], np.ndarray] = {}
    for run in runs:
        counts: dict[str, int] = {}
        for label, row in zip(run.labels, run.embeddings[judge]["original"], strict=True):
            place = counts.get(label, 0)
            counts[label] = place + 1
            seen.setdefault((label, place), row)
    return [label for label, _ in seen], np.array(list(seen.values()))


def pool_entries(entries: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Rate entries of several runs -> one: pairs and matched pairs added up, distances pair-weighted."""

    def weighted(key: str) -> float | None:
        scored = [e for e in entries if e[key] is not None and e["pairs"]]
        if not scored:
            return None
        return sum(e[key] * e["pairs"] for e in scored) / sum(e["pairs"] for e in scored)

    return {
        "rate": weighted("rate"),
        "kind": entries[0]["kind"],
        "pairs": sum(e["pairs"] for e in entries),
        "skipped": sum(e["skipped"] for e in entries),
        "mean_distance": weighted("mean_distance"),
    }


def pool_measures(per_run: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Operating measures of several runs -> one nested dict of the same shape."""
    pooled: dict[str, Any] = {}
    for name, value in per_run[0].items():
        parts = [measures[name] for measures in per_run if name in measures]
        pooled[name] = pool_entries(parts) if "rate" in value else pool_measures(parts)
    return pooled


def pool_detection(per_run: Sequence[Mapping[str, Mapping[str, Any]]]) -> dict[str, dict[str, Any]]:
    pooled: dict[str, dict[str, Any]] = {}
    for setting in per_run[0]:
        found = sum(d[setting]["found"] for d in per_run if setting in d)
        total = sum(d[setting]["total"] for d in per_run if setting in d)
        pooled[setting] = {"found": found, "total": total, "rate": found / total if total else None}
    return pooled


def pool_runs(
    runs: Sequence[Run], thresholds: Mapping[str, float], fmr: float = OPERATING_FMR
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, dict[str, Any]]]]:
    """(pooled report per judge, per judge and run the run's own measures at the pooled threshold)."""
    judges = common_judges(runs)
    unused = sorted(set(thresholds) - set(judges))
    if unused:
        raise PoolError(f"a threshold for a judge the runs do not share: {', '.join(unused)}")
    pooled: dict[str, dict[str, Any]] = {}
    by_run: dict[str, dict[str, dict[str, Any]]] = {}
    for judge in judges:
        labels, original = distinct_originals(runs, judge)
        chosen = operating_threshold(judge, labels, original, fmr=fmr, given=thresholds.get(judge))
        measures = {
            run.name: operating_measures(run.labels, run.embeddings[judge], chosen.threshold) for run in runs
        }
        pooled[judge] = {
            "threshold": chosen.threshold,
            "threshold_source": chosen.source,
            "detection": pool_detection([detection(run.embeddings[judge]) for run in runs]),
            "measures": pool_measures(list(measures.values())),
        }
        by_run[judge] = measures
    return pooled, by_run


def format_runs(by_run: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> str:
    """Per judge, one line per run with its acceptance rows (:data:`RUN_ROWS`)."""
    blocks = []
    for judge, runs in by_run.items():
        rows = [[f"{judge}: run", *(title for title, _ in RUN_ROWS)]]
        for name, measures in runs.items():
            entries = [measure_entry(measures, path) for _, path in RUN_ROWS]
            rows.append(
                [name, *("-" if e is None or e["rate"] is None else f"{e['rate']:.3f}" for e in entries)]
            )
        blocks.append(text_table(rows) + "\n")
    return "\n".join(blocks)
