"""``faceanonymixer health``: a grpc.health.v1 probe for a container's HEALTHCHECK, a Kubernetes exec
probe or a script.

It runs every few seconds inside the serving container, so it imports only grpc, the health stubs
and the SDK's connection helpers (never torch), makes one ``Check`` call and prints one line.

Exit codes (documented in ``faceanonymixer health --help``):

- 0 (:data:`EXIT_SERVING`): the server answered SERVING;
- 1 (:data:`EXIT_NOT_SERVING`): it answered, but not SERVING: NOT_SERVING while the models load and
  from SIGTERM on, UNKNOWN, SERVICE_UNKNOWN, an unknown ``--service``, no health service;
- 6 (:data:`EXIT_UNREACHABLE`): no answer: nothing listening, a TLS mismatch, ``--timeout`` passed.
  6 is the error table's code for an unreachable server; Docker reserves 2 for itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import grpc
import typer
from grpc_health.v1 import health_pb2, health_pb2_grpc

from faceanonymixer.cli.common import one_line_errors
from faceanonymixer_client.options import TlsConfig, connect

EXIT_SERVING = 0
EXIT_NOT_SERVING = 1
EXIT_UNREACHABLE = 6

#: status codes that mean the server never answered the health question
_NO_ANSWER = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


@dataclass(frozen=True)
class HealthReport:
    """What one probe found: the exit code and the line to print."""

    exit_code: int
    line: str

    @property
    def serving(self) -> bool:
        return self.exit_code == EXIT_SERVING


def probe(
    address: str,
    service: str = "",
    *,
    timeout: float = 5.0,
    tls: TlsConfig | None = None,
    tls_server_name: str | None = None,
) -> HealthReport:
    """One ``grpc.health.v1.Health/Check`` of ``service`` ('' = the whole server) at ``address``."""
    what = f"{address} {service}" if service else address
    # a container probes 127.0.0.1, which the server's certificate rarely names
    options = [("grpc.ssl_target_name_override", tls_server_name)] if tls_server_name else None
    credentials = None if tls is None else tls.credentials()
    try:
        with connect(address, credentials=credentials, options=options) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
    except grpc.RpcError as error:
        code: grpc.StatusCode = error.code()
        details = " ".join((error.details() or "").split())  # one line, whatever gRPC says
        if code in _NO_ANSWER:
            return HealthReport(EXIT_UNREACHABLE, f"{what}: unreachable ({code.name}: {details})")
        return HealthReport(EXIT_NOT_SERVING, f"{what}: no health answer ({code.name}: {details})")
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    if reply.status == health_pb2.HealthCheckResponse.SERVING:
        return HealthReport(EXIT_SERVING, f"{what}: {status}")
    return HealthReport(EXIT_NOT_SERVING, f"{what}: {status}")


def health(
    server: Annotated[
        str, typer.Option("--server", help="HOST:PORT of the server to ask.")
    ] = "127.0.0.1:50051",
    service: Annotated[
        str,
        typer.Option(
            help="Service to ask about: '' (the whole server), faceanonymixer.v1.ProtectionService "
            "or faceanonymixer.v1.KeyService."
        ),
    ] = "",
    timeout: Annotated[float, typer.Option(min=0.1, help="Seconds to wait for the answer.")] = 5.0,
    tls_ca: Annotated[
        Path | None,
        typer.Option(
            envvar="FACEANONYMIXER_HEALTH_TLS_CA", show_envvar=True, help="PEM CA bundle: talk TLS."
        ),
    ] = None,
    tls_cert: Annotated[
        Path | None,
        typer.Option(
            envvar="FACEANONYMIXER_HEALTH_TLS_CERT", show_envvar=True, help="PEM client certificate (mTLS)."
        ),
    ] = None,
    tls_key: Annotated[
        Path | None,
        typer.Option(
            envvar="FACEANONYMIXER_HEALTH_TLS_KEY", show_envvar=True, help="PEM client private key (mTLS)."
        ),
    ] = None,
    tls_server_name: Annotated[
        str | None,
        typer.Option(
            envvar="FACEANONYMIXER_HEALTH_TLS_SERVER_NAME",
            show_envvar=True,
            help="Name the server's certificate must carry (default: the host of --server).",
        ),
    ] = None,
) -> None:
    """Ask a server whether it is SERVING (grpc.health.v1), print one line, and exit 0 if it is.

    Exit 1: it answered, but NOT_SERVING (models still loading, or shutting down), UNKNOWN or
    SERVICE_UNKNOWN. Exit 6: no answer (nothing listening, TLS mismatch, timeout). For a
    container's HEALTHCHECK: light (no torch), one call, no retries. The health service needs
    no token; TLS options also come from FACEANONYMIXER_HEALTH_TLS_* variables.
    """
    with one_line_errors():
        tls = None
        if tls_ca is not None or tls_cert is not None or tls_key is not None:
            try:
                tls = TlsConfig.from_files(tls_ca, tls_cert, tls_key)
            except ValueError:
                raise typer.BadParameter("--tls-cert and --tls-key go together") from None
        report = probe(server, service, timeout=timeout, tls=tls, tls_server_name=tls_server_name)
    if report.serving:
        typer.echo(report.line)
    else:
        typer.echo(f"error: {report.line}", err=True)
    raise typer.Exit(report.exit_code)
