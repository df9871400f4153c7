"""Helpers shared by the command-line modules."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import typer

from faceanonymixer.errors import FaceAnonyMixerError


@contextmanager
def one_line_errors() -> Iterator[None]:
    """Typed errors become one line on stderr and the exit code of ARCHITECTURE.md's table."""
    try:
        yield
    except FaceAnonyMixerError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None
    except (NotADirectoryError, FileNotFoundError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def emit(as_json: bool, payload: dict[str, Any], render: Callable[[], None]) -> None:
    if as_json:
        typer.echo(json.dumps(payload, indent=2, default=str))
    else:
        render()
