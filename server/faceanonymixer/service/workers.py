"""The engine off the event loop: worker threads, each with its own engine, behind a bounded queue.

A call that finds the queue full is refused at once with RESOURCE_EXHAUSTED and a RetryInfo
estimated from recent service times; a call whose deadline cannot be met by that estimate is
refused before it waits; queued work whose caller went away is dropped, and running work stops at
the next optimisation step (the engine calls the job's stop check every step).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from google.rpc import code_pb2

from faceanonymixer.engine import ProtectionEngine, StopCheck
from faceanonymixer.errors import ProtectionCancelledError
from faceanonymixer.service.status import Reason, ServiceError, rich_status
from faceanonymixer.threads import AUTO, threads_for_call, torch_threads, usable_cores

T = TypeVar("T")
Work = Callable[[ProtectionEngine, StopCheck], T]
EngineFactory = Callable[[], ProtectionEngine]

log = logging.getLogger("faceanonymixer.service")

#: weight of the newest measurement in the moving average of seconds per photo
_SMOOTHING = 0.3


class DeadlineExceededError(Exception):
    """The job's deadline passed while it waited or ran."""


@dataclass
class _Job(Generic[T]):
    work: Work[T]
    deadline: float | None
    cost: int
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[T]
    cancelled: threading.Event = field(default_factory=threading.Event)
    enqueued_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None

    def should_stop(self) -> bool:
        return self.cancelled.is_set() or (self.deadline is not None and time.monotonic() >= self.deadline)


class EnginePool:
    """``workers`` threads, each owning one :class:`ProtectionEngine` (engines are not shared)."""

    def __init__(
        self,
        engine_factory: EngineFactory,
        *,
        workers: int,
        queue_size: int,
        threads: int = AUTO,
        cores: int | None = None,
    ) -> None:
        """``threads``: torch threads per worker (:mod:`faceanonymixer.threads`; 0 chooses per
        job among the worker's share of ``cores``, default the usable cores)."""
        self._factory = engine_factory
        self.workers = workers
        self._threads_setting = threads
        self._core_share = max(1, (cores or usable_cores()) // workers)
        # admission (_has_room) keeps it at queue_size waiting jobs plus one per idle worker
        self._queue: queue.Queue[_Job[Any] | None] = queue.Queue(maxsize=queue_size + workers)
        self._queue_size = queue_size
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._loaded = 0
        self._busy = 0
        self._load_error: BaseException | None = None
        self._ready = threading.Event()
        self._seconds_per_photo: float | None = None

    # ---- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        for index in range(self.workers):
            thread = threading.Thread(target=self._serve, name=f"engine-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)

    async def wait_ready(self) -> None:
        """Return once every worker has loaded its engine; raise the first loading error."""
        while not self._ready.is_set():
            await asyncio.sleep(0.05)
        if self._load_error is not None:
            raise self._load_error

    @property
    def ready(self) -> bool:
        return self._ready.is_set() and self._load_error is None

    def stop(self, timeout: float | None = None) -> None:
        """Finish the running jobs, fail the queued ones, and join the threads."""
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                _settle(job, error=ServiceError(_not_serving("the server is shutting down")))
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join(timeout)

    # ---- metrics -----------------------------------------------------------------------------

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    @property
    def busy_workers(self) -> int:
        return self._busy

    # ---- submitting --------------------------------------------------------------------------

    async def run(self, work: Work[T], *, deadline: float | None = None, cost: int = 1) -> tuple[T, float]:
        """Run ``work(engine, should_stop)`` on a worker; return its result and the seconds queued.

        ``deadline`` is a ``time.monotonic()`` instant; ``cost`` the number of photos, for
        estimates. Cancelling the awaiting task cancels the job.
        """
        self.check_admission(cost=cost, deadline=deadline)
        loop = asyncio.get_running_loop()
        job: _Job[T] = _Job(work, deadline, cost, loop, loop.create_future())
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise _queue_full(self._retry_after()) from None
        try:
            result = await job.future
        except asyncio.CancelledError:
            job.cancelled.set()
            raise
        started = job.started_at if job.started_at is not None else job.enqueued_at
        return result, started - job.enqueued_at

    def check_admission(self, *, cost: int = 1, deadline: float | None = None) -> None:
        """Raise the refusal :meth:`run` would give now (not ready, deadline too short, queue
        full), so that callers can refuse before decoding anything."""
        if not self.ready:
            raise ServiceError(_not_serving("the models are still loading"))
        estimate = self._estimate(cost)
        if deadline is not None and estimate is not None and deadline - time.monotonic() < estimate:
            raise ServiceError(
                rich_status(
                    code_pb2.DEADLINE_EXCEEDED,
                    f"the deadline leaves too little time: this work takes about {estimate:.1f} s",
                    Reason.DEADLINE_TOO_SHORT,
                    metadata={"estimated_seconds": f"{estimate:.3f}"},
                )
            )
        if not self._has_room():
            raise _queue_full(self._retry_after())

    def _has_room(self) -> bool:
        with self._lock:
            idle = self.workers - self._busy
        return self._queue.qsize() < self._queue_size + idle

    def _estimate(self, cost: int) -> float | None:
        per_photo = self._seconds_per_photo
        return None if per_photo is None else per_photo * cost

    def _retry_after(self) -> float:
        per_photo = self._seconds_per_photo or 1.0
        return per_photo * (self._queue.qsize() + 1) / self.workers

    # ---- worker threads ----------------------------------------------------------------------

    def _serve(self) -> None:
        engine = self._load()
        if engine is None:
            return
        while True:
            job = self._queue.get()
            if job is None:
                return
            if job.future.done():  # the caller went away while the job waited
                continue
            if job.should_stop():
                stopped = asyncio.CancelledError() if job.cancelled.is_set() else DeadlineExceededError()
                _settle(job, error=stopped)
                continue
            with self._lock:
                self._busy += 1
            job.started_at = time.monotonic()
            try:
                with torch_threads(self._threads_setting, share=self._core_share):
                    result = job.work(engine, job.should_stop)
            except ProtectionCancelledError as error:
                # the engine stops the same way for both; only the caller's going away is a cancel
                _settle(job, error=error if job.cancelled.is_set() else DeadlineExceededError())
            except BaseException as error:
                _settle(job, error=error)
            else:
                self._record(time.monotonic() - job.started_at, job.cost)
                _settle(job, result=result)
            finally:
                with self._lock:
                    self._busy -= 1

    def _load(self) -> ProtectionEngine | None:
        import torch

        torch.set_num_threads(threads_for_call(self._threads_setting, share=self._core_share))
        try:
            engine = self._factory()
        except BaseException as error:
            log.exception("engine failed to load")
            with self._lock:
                self._load_error = self._load_error or error
            self._ready.set()
            return None
        with self._lock:
            self._loaded += 1
            if self._loaded == self.workers:
                self._ready.set()
        return engine

    def _record(self, seconds: float, cost: int) -> None:
        per_photo = seconds / max(cost, 1)
        with self._lock:
            previous = self._seconds_per_photo
            self._seconds_per_photo = (
                per_photo if previous is None else (1 - _SMOOTHING) * previous + _SMOOTHING * per_photo
            )


def _queue_full(retry_after: float) -> ServiceError:
    return ServiceError(
        rich_status(
            code_pb2.RESOURCE_EXHAUSTED,
            "the server is busy: the request queue is full",
            Reason.QUEUE_FULL,
            retry_after=retry_after,
        )
    )


def _not_serving(message: str) -> Any:
    return rich_status(code_pb2.UNAVAILABLE, message, Reason.NOT_SERVING, retry_after=1.0)


def _settle(job: _Job[Any], *, result: Any = None, error: BaseException | None = None) -> None:
    """Hand the outcome to the job's event loop (the future belongs to that loop's thread)."""

    def settle() -> None:
        if job.future.done():
            return
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(result)

    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
        job.loop.call_soon_threadsafe(settle)
