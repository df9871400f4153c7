"""Helpers shared by the command-line modules."""

from __future__ import annotations

import functools
import inspect
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any, TypeVar

import grpc
import typer

from faceanonymixer_client.errors import FaceAnonyMixerError, error_from_rpc, error_row

#: exit code of a path that is missing or not a folder (a bad argument)
_BAD_PATH_EXIT = 2

_Result = TypeVar("_Result")


@contextmanager
def one_line_errors(as_json: bool = False) -> Iterator[None]:
    """Typed errors (the engine's, and a server's refusals) end the command with the exit code of
    docs/errors.md's table and one line on stderr naming the input they are about; with
    ``as_json``, ``{"error": {"code", "reason", "message", "input"}}`` on stdout instead."""
    try:
        yield
    except FaceAnonyMixerError as exc:
        _fail(exc, as_json)
    except grpc.RpcError as exc:  # a raw stub's call (the key commands)
        _fail(error_from_rpc(exc), as_json)
    except (NotADirectoryError, FileNotFoundError) as exc:
        where = None if exc.filename is None else str(exc.filename)
        message = exc.strerror if where is not None and exc.strerror else str(exc)
        _report(as_json, _BAD_PATH_EXIT, "INVALID_ARGUMENT", "INVALID_ARGUMENT", message, where)


def _fail(error: FaceAnonyMixerError, as_json: bool) -> None:
    row = error_row(error)
    code = error.code.name if error.code is not None else (row.code.name if row else "UNKNOWN")
    reason = error.reason or (row.reasons[0].value if row else "")
    # the text line keeps the SDK's "(CODE, REASON)" suffix; JSON has them as fields
    _report(as_json, error.exit_code, code, reason, error.message, error.input, text=str(error))


def _report(
    as_json: bool,
    exit_code: int,
    code: str,
    reason: str,
    message: str,
    where: str | None,
    *,
    text: str | None = None,
) -> None:
    if as_json:
        payload = {"error": {"code": code, "reason": reason, "message": message, "input": where}}
        typer.echo(json.dumps(payload, indent=2))
    else:
        line = text or message
        typer.echo(f"error: {where}: {line}" if where else f"error: {line}", err=True)
    raise typer.Exit(exit_code) from None


def show_progress(as_json: bool) -> bool:
    """Progress goes to a terminal only: never into a pipe, a log, or beside ``--json``."""
    return not as_json and sys.stderr.isatty()


def emit(as_json: bool, payload: dict[str, Any], render: Callable[[], None]) -> None:
    if as_json:
        typer.echo(json.dumps(payload, indent=2, default=str))
    else:
        render()


#: ``--threads`` of every command that runs torch (faceanonymixer.utils.threads)
ThreadsOption = Annotated[
    int | None,
    typer.Option(
        "--threads",
        min=0,
        help="torch CPU threads; 0 chooses per call (every idle core, one while other work runs). "
        "Default: FACEANONYMIXER_THREADS, else 0.",
    ),
]


SettingOption = Annotated[
    list[str] | None,
    typer.Option(
        "--setting",
        help="An optimisation setting in place of the profile's, NAME=VALUE with a JSON value "
        "(e.g. start_axes=0, attribute_targets=true, milestones=[0.5]); repeatable.",
    ),
]


def parsed_settings(items: list[str] | None) -> dict[str, Any]:
    """``--setting`` values as optimisation overrides (``True``/``False`` read as JSON's
    ``true``/``false``, a list as the tuple the settings hold); ValueError naming the one that is
    not NAME=VALUE with a JSON value."""
    settings: dict[str, Any] = {}
    for item in items or ():
        name, equals, value = (part.strip() for part in item.partition("="))
        try:
            if not equals or not name:
                raise ValueError
            parsed = json.loads({"True": "true", "False": "false"}.get(value, value))
        except ValueError:
            raise ValueError(f"--setting {item!r}: expected NAME=VALUE with a JSON value") from None
        settings[name] = tuple(parsed) if isinstance(parsed, list) else parsed
    return settings


def options_from(
    builder: Callable[..., Any], name: str
) -> Callable[[Callable[..., _Result]], Callable[..., _Result]]:
    """Options declared once, as the parameters of ``builder``, for every command that wants them.

    The decorated command lists ``builder``'s parameters (names, annotations, defaults) where its
    own parameter ``name`` stands, so usage, help and the order of options are as if written out
    in it, and they follow the command's name on the command line (a group callback's would come
    before it); the command is called with ``name=builder(**those options)``. A builder may itself
    be decorated, to nest one set of options in another.
    """
    gathered = inspect.signature(builder, eval_str=True).parameters

    def decorate(command: Callable[..., _Result]) -> Callable[..., _Result]:
        signature = inspect.signature(command, eval_str=True)
        stands = signature.parameters[name]
        parameters: list[inspect.Parameter] = []
        for parameter in signature.parameters.values():
            if parameter.name == name:
                parameters.extend(option.replace(kind=stands.kind) for option in gathered.values())
            else:
                parameters.append(parameter)

        @functools.wraps(command)
        def with_options(**options: Any) -> _Result:
            built = builder(**{option: options.pop(option) for option in gathered})
            return command(**options, **{name: built})

        # typer reads the parameters from the signature and resolves them with the annotations
        with_options.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
        with_options.__annotations__ = {
            **{parameter.name: parameter.annotation for parameter in parameters},
            "return": signature.return_annotation,
        }
        return with_options

    return decorate
