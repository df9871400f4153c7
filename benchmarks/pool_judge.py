"""Pool several ``judge_protection.py`` runs into one set of rates, at one threshold per judge.

    python benchmarks/pool_judge.py RUN.npz [RUN.npz ...] [--threshold facenet=1.0311] \\
        [--fmr 0.01] [--out pooled.json]

Each RUN.npz is what ``judge_protection.py --embeddings-out`` wrote: one slice of people under one
key seed. The threshold per judge and the pooling are :mod:`faceanonymixer.evaluation.pooling`'s:
``--threshold NAME=VALUE`` when given, else the judge's own (dlib 0.6), else the one at ``--fmr``
over every distinct unprotected photo of all runs; every run is scored on its own and the pairs
are added up. Printed: the pooled table (as ``judge_protection.py`` prints one run) and, per run,
the protocol's acceptance rows.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from faceanonymixer.evaluation.operating import OPERATING_FMR, format_table
from faceanonymixer.evaluation.pooling import PoolError, format_runs, load_runs, pool_runs
from faceanonymixer.utils.files import write_atomic


def parse_threshold(text: str) -> tuple[str, float]:
    """JUDGE=VALUE with a number for VALUE."""
    name, _, value = text.partition("=")
    try:
        number = float(value)
    except ValueError:
        number = None
    if not name.strip() or number is None:
        raise argparse.ArgumentTypeError(f"expected JUDGE=NUMBER, got {text!r}")
    return name.strip(), number


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", type=Path, help="judge_protection.py --embeddings-out files")
    parser.add_argument(
        "--threshold",
        action="append",
        type=parse_threshold,
        default=[],
        metavar="JUDGE=VALUE",
        help="a fixed threshold for one judge, e.g. facenet=1.0311 (repeatable)",
    )
    parser.add_argument("--fmr", type=float, default=OPERATING_FMR, help="FMR for judges without a threshold")
    parser.add_argument("--out", type=Path, default=None, help="JSON report")
    args = parser.parse_args(argv)
    thresholds = dict(args.threshold)
    try:
        runs = load_runs(args.runs)
        pooled, by_run = pool_runs(runs, thresholds, args.fmr)
    except (PoolError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    photos = sum(len(run.labels) for run in runs)
    people = sum(len(set(run.labels)) for run in runs)
    print(f"{len(runs)} runs, {people} people and {photos} photos in all (a person counts once per run)\n")
    print(f"{format_table(pooled)}\n\n{format_runs(by_run)}")
    if args.out:
        report = {"runs": [str(p) for p in args.runs], "judges": pooled, "per_run": by_run}
        write_atomic(args.out, (json.dumps(report, indent=2) + "\n").encode())
        print(f"report written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
