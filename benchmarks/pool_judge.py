"""Pool several ``judge_protection.py`` runs into one set of rates, at one threshold per judge.

    python benchmarks/pool_judge.py RUN.npz [RUN.npz ...] [--threshold facenet=1.0311] \\
        [--fmr 0.01] [--out pooled.json]

Each RUN.npz is what ``judge_protection.py --embeddings-out`` wrote: one slice of people under one
key seed. On 10 people a single row of the protocol moves by up to 0.07 between runs of the same
setting, and FaceNet's threshold at FMR 1e-2 of 405 impostor pairs moves with the people; a
setting is decided on several slices and key seeds scored at one threshold.

Threshold per judge: ``--threshold NAME=VALUE`` when given, else the judge's own (dlib 0.6), else
``threshold_at_fmr`` at ``--fmr`` over the impostor pairs of every distinct unprotected photo of all
runs (a photo is its label and its place among that label's photos; runs of one slice under other
seeds hold the same photos and count once).

Pooling: every run is scored on its own (its pairs never cross into another run: other keys) and
each measure adds up matched pairs and pairs over the runs; mean distances are pair-weighted.
Detection adds up faces found (a NaN row, no face or no protected photo, counts as not found).
Printed: the pooled table (as ``judge_protection.py`` prints one run) and, per run, the
protocol's acceptance rows.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from judge_protection import (
    detection_entry,
    fmr_threshold,
    format_table,
    judge_measures,
    load_embeddings,
    parse_override,
)

from faceanonymixer.evaluation.judges import published_threshold
from faceanonymixer.utils.files import write_atomic

#: the acceptance rows printed per run
RUN_ROWS: list[tuple[str, tuple[str, ...]]] = [
    ("anonymity", ("anonymity", "combined")),
    ("same-key genuine", ("same_key_genuine_match",)),
    ("genuine A+B+S", ("any_key_genuine_match",)),
    ("own-key impostor", ("own_key_impostor_nonmatch",)),
    ("shared-key impostor", ("shared_key_impostor_nonmatch",)),
    ("cross-key", ("cross_key_nonmatch", "combined")),
]


class PoolError(ValueError):
    """Runs that cannot be pooled (no judge in common, a missing file, a threshold for no judge)."""


Run = tuple[str, list[str], dict[str, dict[str, np.ndarray]]]


def load_runs(paths: Sequence[Path]) -> list[Run]:
    runs: list[Run] = []
    for path in paths:
        if not path.is_file():
            raise PoolError(f"no such embeddings file: {path}")
        labels, embeddings = load_embeddings(path)
        # the file name names the run; the whole path where two runs share a name
        name = str(path) if any(run[0] == path.stem for run in runs) else path.stem
        runs.append((name, labels, embeddings))
    return runs


def common_judges(runs: Sequence[Run]) -> list[str]:
    names = [name for name in runs[0][2] if all(name in run[2] for run in runs)]
    if not names:
        raise PoolError("the runs have no judge in common")
    return names


def distinct_originals(runs: Sequence[Run], judge: str) -> tuple[list[str], np.ndarray]:
    """Every distinct unprotected photo of the runs (label, n-th photo of that label) once."""
    seen: dict[tuple[str, int], np.ndarray] = {}
    for _, labels, embeddings in runs:
        counts: dict[str, int] = {}
        for label, row in zip(labels, embeddings[judge]["original"], strict=True):
            place = counts.get(label, 0)
            counts[label] = place + 1
            seen.setdefault((label, place), row)
    keys = list(seen)
    return [label for label, _ in keys], np.array([seen[key] for key in keys])


def pool_entries(entries: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """rate_entry dicts of several runs -> one: pairs and matched pairs added up."""
    pairs = sum(e["pairs"] for e in entries)
    scored = [e for e in entries if e["rate"] is not None and e["pairs"]]
    rate = None
    if scored:
        rate = sum(e["rate"] * e["pairs"] for e in scored) / sum(e["pairs"] for e in scored)
    with_distance = [e for e in entries if e["mean_distance"] is not None and e["pairs"]]
    distance = None
    if with_distance:
        distance = sum(e["mean_distance"] * e["pairs"] for e in with_distance) / sum(
            e["pairs"] for e in with_distance
        )
    return {
        "rate": rate,
        "kind": entries[0]["kind"],
        "pairs": pairs,
        "skipped": sum(e["skipped"] for e in entries),
        "mean_distance": distance,
    }


def pool_measures(per_run: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """judge_measures of several runs -> one nested dict of the same shape."""
    pooled: dict[str, Any] = {}
    for name, value in per_run[0].items():
        parts = [measures[name] for measures in per_run if name in measures]
        pooled[name] = pool_entries(parts) if "rate" in value else pool_measures(parts)
    return pooled


def pool_detection(per_run: Sequence[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    pooled: dict[str, dict[str, Any]] = {}
    for setting in per_run[0]:
        found = sum(d[setting]["found"] for d in per_run if setting in d)
        total = sum(d[setting]["total"] for d in per_run if setting in d)
        pooled[setting] = {"found": found, "total": total, "rate": found / total if total else None}
    return pooled


def pool_runs(
    runs: Sequence[Run], thresholds: dict[str, float], fmr: float
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, dict[str, Any]]]]:
    """(pooled report per judge, per judge and run the run's own measures at the pooled threshold)."""
    pooled: dict[str, dict[str, Any]] = {}
    by_run: dict[str, dict[str, dict[str, Any]]] = {}
    judges = common_judges(runs)
    unused = sorted(set(thresholds) - set(judges))
    if unused:
        raise PoolError(f"a threshold for a judge the runs do not share: {', '.join(unused)}")
    for judge in judges:
        threshold = thresholds.get(judge, published_threshold(judge))
        source = "given" if judge in thresholds else "judge"
        if threshold is None:
            labels, original = distinct_originals(runs, judge)
            threshold, impostors = fmr_threshold(labels, original, fmr)
            source = f"fmr {fmr:g}, {impostors} impostor pairs"
        measures = {name: judge_measures(labels, emb[judge], threshold) for name, labels, emb in runs}
        detection = [
            {
                setting: detection_entry(array, np.ones(len(array), dtype=bool))
                for setting, array in emb[judge].items()
            }
            for _, _, emb in runs
        ]
        pooled[judge] = {
            "threshold": threshold,
            "threshold_source": source,
            "detection": pool_detection(detection),
            "measures": pool_measures(list(measures.values())),
        }
        by_run[judge] = measures
    return pooled, by_run


def _lookup(measures: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any] | None:
    entry: Any = measures
    for part in path:
        entry = entry.get(part) if isinstance(entry, dict) else None
    return entry if isinstance(entry, dict) else None


def format_runs(by_run: dict[str, dict[str, dict[str, Any]]]) -> str:
    lines = []
    for judge, runs in by_run.items():
        header = [f"{judge}: run", *(title for title, _ in RUN_ROWS)]
        rows = [header]
        for name, measures in runs.items():
            cells = []
            for _, path in RUN_ROWS:
                entry = _lookup(measures, path)
                cells.append("-" if entry is None or entry["rate"] is None else f"{entry['rate']:.3f}")
            rows.append([name, *cells])
        widths = [max(len(r[c]) for r in rows) for c in range(len(header))]
        lines.extend(
            "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows
        )
        lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", type=Path, help="judge_protection.py --embeddings-out files")
    parser.add_argument(
        "--threshold",
        action="append",
        type=parse_override,
        default=[],
        metavar="JUDGE=VALUE",
        help="a fixed threshold for one judge, e.g. facenet=1.0311 (repeatable)",
    )
    parser.add_argument("--fmr", type=float, default=1e-2, help="FMR for judges without a threshold")
    parser.add_argument("--out", type=Path, default=None, help="JSON report")
    args = parser.parse_args(argv)
    thresholds: dict[str, float] = {}
    for judge, value in args.threshold:
        if not isinstance(value, int | float) or isinstance(value, bool):
            parser.error(f"--threshold {judge}= needs a number, got {value!r}")
        thresholds[judge] = float(value)
    try:
        runs = load_runs(args.runs)
        pooled, by_run = pool_runs(runs, thresholds, args.fmr)
    except (PoolError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    photos = sum(len(labels) for _, labels, _ in runs)
    people = sum(len(set(labels)) for _, labels, _ in runs)
    print(f"{len(runs)} runs, {people} people and {photos} photos in all (a person counts once per run)\n")
    print(format_table(pooled))
    print()
    print(format_runs(by_run))
    if args.out:
        report = {"runs": [str(p) for p in args.runs], "judges": pooled, "per_run": by_run}
        write_atomic(args.out, (json.dumps(report, indent=2) + "\n").encode())
        print(f"report written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
