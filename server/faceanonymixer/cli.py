"""The ``faceanonymixer`` command line."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from faceanonymixer._version import __version__
from faceanonymixer.errors import FaceAnonyMixerError

app = typer.Typer(
    name="faceanonymixer",
    help="Cancelable face biometrics: protected faces under revocable keys.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"faceanonymixer {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """FaceAnonyMixer command line."""


@contextmanager
def _one_line_errors() -> Iterator[None]:
    """Typed errors become one line on stderr and the exit code of ARCHITECTURE.md's table."""
    try:
        yield
    except FaceAnonyMixerError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None
    except (NotADirectoryError, FileNotFoundError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def default_demo_folder() -> Path | None:
    """FACEANONYMIXER_FACES, else the workplace's shared example faces, if present."""
    env = os.environ.get("FACEANONYMIXER_FACES")
    candidates = [Path(env) / "fr_examples", Path(env)] if env else []
    candidates.append(Path.cwd().parent / "shared" / "faces" / "fr_examples")
    return next((c for c in candidates if c.is_dir()), None)


def _emit(as_json: bool, payload: dict[str, Any], render: Callable[[], None]) -> None:
    if as_json:
        typer.echo(json.dumps(payload, indent=2))
    else:
        render()


@app.command()
def demo(
    folder: Annotated[
        Path | None,
        typer.Argument(help="Folder of <identity>/<image> photos (default: the shared example faces)."),
    ] = None,
    max_identities: Annotated[int, typer.Option(min=1, help="Identities to use.")] = 5,
    max_images: Annotated[int, typer.Option(min=1, help="Photos per identity.")] = 4,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Align faces and compare them with dlib's face descriptor running in PyTorch."""
    with _one_line_errors():
        folder = folder or default_demo_folder()
        if folder is None:
            raise NotADirectoryError("no example faces found: pass a folder of <identity>/<image> photos")
        from faceanonymixer.demo import run_alignment_demo

        result = run_alignment_demo(folder, max_identities=max_identities, max_images=max_images)
        _emit(as_json, result.to_json(), lambda: result.render(sys.stdout))


if __name__ == "__main__":  # pragma: no cover
    app()
