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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from faceanonymixer.keystore import KeyEncryptionKey, KeyStore
from faceanonymixer.service import server as server_module
from faceanonymixer.service.auth import Authenticator
from faceanonymixer.service.settings import ServiceSettings, SettingsError
from faceanonymixer.service.status import Reason, ServiceError
from faceanonymixer.service.workers import Cost, DeadlineExceededError, EnginePool, Measure
from faceanonymixer.utils.errors import ProtectionCancelledError


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


@pytest.mark.parametrize("listen", ["0.0.0.0:50051", "10.1.2.3:50051", "[::]:50051"])
def test_plaintext_tokens_off_loopback_need_to_be_allowed(listen: str, tmp_path: Path) -> None:
    tokens = {"t" * 16: "acme"}
    with pytest.raises(SettingsError, match="bearer tokens in plaintext"):
        ServiceSettings(listen=listen, tokens=tokens).check_safe_to_serve()
    allowed = ServiceSettings(listen=listen, tokens=tokens, allow_insecure_tokens=True)
    allowed.check_safe_to_serve()
    assert allowed.insecure_tokens  # the server logs a warning for it
    tls = {"tls_cert_file": tmp_path / "cert.pem", "tls_key_file": tmp_path / "key.pem"}
    secured = ServiceSettings(listen=listen, tokens=tokens, **tls)  # type: ignore[arg-type]
    secured.check_safe_to_serve()
    assert not secured.insecure_tokens
    assert not ServiceSettings(listen="127.0.0.1:50051", tokens=tokens).insecure_tokens


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


# ---- admission by cost, fairness, estimates (issue 39) -------------------------------------------


def test_admission_counts_photos_not_calls() -> None:
    async def scenario() -> None:
        pool = started_pool(workers=1, queue_size=4)
        await pool.wait_ready()
        release, started = threading.Event(), threading.Event()
        running = asyncio.ensure_future(pool.run(blocking_work(release, started)))
        await asyncio.to_thread(started.wait, 5)
        batch = asyncio.ensure_future(pool.run(blocking_work(release), cost=Cost(3, 3.0)))
        await asyncio.sleep(0.05)
        assert pool.queued_photos == 3
        with pytest.raises(ServiceError) as refused:  # 3 + 2 photos > 4, though only one call waits
            await pool.run(blocking_work(release), cost=Cost(2, 2.0))
        assert reason_of(refused.value) == Reason.QUEUE_FULL
        single = asyncio.ensure_future(pool.run(blocking_work(release), cost=Cost(1, 1.0)))
        await asyncio.sleep(0.05)
        release.set()
        assert [(await job)[0] for job in (running, batch, single)] == ["done"] * 3
        pool.stop(5)

    asyncio.run(scenario())


def test_megapixels_bound_the_queue_too() -> None:
    async def scenario() -> None:
        pool = EnginePool(lambda: object(), workers=1, queue_size=100, queue_megapixels=50.0, threads=1)
        pool.start()
        await pool.wait_ready()
        release, started = threading.Event(), threading.Event()
        running = asyncio.ensure_future(pool.run(blocking_work(release, started)))
        await asyncio.to_thread(started.wait, 5)
        waiting = asyncio.ensure_future(pool.run(blocking_work(release), cost=Cost(1, 40.0)))
        await asyncio.sleep(0.05)
        with pytest.raises(ServiceError) as refused:
            await pool.run(blocking_work(release), cost=Cost(1, 20.0))
        assert reason_of(refused.value) == Reason.QUEUE_FULL
        release.set()
        await running
        await waiting
        pool.stop(5)

    asyncio.run(scenario())


def test_one_tenant_cannot_take_the_whole_queue_and_tenants_take_turns() -> None:
    async def scenario() -> None:
        pool = EnginePool(lambda: object(), workers=1, queue_size=4, tenant_share=0.5, threads=1)
        pool.start()
        await pool.wait_ready()
        release, started = threading.Event(), threading.Event()
        order: list[str] = []

        def job(name: str, gate: threading.Event | None = None) -> Callable[..., str]:
            def work(engine: Any, should_stop: Callable[[], bool]) -> str:
                if gate is not None:
                    started.set()
                    assert gate.wait(10)
                order.append(name)
                return name

            return work

        running = asyncio.ensure_future(pool.run(job("a0", release), tenant="a"))
        await asyncio.to_thread(started.wait, 5)
        queued_a = [asyncio.ensure_future(pool.run(job(f"a{n}"), tenant="a")) for n in (1, 2)]
        await asyncio.sleep(0.05)
        with pytest.raises(ServiceError) as refused:  # a holds its half of the queue
            await pool.run(job("a3"), tenant="a")
        assert reason_of(refused.value) == Reason.QUEUE_FULL
        queued_b = asyncio.ensure_future(pool.run(job("b1"), tenant="b"))  # room is left for b
        await asyncio.sleep(0.05)
        release.set()
        await asyncio.gather(running, *queued_a, queued_b)
        assert order == ["a0", "b1", "a1", "a2"]  # b has been served less: it goes first
        pool.stop(5)

    asyncio.run(scenario())


def test_the_deadline_estimate_is_per_photo_and_per_megapixel() -> None:
    """Two 40 MP photos that took long to decode do not make a small call look slow."""

    async def scenario() -> None:
        pool = started_pool()
        await pool.wait_ready()

        def big_job(engine: Any, should_stop: Callable[[], bool]) -> str:
            time.sleep(0.6)
            return "big"

        # 0.1 s of the 0.6 s grew with the 2 photos, 0.5 s with the 80 megapixels
        await pool.run(big_job, cost=Cost(2, 80.0), measure=lambda _: Measure(0.1, 2, 0.5, 80.0))
        small = Cost(1, 0.3)
        assert pool.estimate(small) == pytest.approx(0.05 + 0.3 * 0.5 / 80)
        ran = threading.Event()
        await pool.run(lambda engine, stop: ran.set(), deadline=time.monotonic() + 0.3, cost=small)
        assert ran.is_set()  # the old per-photo average (0.3 s a photo) would have refused it
        with pytest.raises(ServiceError) as refused:  # the same big work surely cannot finish
            await pool.run(big_job, deadline=time.monotonic() + 0.2, cost=Cost(2, 80.0))
        assert reason_of(refused.value) == Reason.DEADLINE_TOO_SHORT
        pool.stop(5)

    asyncio.run(scenario())


class FakeContext:
    """What a servicer reads of a grpc.aio context."""

    def __init__(self) -> None:
        self.aborted: tuple[Any, str] | None = None

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()

    def time_remaining(self) -> float | None:
        return None

    async def abort(self, code: Any, details: str, trailing: Any = None) -> None:
        self.aborted = (code, details)
        raise RuntimeError(f"aborted: {code} {details}")


def test_key_store_calls_do_not_wait_behind_image_work(tmp_path: Path) -> None:
    """RevokeKey answers while every thread of the event loop's default executor (where image
    decoding used to run) is busy: key-store calls have an executor of their own."""
    from faceanonymixer.service.metrics import ServiceMetrics
    from faceanonymixer.service.servicers import CallGuard, KeyServicer
    from faceanonymixer_proto.v1 import keys_pb2

    settings = ServiceSettings(keystore=f"sqlite:///{tmp_path / 'keys.db'}")
    store = KeyStore.open(settings.keystore, KeyEncryptionKey(os.urandom(32)))
    record = store.create_key("default", "alice", profile_id="embedded", actor="test")
    servicer = KeyServicer(settings, store, CallGuard(Authenticator({}), ServiceMetrics()))

    async def scenario() -> float:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(ThreadPoolExecutor(2))
        busy = threading.Event()
        hogs = [loop.run_in_executor(None, busy.wait, 30) for _ in range(6)]  # a heavy upload
        try:
            started = time.perf_counter()
            reply = await asyncio.wait_for(
                servicer.RevokeKey(keys_pb2.RevokeKeyRequest(key_id=record.key_id), FakeContext()), 20
            )
            assert reply.revoked_key.key_id == record.key_id
            return time.perf_counter() - started
        finally:
            busy.set()
            await asyncio.gather(*hogs)

    seconds = asyncio.run(scenario())
    print(f"\nRevokeKey with the default executor saturated: {seconds * 1000:.1f} ms")
    store.close()
