"""A real ``faceanonymixer serve`` process for end-to-end tests, and what tests do with it.

Servers run with one optimisation step (and one inversion step): the whole protection path runs
(decode, align, invert, mix, optimise, decode, paste back, encode) in well under a second.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc

from faceanonymixer_client import connect, keys_pb2_grpc, protection_pb2_grpc

#: settings that keep end-to-end tests fast; the same code runs as with the defaults
FAST_OPTIMISATION = {"steps": 1, "inversion_steps": 1}
START_TIMEOUT = 180.0


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))  # a TOML basic string is a JSON string


def write_config(path: Path, settings: dict[str, Any]) -> Path:
    """A TOML config: scalars first, then one table per dict value (tokens, optimisation)."""
    lines = [
        f"{name} = {toml_value(value)}" for name, value in settings.items() if not isinstance(value, dict)
    ]
    for name, table in settings.items():
        if isinstance(table, dict):
            lines.append(f"\n[{name}]")
            lines.extend(f"{json.dumps(str(k))} = {toml_value(v)}" for k, v in table.items())
    path.write_text("\n".join(lines) + "\n")
    return path


class ServerProcess:
    """``faceanonymixer serve --config`` in a subprocess, its JSON log in a file."""

    def __init__(self, workdir: Path, kek_file: Path, settings: dict[str, Any]) -> None:
        self.workdir = workdir
        self.kek_file = kek_file
        kek_file.chmod(0o600)  # the server refuses a KEK file other users can read
        self.settings = {"listen": "127.0.0.1:0", "optimisation": FAST_OPTIMISATION, **settings}
        self.log_path = workdir / f"server-{time.monotonic_ns()}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.address = ""

    def start(self, *, wait: bool = True) -> ServerProcess:
        config = write_config(self.workdir / "server.toml", self.settings)
        env = {**os.environ, "FACEANONYMIXER_KEK_FILE": str(self.kek_file)}
        env.pop("FACEANONYMIXER_KEK", None)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "faceanonymixer.cli", "serve", "--config", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        if wait:
            self.wait_serving()
        return self

    def events(self) -> list[dict[str, Any]]:
        entries = []
        for line in self.log_path.read_text().splitlines():
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:
                entries.append({"event": "raw", "text": line})
        return entries

    def log_text(self) -> str:
        return self.log_path.read_text()

    def wait_serving(self, timeout: float = START_TIMEOUT) -> str:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            events = self.events()
            for entry in events:
                if entry.get("event") == "listening":
                    self.address = entry["address"]
            if any(entry.get("event") == "serving" for entry in events):
                return self.address
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log_text()}")
            time.sleep(0.1)
        raise TimeoutError(f"server not serving after {timeout} s:\n{self.log_text()}")

    def wait_exit(self, timeout: float = 60.0) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def stop(self) -> int:
        """SIGTERM (graceful shutdown) and the exit status."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        return self.wait_exit()

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def rss_mib(self) -> float:
        """Resident memory (VmRSS) of the running server now."""
        assert self.process is not None
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("VmRSS not found")

    def peak_rss_mib(self) -> float:
        """Peak resident memory (VmHWM) of the running server."""
        assert self.process is not None
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("VmHWM not found")

    @contextmanager
    def running(self) -> Iterator[ServerProcess]:
        self.start()
        try:
            yield self
        finally:
            if self.process is not None and self.process.poll() is None:
                self.process.kill()
                self.process.wait()


@contextmanager
def stubs(
    address: str, credentials: grpc.ChannelCredentials | None = None
) -> Iterator[tuple[protection_pb2_grpc.ProtectionServiceStub, keys_pb2_grpc.KeyServiceStub, grpc.Channel]]:
    with connect(address, credentials=credentials) as channel:
        yield (
            protection_pb2_grpc.ProtectionServiceStub(channel),
            keys_pb2_grpc.KeyServiceStub(channel),
            channel,
        )


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def error_reason(error: grpc.RpcError) -> str:
    """The ``ErrorInfo.reason`` of a failed call, as the SDK reads it."""
    from faceanonymixer_client.errors import error_from_rpc

    return error_from_rpc(error).reason


def health_status(channel: grpc.Channel, service: str = "") -> str:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    reply = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=5
    )
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
