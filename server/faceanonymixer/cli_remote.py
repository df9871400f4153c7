"""Talking to a running server from the command line: connection options and gRPC errors as
one-line messages with the exit codes of ARCHITECTURE.md's error table."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import grpc
import typer
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from faceanonymixer_client import connect

ServerOption = Annotated[
    str | None, typer.Option("--server", help="HOST:PORT of a running server (default: work locally).")
]
TokenOption = Annotated[
    str | None,
    typer.Option(envvar="FACEANONYMIXER_TOKEN", show_envvar=True, help="Bearer token for --server."),
]
TlsCaOption = Annotated[Path | None, typer.Option(help="PEM CA bundle: talk TLS to --server.")]
TlsCertOption = Annotated[Path | None, typer.Option(help="PEM client certificate (mTLS).")]
TlsKeyOption = Annotated[Path | None, typer.Option(help="PEM client private key (mTLS).")]


@dataclass(frozen=True)
class Remote:
    address: str
    token: str | None = None
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None

    @contextmanager
    def channel(self) -> Iterator[grpc.Channel]:
        with connect(self.address, credentials=self._credentials()) as channel:
            yield channel

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()

    def _credentials(self) -> grpc.ChannelCredentials | None:
        if self.tls_ca is None and self.tls_cert is None:
            return None
        if (self.tls_cert is None) != (self.tls_key is None):
            raise typer.BadParameter("--tls-cert and --tls-key go together")
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.tls_ca),
            private_key=_read(self.tls_key),
            certificate_chain=_read(self.tls_cert),
        )


def _read(path: Path | None) -> bytes | None:
    return None if path is None else path.read_bytes()


#: (status code, ErrorInfo reason) -> exit code; a reason of None matches any reason
_EXIT_CODES: dict[tuple[grpc.StatusCode, str | None], int] = {
    (grpc.StatusCode.INVALID_ARGUMENT, None): 2,
    (grpc.StatusCode.FAILED_PRECONDITION, "NO_FACE"): 3,
    (grpc.StatusCode.FAILED_PRECONDITION, "MULTIPLE_FACES"): 3,
    (grpc.StatusCode.FAILED_PRECONDITION, "KEY_REVOKED"): 4,
    (grpc.StatusCode.NOT_FOUND, None): 4,
    (grpc.StatusCode.UNAUTHENTICATED, None): 5,
    (grpc.StatusCode.PERMISSION_DENIED, None): 5,
}


def status_reason(status: status_pb2.Status | None) -> str:
    """The ``ErrorInfo.reason`` of a ``google.rpc.Status``, or an empty string."""
    for detail in status.details if status is not None else ():
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info.reason
    return ""


def exit_code_for(code: grpc.StatusCode, reason: str) -> int:
    return _EXIT_CODES.get((code, reason), _EXIT_CODES.get((code, None), 1))


class RemoteItemError(Exception):
    """One photo of a ProtectFaces stream failed with ``status``."""

    def __init__(self, path: Path, status: status_pb2.Status) -> None:
        super().__init__(f"{path}: {status.message}")
        self.code = _STATUS_CODES.get(status.code, grpc.StatusCode.UNKNOWN)
        self.reason = status_reason(status)


_STATUS_CODES = {code.value[0]: code for code in grpc.StatusCode}


@contextmanager
def one_line_rpc_errors() -> Iterator[None]:
    """A failed call becomes ``error: <message> (<CODE>[, <reason>])`` and its exit code."""
    try:
        yield
    except grpc.RpcError as error:
        assert isinstance(error, grpc.Call)
        _fail(error.details() or "", error.code(), status_reason(rpc_status.from_call(error)))
    except RemoteItemError as error:
        _fail(str(error), error.code, error.reason)


def _fail(message: str, code: grpc.StatusCode, reason: str) -> None:
    label = code.name + (f", {reason}" if reason else "")
    typer.echo(f"error: {message} ({label})", err=True)
    raise typer.Exit(exit_code_for(code, reason)) from None
