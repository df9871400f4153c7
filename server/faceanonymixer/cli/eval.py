"""``faceanonymixer eval``: measure the protection on folder-per-identity sets (one photo each allowed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from faceanonymixer.cli.common import ThreadsOption, one_line_errors
from faceanonymixer.utils.errors import InvalidRequestError


def evaluate(
    datasets: Annotated[
        list[Path],
        typer.Argument(
            help="Folders of <identity>/<image> photos (one photo per folder allowed); each a set."
        ),
    ],
    out: Annotated[
        Path | None,
        typer.Option(help="New or empty folder for the report (default: a new one here)."),
    ] = None,
    max_identities: Annotated[
        int | None, typer.Option(min=2, help="Identities to use per set (sorted by name).")
    ] = None,
    max_images: Annotated[
        int | None, typer.Option(min=1, help="Photos per identity (sorted by name).")
    ] = None,
    per_cell: Annotated[
        int | None,
        typer.Option(min=1, help="At most this many identities per labelled group of a set (a seeded draw)."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the keys and of the attack's identity split.")] = 0,
    profile: Annotated[str, typer.Option(help="Model profile.")] = "embedded",
    judges: Annotated[str, typer.Option(help="Comma-separated judges: dlib, facenet.")] = "dlib,facenet",
    jobs: Annotated[int, typer.Option(min=1, help="Worker processes, each with its own engine.")] = 1,
    batch_size: Annotated[int, typer.Option(min=1, help="Photos per engine call.")] = 4,
    steps: Annotated[
        int | None, typer.Option(min=0, help="Optimisation steps (default: the profile's).")
    ] = None,
    baselines: Annotated[
        bool, typer.Option("--baselines/--no-baselines", help="Also measure the naive mix (no optimisation).")
    ] = True,
    threads: ThreadsOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print report.json instead of report.md.")] = False,
) -> None:
    """Protect every photo (own key, a second key, one shared key), judge with independent
    recognizers, measure realism and the attributes kept, per set and per group of people, and
    write report.json, report.md, plots and face grids into --out."""
    with one_line_errors(as_json):
        from faceanonymixer.evaluation.harness import EvalConfig
        from faceanonymixer.evaluation.judges import available_judges
        from faceanonymixer.evaluation.report import evaluate as run_evaluation
        from faceanonymixer.utils.files import prepare_out_dir

        for dataset in datasets:
            if not dataset.is_dir():
                raise NotADirectoryError(f"{dataset} is not a folder of <identity>/<image> photos")
        names = [dataset.name for dataset in datasets]
        if len(set(names)) != len(names):
            raise InvalidRequestError(
                f"two sets share a folder name ({', '.join(names)}): sets are named by their folder",
                field="dataset",
            )
        chosen = tuple(name.strip() for name in judges.split(",") if name.strip())
        unknown = sorted(set(chosen) - set(available_judges()))
        if unknown or not chosen:
            known = ", ".join(available_judges())
            raise InvalidRequestError(
                f"unknown judge(s) {', '.join(unknown)}; available: {known}", field="judges"
            )
        config = EvalConfig(
            datasets=tuple(datasets),
            max_identities=max_identities,
            max_images=max_images,
            per_cell=per_cell,
            seed=seed,
            profile=profile,
            judges=chosen,
            jobs=jobs,
            batch_size=batch_size,
            optimisation={} if steps is None else {"steps": steps},
            baselines=baselines,
            threads=threads,
        )
        target = prepare_out_dir(out, default_prefix="faceanonymixer-eval")
        try:
            report = run_evaluation(
                config, target, say=lambda line: typer.echo(line, err=True), progress=True
            )
        except ValueError as error:  # an unknown profile, too few usable identities
            raise InvalidRequestError(str(error), field="dataset") from None
        if as_json:
            typer.echo(json.dumps(report, indent=2))
        else:
            typer.echo((target / "report.md").read_text())
            typer.echo(f"report written to {target}", err=True)
