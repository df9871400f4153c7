"""Talking to a running server from the command line: the connection options (declared once, as
:func:`remote_options`'s parameters). Its refusals become the SDK's typed errors, printed by
``cli.common.one_line_errors`` with the exit codes of docs/errors.md's table."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import grpc
import typer

from faceanonymixer_client import ProtectionClient, TlsConfig, connect
from faceanonymixer_client.options import bearer

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
        """A raw channel, for the key commands (whose output is the wire messages themselves)."""
        tls = self.tls()
        with connect(self.address, credentials=None if tls is None else tls.credentials()) as channel:
            yield channel

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return bearer(self.token)

    def client(self, timeout: float) -> ProtectionClient:
        return ProtectionClient(self.address, token=self.token, tls=self.tls(), timeout=timeout)

    def tls(self) -> TlsConfig | None:
        if self.tls_ca is None and self.tls_cert is None:
            return None
        try:
            return TlsConfig.from_files(self.tls_ca, self.tls_cert, self.tls_key)
        except ValueError:
            raise typer.BadParameter("--tls-cert and --tls-key go together") from None


def remote_options(
    server: ServerOption = None,
    token: TokenOption = None,
    tls_ca: TlsCaOption = None,
    tls_cert: TlsCertOption = None,
    tls_key: TlsKeyOption = None,
) -> Remote | None:
    """The options that name a server, for ``cli.common.options_from``: the server they
    name, or ``None`` (work locally) without ``--server``."""
    return None if server is None else Remote(server, token, tls_ca, tls_cert, tls_key)
