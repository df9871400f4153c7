"""Time one protection run and score it by the judge protocol at each judge's operating threshold.

    python benchmarks/judge_protection.py SET_DIR [SET_DIR ...] [--max-identities N] \\
        [--skip-identities N] [--max-images M] [--min-images 2] [--steps 50] [--override NAME=VALUE] \\
        [--profile embedded] [--judges dlib,facenet] [--seed 0] [--batch-size 1] [--jobs 1] \\
        [--threads N] [--out report.json] [--embeddings-out run.npz]

The protocol is the package's, that of ``faceanonymixer eval``: the photos are listed and
protected by :mod:`faceanonymixer.evaluation.harness` (per set, in sorted order; keys A and B per
identity and one key S shared by everyone, from ``--seed``) and judged by its
``judge_embeddings``; the rates at each judge's operating threshold (its own, dlib 0.6, else the
one at ``--fmr`` of the unprotected impostor pairs) are
:mod:`faceanonymixer.evaluation.operating`'s, and ``pool_judge.py`` pools several
``--embeddings-out`` files (:mod:`faceanonymixer.evaluation.pooling`).

What this script is for, beside ``faceanonymixer eval`` (which adds the FMR-threshold and
unlinkability measures, realism, attributes, groups and plots): a tuning run that only judges
(minutes), with any optimisation setting changed (``--override``), its seconds per photo
(``--batch-size 1``, the default: each photo in its own engine call, the independent probe), and
the embeddings kept to re-score at another threshold.
"""

from __future__ import annotations

import argparse
import ast
import json
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from faceanonymixer.evaluation.harness import (
    KEYS,
    EvalConfig,
    ProtectionRun,
    judge_embeddings,
    list_photos,
    run_protection,
)
from faceanonymixer.evaluation.judges import load_judges
from faceanonymixer.evaluation.metrics import score_summary
from faceanonymixer.evaluation.operating import OPERATING_FMR, format_table, operating_report
from faceanonymixer.evaluation.pooling import save_embeddings
from faceanonymixer.utils.files import write_atomic


def parse_override(text: str) -> tuple[str, Any]:
    """NAME=VALUE, the value read as a Python literal where it is one (else kept as text)."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        parsed = value
    return name.strip(), parsed


def add_selection_arguments(
    parser: argparse.ArgumentParser, *, max_identities: int | None = None, max_images: int | None = None
) -> None:
    """The data options of the harness's listing: scripts given the same ones select the same
    people with the same labels (and so, in this protocol, the same keys)."""
    parser.add_argument("sets", nargs="+", type=Path, metavar="SET_DIR", help="<identity>/<image> folders")
    parser.add_argument("--max-identities", type=int, default=max_identities, help="identities per set")
    parser.add_argument("--skip-identities", type=int, default=0, help="pass over the first N of each set")
    parser.add_argument("--max-images", type=int, default=max_images, help="photos per identity (by name)")
    parser.add_argument("--min-images", type=int, default=2, help="skip identities with fewer photos")
    parser.add_argument("--per-cell", type=int, help="identities per labelled group (race x gender)")


def selection_config(args: argparse.Namespace, **settings: Any) -> EvalConfig:
    """The :class:`EvalConfig` of the options of :func:`add_selection_arguments` (and ``settings``);
    exits with status 1 and a one-line message when no photo qualifies."""
    config = EvalConfig(
        datasets=tuple(args.sets),
        max_identities=args.max_identities,
        skip_identities=args.skip_identities,
        max_images=args.max_images,
        min_images=args.min_images,
        per_cell=args.per_cell,
        **settings,
    )
    if not list_photos(config):
        raise SystemExit("no identity has enough photos")
    return config


def timing(run: ProtectionRun) -> dict[str, Any]:
    """Seconds per photo (its share of its engine call: decode, align, invert, optimise, encode)."""
    seconds = {
        key: np.array([photo.seconds[key] for photo in run.photos if key in photo.seconds]) for key in KEYS
    }
    return {
        "seconds_per_photo": score_summary(np.concatenate(list(seconds.values()))),
        "seconds_per_photo_by_key": {key: score_summary(values) for key, values in seconds.items()},
        "protection_wall_seconds": run.seconds,
        "torch_threads_per_job": run.threads_per_job,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_selection_arguments(parser)
    parser.add_argument(
        "--steps", type=int, default=None, help="optimisation steps (profile default if unset)"
    )
    parser.add_argument(
        "--override",
        action="append",
        type=parse_override,
        default=[],
        metavar="NAME=VALUE",
        help="other optimisation settings, e.g. --override lambda_anon=10 (repeatable)",
    )
    parser.add_argument("--profile", default="embedded")
    parser.add_argument("--judges", default="dlib,facenet", help="comma-separated judge names")
    parser.add_argument("--fmr", type=float, default=OPERATING_FMR, help="FMR for judges without a threshold")
    parser.add_argument("--seed", type=int, default=0, help="derives every key")
    parser.add_argument("--batch-size", type=int, default=1, help="photos per engine call")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per job (0: per batch)")
    parser.add_argument("--out", type=Path, default=None, help="JSON report")
    parser.add_argument(
        "--embeddings-out", type=Path, default=None, help="every judge embedding and the labels (.npz)"
    )
    args = parser.parse_args(argv)

    started = time.perf_counter()
    overrides: dict[str, Any] = dict(args.override)
    if args.steps is not None:
        overrides["steps"] = args.steps
    judge_names = tuple(name.strip() for name in args.judges.split(",") if name.strip())
    judges = load_judges(judge_names)
    config = selection_config(
        args,
        seed=args.seed,
        profile=args.profile,
        judges=judge_names,
        jobs=args.jobs,
        batch_size=args.batch_size,
        optimisation=overrides,
        baselines=False,
        threads=args.threads,
    )
    with tqdm(total=len(list_photos(config)), desc="protect", unit="photo") as bar:
        run = run_protection(config, progress=bar.update)
    embeddings = {}
    for judge in judges:
        with tqdm(total=len(run.photos) * (1 + len(run.settings)), desc=judge.name, unit="photo") as bar:
            embeddings[judge.name] = judge_embeddings(run, judge, progress=bar.update)
    scored = operating_report(run.labels, embeddings, fmr=args.fmr)

    report: dict[str, Any] = {
        "command": shlex.join(["python", sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "protocol": {
            "sets": [str(s) for s in args.sets],
            "max_identities": args.max_identities,
            "skip_identities": args.skip_identities,
            "max_images": args.max_images,
            "min_images": args.min_images,
            "profile": args.profile,
            "overrides": overrides,
            "seed": args.seed,
            "judges": list(judge_names),
            "fmr": args.fmr,
            "batch_size": args.batch_size,
            "jobs": args.jobs,
        },
        "data": {
            "identities": len(set(run.labels)),
            "photos": len(run.photos),
            "failures": len(run.failures),
            "failure_list": [failure.as_dict() for failure in run.failures],
        },
        "engine": timing(run),
        "judges": scored,
        "seconds": time.perf_counter() - started,
    }
    data, per_photo = report["data"], report["engine"]["seconds_per_photo"]
    print(
        f"\n{data['identities']} identities, {data['photos']} photos ({data['failures']} failures), "
        f"profile {args.profile}, overrides {overrides}, seed {args.seed}"
    )
    if per_photo["n"]:
        print(f"seconds per photo: p50 {per_photo['p50']:.2f}  p95 {per_photo['p95']:.2f} ({per_photo['n']})")
    print(f"\n{format_table(scored)}\n\n{report['seconds']:.1f} s in all")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(args.out, (json.dumps(report, indent=2) + "\n").encode())
        print(f"report written to {args.out}")
    if args.embeddings_out:
        save_embeddings(args.embeddings_out, run.labels, embeddings)
        print(f"embeddings written to {args.embeddings_out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
