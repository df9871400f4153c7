"""``faceanonymixer export``: the profile's models as ONNX graphs for other runtimes."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from faceanonymixer.cli.common import emit, one_line_errors
from faceanonymixer.cli.tensorrt import tensorrt_command
from faceanonymixer.utils.errors import InvalidRequestError

export_app = typer.Typer(help="Export the models of a profile (ONNX, TensorRT).", no_args_is_help=True)


@export_app.command("onnx")
def onnx_command(
    profile: Annotated[str, typer.Option(help="Model profile whose models are exported.")] = "embedded",
    out: Annotated[
        Path | None,
        typer.Option(help="New or empty folder for the graphs and manifest.json (default: a new one here)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print manifest.json.")] = False,
) -> None:
    """Export the recognizer, encoder and generator (synthesis, mapping) with a dynamic batch axis.

    Tries the dynamo exporter first and the TorchScript one where it fails; every graph is run
    once by onnxruntime against PyTorch before it is kept. manifest.json (written last) lists
    each file's inputs, outputs, preprocessing, exporter and SHA-256.
    """
    with one_line_errors(as_json):
        from faceanonymixer.engine.profiles import PROFILES

        if profile not in PROFILES:
            raise InvalidRequestError(
                f"unknown profile {profile!r}; available: {', '.join(sorted(PROFILES))}", field="profile"
            )
        try:
            from faceanonymixer_export.onnx_export import export_profile
        except ModuleNotFoundError as error:
            typer.echo(
                f"error: {error}; install the ONNX tools: pip install 'faceanonymixer[export]'", err=True
            )
            raise typer.Exit(1) from None
        folder, manifest = export_profile(profile, out, progress=lambda line: typer.echo(line, err=True))

        def render() -> None:
            for entry in manifest.models:
                shapes = " -> ".join(str(specs[0].shape) for specs in (entry.inputs, entry.outputs))
                sys.stdout.write(f"{folder / entry.file}  {entry.exporter}  {shapes}\n")
            sys.stdout.write(f"{folder / 'manifest.json'}\n")

        emit(as_json, {"out": str(folder), **manifest.to_json()}, render)


# TensorRT engines from an ONNX export (NVIDIA GPUs; imports tensorrt only when run)
export_app.command("tensorrt")(tensorrt_command)
