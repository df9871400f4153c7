"""``faceanonymixer health``: the grpc.health.v1 probe behind the container's HEALTHCHECK.

Against a health servicer run here (each answer, an unknown service, no health service, nothing
listening, a silent listener, TLS with a server name), then through the real console entry point
(one line, exit code, no torch imported) and against a real ``faceanonymixer serve`` (SERVING once
started, unreachable after SIGTERM).
"""

from __future__ import annotations

import datetime
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import typer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import HealthServicer
from service_harness import ServerProcess
from typer.testing import CliRunner

from faceanonymixer.cli.health import EXIT_NOT_SERVING, EXIT_SERVING, EXIT_UNREACHABLE, health, probe

Status = health_pb2.HealthCheckResponse
PROTECTION_SERVICE = "faceanonymixer.v1.ProtectionService"

# the command alone in an app of its own: the test does not depend on how cli/main.py registers it
probe_app = typer.Typer()
probe_app.command()(health)
runner = CliRunner()


@dataclass
class HealthServer:
    address: str
    servicer: HealthServicer

    def set(self, status: int, service: str = "") -> None:
        self.servicer.set(service, status)


@pytest.fixture
def health_server() -> Iterator[HealthServer]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield HealthServer(f"127.0.0.1:{port}", servicer)
    finally:
        server.stop(None)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_probe(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(probe_app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stdout, result.stderr


def one_line(text: str) -> str:
    lines = text.splitlines()
    assert len(lines) == 1, text
    return lines[0]


# ---- answers of a health servicer ------------------------------------------------------------


def test_serving_exits_0_with_one_line_on_stdout(health_server: HealthServer) -> None:
    health_server.set(Status.SERVING)
    code, out, err = run_probe("--server", health_server.address)
    assert code == EXIT_SERVING == 0
    assert one_line(out) == f"{health_server.address}: SERVING"
    assert err == ""


@pytest.mark.parametrize("status", [Status.NOT_SERVING, Status.UNKNOWN, Status.SERVICE_UNKNOWN])
def test_any_other_answer_exits_1(health_server: HealthServer, status: int) -> None:
    health_server.set(status)
    code, out, err = run_probe("--server", health_server.address)
    assert code == EXIT_NOT_SERVING == 1
    assert out == ""
    assert one_line(err) == f"error: {health_server.address}: {Status.ServingStatus.Name(status)}"


def test_service_flag_asks_about_that_service(health_server: HealthServer) -> None:
    health_server.set(Status.SERVING)
    health_server.set(Status.NOT_SERVING, PROTECTION_SERVICE)
    assert run_probe("--server", health_server.address)[0] == EXIT_SERVING
    code, _, err = run_probe("--server", health_server.address, "--service", PROTECTION_SERVICE)
    assert code == EXIT_NOT_SERVING
    assert PROTECTION_SERVICE in err and "NOT_SERVING" in err


def test_unknown_service_exits_1(health_server: HealthServer) -> None:
    health_server.set(Status.SERVING)
    code, _, err = run_probe("--server", health_server.address, "--service", "no.such.Service")
    assert code == EXIT_NOT_SERVING
    assert "NOT_FOUND" in one_line(err)


def test_server_without_health_service_exits_1() -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        report = probe(f"127.0.0.1:{port}", timeout=5)
    finally:
        server.stop(None)
    assert report.exit_code == EXIT_NOT_SERVING
    assert "UNIMPLEMENTED" in report.line


# ---- no answer --------------------------------------------------------------------------------


def test_nothing_listening_exits_6_at_once() -> None:
    address = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    code, out, err = run_probe("--server", address, "--timeout", "10")
    assert code == EXIT_UNREACHABLE == 6
    assert out == ""
    assert one_line(err).startswith(f"error: {address}: unreachable (UNAVAILABLE")
    assert time.monotonic() - started < 5  # refused, not waited out


def test_a_listener_that_never_answers_exits_6_after_the_timeout() -> None:
    with socket.socket() as silent:  # accepts TCP (the backlog), never speaks HTTP/2
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        code, _, err = run_probe("--server", address, "--timeout", "0.5")
        elapsed = time.monotonic() - started
    assert code == EXIT_UNREACHABLE
    assert "unreachable" in one_line(err)
    assert 0.4 < elapsed < 5


def test_timeout_must_be_positive() -> None:
    code, _, err = run_probe("--timeout", "0")
    assert code == 2  # click's usage error
    assert "--timeout" in err


# ---- TLS --------------------------------------------------------------------------------------


def _self_signed_ca() -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "health probe test CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _server_cert(
    ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, dns_name: str
) -> tuple[bytes, bytes]:
    """A certificate that names only ``dns_name``: not 127.0.0.1, which the probe dials."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_name)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(dns_name)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def test_tls_needs_the_ca_and_the_name_on_the_certificate(tmp_path: Path) -> None:
    ca, ca_key = _self_signed_ca()
    cert_pem, key_pem = _server_cert(ca, ca_key, "sidecar.faceanonymixer.test")
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = HealthServicer()
    servicer.set("", Status.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(key_pem, cert_pem)]))
    server.start()
    address = f"127.0.0.1:{port}"
    try:
        named = ["--server", address, "--tls-ca", str(ca_file)]
        assert run_probe(*named, "--tls-server-name", "sidecar.faceanonymixer.test")[0] == EXIT_SERVING
        # the certificate does not name 127.0.0.1; plaintext gets no answer from a TLS port
        assert run_probe(*named, "--timeout", "3")[0] == EXIT_UNREACHABLE
        assert run_probe("--server", address, "--timeout", "3")[0] == EXIT_UNREACHABLE
        # the same from the environment, as a container's HEALTHCHECK gets it
        from_env = runner.invoke(
            probe_app,
            ["--server", address],
            env={
                "FACEANONYMIXER_HEALTH_TLS_CA": str(ca_file),
                "FACEANONYMIXER_HEALTH_TLS_SERVER_NAME": "sidecar.faceanonymixer.test",
            },
        )
        assert from_env.exit_code == EXIT_SERVING, from_env.output
    finally:
        server.stop(None)


def test_a_client_key_without_its_certificate_is_a_usage_error(tmp_path: Path) -> None:
    key_file = tmp_path / "client.key"
    key_file.write_text("not read")
    code, _, err = run_probe("--tls-key", str(key_file))
    assert code == 2
    assert "--tls-cert and --tls-key go together" in err


# ---- the console entry point ------------------------------------------------------------------


def cli_probe(*args: str, importtime: bool = False) -> subprocess.CompletedProcess[str]:
    """``faceanonymixer health`` in its own process, as a HEALTHCHECK runs it."""
    python = [sys.executable, *(["-X", "importtime"] if importtime else [])]
    return subprocess.run(
        [*python, "-m", "faceanonymixer.cli", "health", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("FACEANONYMIXER_HEALTH_")},
    )


def imported_modules(importtime_stderr: str) -> set[str]:
    """Module names from ``-X importtime`` lines: ``import time: self | cumulative | name``."""
    return {
        line.rsplit("|", 1)[1].strip()
        for line in importtime_stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }


def test_console_probe_is_light_and_prints_one_line(health_server: HealthServer) -> None:
    health_server.set(Status.SERVING)
    result = cli_probe("--server", health_server.address, importtime=True)
    assert result.returncode == EXIT_SERVING, result.stderr[-2000:]
    assert one_line(result.stdout) == f"{health_server.address}: SERVING"
    modules = imported_modules(result.stderr)
    assert "grpc" in modules  # the parsing works
    heavy = {name for name in modules if name.split(".")[0] in {"torch", "dlib", "sqlalchemy", "skimage"}}
    assert not heavy, f"the probe imports {sorted(heavy)[:5]}"


def test_console_probe_of_nothing_exits_6() -> None:
    result = cli_probe("--server", f"127.0.0.1:{free_port()}")
    assert result.returncode == EXIT_UNREACHABLE
    assert result.stdout == ""
    assert one_line(result.stderr).startswith("error: ")


# ---- a real server ----------------------------------------------------------------------------


@pytest.mark.slow
def test_real_server_is_serving_once_started_and_unreachable_after_sigterm(
    weights: None, tmp_path: Path
) -> None:
    kek_file = tmp_path / "kek.bin"
    kek_file.write_bytes(os.urandom(32))
    settings = {
        "keystore": f"sqlite:///{tmp_path / 'keys.db'}",
        "workers": 1,
        "threads": 1,
        "shutdown_grace_seconds": 5,
    }
    server = ServerProcess(tmp_path, kek_file, settings).start(wait=False)
    try:
        address = server.wait_serving()
        # the log says "serving" right after health flips; the probe must agree at once
        result = cli_probe("--server", address)
        assert result.returncode == EXIT_SERVING, result.stderr
        assert one_line(result.stdout) == f"{address}: SERVING"
        assert probe(address, PROTECTION_SERVICE).exit_code == EXIT_SERVING
        assert server.stop() == 0
        assert probe(address, timeout=2).exit_code == EXIT_UNREACHABLE
    finally:
        if server.process is not None and server.process.poll() is None:
            server.kill()
