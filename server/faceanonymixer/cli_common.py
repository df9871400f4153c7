"""Helpers shared by the command-line modules."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import grpc
import typer

from faceanonymixer_client.errors import FaceAnonyMixerError, error_from_rpc


@contextmanager
def one_line_errors() -> Iterator[None]:
    """Typed errors (the engine's, and a server's refusals) become one line on stderr and the exit
    code of ARCHITECTURE.md's table."""
    try:
        yield
    except FaceAnonyMixerError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None
    except grpc.RpcError as exc:  # a raw stub's call (the key commands)
        error = error_from_rpc(exc)
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(error.exit_code) from None
    except (NotADirectoryError, FileNotFoundError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def emit(as_json: bool, payload: dict[str, Any], render: Callable[[], None]) -> None:
    if as_json:
        typer.echo(json.dumps(payload, indent=2, default=str))
    else:
        render()


#: ``--threads`` of every command that runs torch (faceanonymixer.threads)
ThreadsOption = Annotated[
    int | None,
    typer.Option(
        "--threads",
        min=0,
        help="torch CPU threads; 0 chooses per call (every idle core, one while other work runs). "
        "Default: FACEANONYMIXER_THREADS, else 0.",
    ),
]
