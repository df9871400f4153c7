"""The engine worker pool, the settings and the start-up health, in-process and without models:
the pool only hands its engine to the work, so a stand-in object is enough here (the real engine
runs in the end-to-end tests)."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from faceanonymixer.errors import ProtectionCancelledError
from faceanonymixer.keystore import KeyEncryptionKey, KeyStore
from faceanonymixer.service import server as server_module
from faceanonymixer.service.settings import ServiceSettings, SettingsError
from faceanonymixer.service.status import Reason, ServiceError
from faceanonymixer.service.workers import DeadlineExceededError, EnginePool


def reason_of(error: ServiceError) -> str:
    for detail in error.status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info.reason
    return ""


def retry_delay(error: ServiceError) -> float:
    for detail in error.status.details:
        info = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            return info.retry_delay.ToTimedelta().total_seconds()
    raise AssertionError("no RetryInfo")


def started_pool(
    workers: int = 1, queue_size: int = 1, factory: Callable[[], Any] | None = None
) -> EnginePool:
    pool = EnginePool(factory or (lambda: object()), workers=workers, queue_size=queue_size, threads=1)
    pool.start()
    return pool


def blocking_work(release: threading.Event, started: threading.Event | None = None) -> Callable[..., str]:
    def work(engine: Any, should_stop: Callable[[], bool]) -> str:
        if started is not None:
            started.set()
        assert release.wait(10)
        return "done"

    return work


def test_runs_work_off_the_event_loop_and_reports_queue_time() -> None:
    async def scenario() -> None:
        pool = started_pool()
        await pool.wait_ready()
        loop_thread = threading.get_ident()
        result, queued = await pool.run(lambda engine, stop: threading.get_ident() != loop_thread)
        assert result is True
        assert queued >= 0
        pool.stop(5)

    asyncio.run(scenario())


def test_a_full_queue_is_refused_with_retry_info() -> None:
    async def scenario() -> None:
        pool = started_pool(workers=1, queue_size=1)
        await pool.wait_ready()
        release, started = threading.Event(), threading.Event()
        running = asyncio.ensure_future(pool.run(blocking_work(release, started)))
        await asyncio.to_thread(started.wait, 5)
        waiting = asyncio.ensure_future(pool.run(blocking_work(release)))
        await asyncio.sleep(0.05)
        assert pool.queue_depth == 1
        with pytest.raises(ServiceError) as refused:
            await pool.run(blocking_work(release))
        assert refused.value.status.code == code_pb2.RESOURCE_EXHAUSTED
        assert reason_of(refused.value) == Reason.QUEUE_FULL
        assert retry_delay(refused.value) > 0
        release.set()
        assert [(await running)[0], (await waiting)[0]] == ["done", "done"]
        pool.stop(5)

    asyncio.run(scenario())


def test_cancelling_the_caller_stops_the_running_work() -> None:
    async def scenario() -> None:
        pool = started_pool()
        await pool.wait_ready()
        started, stopped = threading.Event(), threading.Event()

        def work(engine: Any, should_stop: Callable[[], bool]) -> None:
            started.set()
            while not should_stop():  # the engine checks this before every optimisation step
                time.sleep(0.01)
            stopped.set()
            raise ProtectionCancelledError("protection cancelled")

        task = asyncio.ensure_future(pool.run(work))
        await asyncio.to_thread(started.wait, 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await asyncio.to_thread(stopped.wait, 5)
        result, _ = await pool.run(lambda engine, stop: "next")  # the worker is free again
        assert result == "next"
        pool.stop(5)

    asyncio.run(scenario())


def test_work_past_its_deadline_is_stopped_and_reported() -> None:
    async def scenario() -> None:
        pool = started_pool()
        await pool.wait_ready()

        def work(engine: Any, should_stop: Callable[[], bool]) -> None:
            while not should_stop():
                time.sleep(0.01)
            raise ProtectionCancelledError("protection cancelled")

        # stopped while running: a deadline, not a cancellation (the caller is still there)
        with pytest.raises(DeadlineExceededError):
            await pool.run(work, deadline=time.monotonic() + 0.2)
        # queued past its deadline: dropped before it starts
        release, started = threading.Event(), threading.Event()
        running = asyncio.ensure_future(pool.run(blocking_work(release, started)))
        await asyncio.to_thread(started.wait, 5)
        late = asyncio.ensure_future(pool.run(blocking_work(release), deadline=time.monotonic() + 0.05))
        await asyncio.sleep(0.2)
        release.set()
        await running
        with pytest.raises(DeadlineExceededError):
            await late
        pool.stop(5)

    asyncio.run(scenario())


def test_a_deadline_shorter_than_the_measured_service_time_is_refused_up_front() -> None:
    async def scenario() -> None:
        pool = started_pool()
        await pool.wait_ready()
        await pool.run(lambda engine, stop: time.sleep(0.3))  # measures about 0.3 s per photo
        ran = threading.Event()
        with pytest.raises(ServiceError) as refused:
            await pool.run(lambda engine, stop: ran.set(), deadline=time.monotonic() + 0.05, cost=2)
        assert refused.value.status.code == code_pb2.DEADLINE_EXCEEDED
        assert reason_of(refused.value) == Reason.DEADLINE_TOO_SHORT
        assert not ran.is_set()
        pool.stop(5)

    asyncio.run(scenario())


def test_a_failed_engine_load_is_raised_by_wait_ready() -> None:
    def broken() -> Any:
        raise RuntimeError("weights missing")

    async def scenario() -> None:
        pool = started_pool(factory=broken)
        with pytest.raises(RuntimeError, match="weights missing"):
            await pool.wait_ready()
        with pytest.raises(ServiceError) as refused:
            await pool.run(lambda engine, stop: None)
        assert refused.value.status.code == code_pb2.UNAVAILABLE

    asyncio.run(scenario())


# ---- settings -----------------------------------------------------------------------------------


def test_settings_come_from_file_then_environment_then_flags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "server.toml"
    config.write_text('workers = 3\nqueue_size = 5\nprofile = "embedded"\n[optimisation]\nsteps = 7\n')
    monkeypatch.setenv("FACEANONYMIXER_QUEUE_SIZE", "9")
    settings = ServiceSettings.load(config, profile=None, listen="127.0.0.1:7000")
    assert (settings.workers, settings.queue_size, settings.listen) == (3, 9, "127.0.0.1:7000")
    assert settings.optimisation == {"steps": 7}
    assert ServiceSettings.load(config, queue_size=2).queue_size == 2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("workers = 0\n", "workers"),
        ('listen = "nowhere"\n', "listen"),
        ('[tokens]\n"short" = "acme"\n', "at least 16"),
        ("workers = \n", "cannot read"),
    ],
)
def test_invalid_settings_are_one_clear_error(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "server.toml"
    config.write_text(text)
    with pytest.raises(SettingsError, match=message):
        ServiceSettings.load(config)


def test_a_missing_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="no such configuration file"):
        ServiceSettings.load(tmp_path / "absent.toml")


@pytest.mark.parametrize("listen", ["0.0.0.0:50051", "10.1.2.3:50051", "[::]:50051"])
def test_no_auth_is_refused_off_loopback(listen: str) -> None:
    with pytest.raises(SettingsError, match="without authentication"):
        ServiceSettings(listen=listen).check_safe_to_serve()
    ServiceSettings(listen=listen, tokens={"t" * 16: "acme"}).check_safe_to_serve()


@pytest.mark.parametrize("listen", ["127.0.0.1:50051", "localhost:0", "[::1]:50051"])
def test_no_auth_is_allowed_on_loopback(listen: str) -> None:
    ServiceSettings(listen=listen).check_safe_to_serve()


def test_unknown_optimisation_settings_fail_start_up() -> None:
    with pytest.raises(SettingsError, match="optimisation"):
        server_module.engine_factory(ServiceSettings(optimisation={"stepz": 3}))


# ---- health while the models load ---------------------------------------------------------------


def test_health_is_not_serving_until_the_engines_have_loaded(tmp_path: Path) -> None:
    loaded = threading.Event()
    settings = ServiceSettings(
        listen="127.0.0.1:0", keystore=f"sqlite:///{tmp_path / 'keys.db'}", shutdown_grace_seconds=1
    )

    def slow_engine() -> Any:
        assert loaded.wait(30)
        return object()

    def check(address: str) -> str:
        with grpc.insecure_channel(address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    async def scenario() -> list[str]:
        seen = []
        store = KeyStore.open(settings.keystore, KeyEncryptionKey(os.urandom(32)))
        serving = asyncio.ensure_future(server_module._serve_with(settings, store, slow_engine))
        address = await _logged_address()
        seen.append(await asyncio.to_thread(check, address))
        loaded.set()
        for _ in range(100):
            status = await asyncio.to_thread(check, address)
            if status == "SERVING":
                break
            await asyncio.sleep(0.05)
        seen.append(status)
        os.kill(os.getpid(), signal.SIGTERM)  # the server's own handler: graceful shutdown
        await serving
        store.close()
        return seen

    assert asyncio.run(scenario()) == ["NOT_SERVING", "SERVING"]


async def _logged_address() -> str:
    """The address the server logs once it listens (it binds port 0)."""
    import logging

    found: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage() == "listening" and not found.done():
                found.set_result(record.fields["address"])  # type: ignore[attr-defined]

    handler, logger = Catch(), logging.getLogger("faceanonymixer.service")
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        return await asyncio.wait_for(found, 30)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
