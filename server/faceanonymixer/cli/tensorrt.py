"""``faceanonymixer export tensorrt``: the typer command (registered by the CLI's export group).

Importing this module is cheap (typer only); torch and tensorrt load when the command runs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from faceanonymixer.cli.common import emit, one_line_errors
from faceanonymixer_export.tensorrt_common import Precision

CACHE_ENV = "FACEANONYMIXER_TENSORRT_CACHE"


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/faceanonymixer/tensorrt`` (``~/.cache/...``): engines are machine-specific."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "faceanonymixer" / "tensorrt"


def tensorrt_command(
    onnx_dir: Annotated[
        Path,
        typer.Argument(help="Folder of the exported ONNX models (with manifest.json).", show_default=False),
    ],
    cache_dir: Annotated[
        Path | None,
        typer.Option(
            "--cache-dir",
            envvar=CACHE_ENV,
            help="Engine cache; engines are keyed by GPU, TensorRT version, ONNX SHA-256, precision and "
            "batch sizes (default: $XDG_CACHE_HOME/faceanonymixer/tensorrt, else ~/.cache/…).",
            show_default=False,
        ),
    ] = None,
    min_batch: Annotated[
        int, typer.Option("--min-batch", min=1, help="Smallest batch the engine accepts.")
    ] = 1,
    opt_batch: Annotated[int, typer.Option("--opt-batch", min=1, help="Batch size TensorRT tunes for.")] = 4,
    max_batch: Annotated[
        int, typer.Option("--max-batch", min=1, help="Largest batch the engine accepts.")
    ] = 16,
    precision: Annotated[
        Precision,
        typer.Option(
            case_sensitive=False,
            help="auto: fp16 where this TensorRT has the FP16 flag; bf16 falls back to fp16, then fp32.",
        ),
    ] = Precision.AUTO,
    models: Annotated[
        list[str] | None, typer.Option("--model", help="Build only this model (repeatable; default: all).")
    ] = None,
    rebuild: Annotated[
        bool, typer.Option("--rebuild", help="Build even where the cache has the engine.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the engines as JSON.")] = False,
) -> None:
    """Build TensorRT engines from the exported ONNX models (needs TensorRT 10+ and an NVIDIA GPU)."""
    with one_line_errors(as_json):
        # imported here: the builder pulls in torch, and the CLI starts without it
        from faceanonymixer_export.tensorrt_build import BatchRange, build_engines

        records = build_engines(
            onnx_dir,
            cache_dir or default_cache_dir(),
            batch=BatchRange(min_batch, opt_batch, max_batch),
            precision=precision,
            models=models,
            rebuild=rebuild,
            notify=lambda message: typer.echo(message, err=True),
        )

        def render() -> None:
            for record in records:
                how = "cached" if record.cached else f"built in {record.seconds:.1f} s"
                typer.echo(f"{record.model}  {record.precision}  {record.engine}  ({how})")

        emit(as_json, {"engines": [record.as_dict() for record in records]}, render)
