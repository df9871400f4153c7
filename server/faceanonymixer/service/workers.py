"""The engine off the event loop: worker threads, each with its own engines, behind a fair queue
admitted by cost.

* **Cost.** A job costs its photos and their decoded megapixels (:class:`Cost`). The queue holds
  at most ``queue_size`` photos and ``queue_megapixels`` megapixels, all tenants together; a job
  that does not fit is refused at once with RESOURCE_EXHAUSTED and a RetryInfo (an idle pool
  takes any one job, so a large batch still runs when nothing else does).
* **Fairness.** While several tenants are configured, no tenant may hold more than
  ``tenant_share`` of either bound, and an idle worker takes the queued job of the tenant that
  has been served the fewest photos (its first job in line), so one tenant's uploads cannot keep
  another's calls waiting.
* **Deadlines.** A call whose deadline is shorter than the least time its own work has taken
  lately (seconds per photo and per megapixel, each the minimum over recent jobs) is refused
  before it waits: only what surely cannot finish. The estimate depends on the caller's own
  photos, not on what other tenants sent.
* **Stopping.** Queued work whose caller went away is dropped; running work stops at the next
  check (the engine calls the job's stop check every optimisation step).
* **Revisions.** Each worker builds the default engine at start and an archived profile
  revision's engine the first time a job asks for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from google.rpc import code_pb2

from faceanonymixer.engine.protection import ProtectionEngine, StopCheck
from faceanonymixer.service.status import Reason, ServiceError, rich_status, without_frames
from faceanonymixer.utils.errors import FaceAnonyMixerError, ProtectionCancelledError
from faceanonymixer.utils.threads import AUTO, threads_for_call, torch_threads, usable_cores

T = TypeVar("T")
Work = Callable[[ProtectionEngine, StopCheck], T]
EngineFactory = Callable[[], ProtectionEngine]

log = logging.getLogger("faceanonymixer.service")

#: how many recent jobs the service-time estimates look back on
_WINDOW = 16


class DeadlineExceededError(Exception):
    """The job's deadline passed while it waited or ran."""


@dataclass(frozen=True)
class Cost:
    """What a job takes from the queue: its photos and their decoded megapixels."""

    photos: int = 1
    megapixels: float = 0.0

    @classmethod
    def of(cls, cost: Cost | int) -> Cost:
        return cost if isinstance(cost, Cost) else cls(photos=int(cost))


@dataclass(frozen=True)
class Measure:
    """What a finished job's work took: seconds that grow with its photos (the optimisation,
    encoding) and seconds that grow with its megapixels (decoding, face detection)."""

    photo_seconds: float
    photos: int
    megapixel_seconds: float = 0.0
    megapixels: float = 0.0


class _Estimator:
    """Seconds per photo and per megapixel over the last ``_WINDOW`` jobs."""

    def __init__(self) -> None:
        self.per_photo: deque[float] = deque(maxlen=_WINDOW)
        self.per_megapixel: deque[float] = deque(maxlen=_WINDOW)

    def record(self, measure: Measure) -> None:
        if measure.photos > 0:
            self.per_photo.append(max(measure.photo_seconds, 0.0) / measure.photos)
        if measure.megapixels > 0:
            self.per_megapixel.append(max(measure.megapixel_seconds, 0.0) / measure.megapixels)

    def lower_bound(self, cost: Cost) -> float | None:
        """The least time ``cost`` has needed lately (None before any job finished)."""
        if not self.per_photo:
            return None
        per_megapixel = min(self.per_megapixel) if self.per_megapixel else 0.0
        return min(self.per_photo) * cost.photos + per_megapixel * cost.megapixels

    def typical_per_photo(self) -> float:
        if not self.per_photo:
            return 1.0
        ordered = sorted(self.per_photo)
        return ordered[len(ordered) // 2]


@dataclass
class _Job(Generic[T]):
    work: Work[T]
    deadline: float | None
    cost: Cost
    tenant: str
    revision: str | None
    measure: Callable[[T], Measure | None] | None
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[T]
    cancelled: threading.Event = field(default_factory=threading.Event)
    enqueued_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None

    def should_stop(self) -> bool:
        return self.cancelled.is_set() or (self.deadline is not None and time.monotonic() >= self.deadline)


class EnginePool:
    """``workers`` threads, each owning its :class:`ProtectionEngine`\\ s (engines are not shared)."""

    def __init__(
        self,
        engine_factory: EngineFactory,
        *,
        workers: int,
        queue_size: int,
        threads: int = AUTO,
        cores: int | None = None,
        queue_megapixels: float = math.inf,
        tenant_share: float = 1.0,
        revision_factories: Mapping[str, EngineFactory] | None = None,
    ) -> None:
        """``threads``: torch threads per worker (:mod:`faceanonymixer.utils.threads`; 0 chooses per
        job among the worker's share of ``cores``, default the usable cores). ``queue_size``
        (photos) and ``queue_megapixels`` bound the waiting work; ``tenant_share`` (0-1] is the
        most of either one tenant may hold (1: no per-tenant bound). ``revision_factories``
        build the engines of other profile revisions, on a worker's first job for each."""
        self._factory = engine_factory
        self._revision_factories = dict(revision_factories or {})
        self.workers = workers
        self._threads_setting = threads
        self._core_share = max(1, (cores or usable_cores()) // workers)
        self._queue_size = queue_size
        self._queue_megapixels = queue_megapixels
        self._tenant_share = tenant_share
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._work_ready = threading.Condition(self._lock)
        self._pending: dict[str, deque[_Job[Any]]] = {}
        #: photos started per tenant (each tenant's start tag), and the start tag served last
        self._served: dict[str, float] = {}
        self._virtual_time = 0.0
        self._queued = Cost(0, 0.0)
        self._queued_by_tenant: dict[str, Cost] = {}
        self._stopping = False
        self._loaded = 0
        self._busy = 0
        self._load_error: BaseException | None = None
        self._ready = threading.Event()
        self._estimates = _Estimator()

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
        with self._lock:
            self._stopping = True
            queued = [job for jobs in self._pending.values() for job in jobs]
            self._pending.clear()
            self._queued, self._queued_by_tenant = Cost(0, 0.0), {}
            self._work_ready.notify_all()
        for job in queued:
            _settle(job, error=ServiceError(_not_serving("the server is shutting down")))
        for thread in self._threads:
            thread.join(timeout)

    # ---- metrics -----------------------------------------------------------------------------

    @property
    def queue_depth(self) -> int:
        """Jobs waiting for a worker."""
        with self._lock:
            return sum(len(jobs) for jobs in self._pending.values())

    @property
    def queued_photos(self) -> int:
        return self._queued.photos

    @property
    def busy_workers(self) -> int:
        return self._busy

    # ---- submitting --------------------------------------------------------------------------

    async def run(
        self,
        work: Work[T],
        *,
        deadline: float | None = None,
        cost: Cost | int = 1,
        tenant: str = "",
        revision: str | None = None,
        measure: Callable[[T], Measure | None] | None = None,
    ) -> tuple[T, float]:
        """Run ``work(engine, should_stop)`` on a worker; return its result and the seconds queued.

        ``deadline`` is a ``time.monotonic()`` instant; ``cost`` the job's photos (and
        megapixels); ``tenant`` whose turn it takes; ``revision`` the profile revision whose
        engine runs it (None: the default); ``measure`` tells, from the result, what the work's
        time grew with (default: all of it with the photos). Cancelling the awaiting task
        cancels the job.
        """
        job_cost = Cost.of(cost)
        self.check_admission(cost=job_cost, deadline=deadline, tenant=tenant)
        if revision is not None and revision not in self._revision_factories:
            raise ValueError(f"no engine for profile revision {revision!r}")
        loop = asyncio.get_running_loop()
        job: _Job[T] = _Job(work, deadline, job_cost, tenant, revision, measure, loop, loop.create_future())
        with self._lock:
            if not self._admissible(job_cost, tenant):
                raise _queue_full(self._retry_after())
            self._enqueue(job)
        try:
            result = await job.future
        except asyncio.CancelledError:
            job.cancelled.set()
            raise
        started = job.started_at if job.started_at is not None else job.enqueued_at
        return result, started - job.enqueued_at

    def check_admission(
        self, *, cost: Cost | int = 1, deadline: float | None = None, tenant: str = ""
    ) -> None:
        """Raise the refusal :meth:`run` would give now (not ready, deadline too short, no room
        in the queue), so that callers can refuse before touching anything."""
        if not self.ready:
            raise ServiceError(_not_serving("the models are still loading"))
        job_cost = Cost.of(cost)
        needed = self._estimates.lower_bound(job_cost)
        if deadline is not None and needed is not None and deadline - time.monotonic() < needed:
            raise ServiceError(
                rich_status(
                    code_pb2.DEADLINE_EXCEEDED,
                    f"the deadline leaves too little time: this work has needed at least {needed:.1f} s",
                    Reason.DEADLINE_TOO_SHORT,
                    metadata={"estimated_seconds": f"{needed:.3f}"},
                )
            )
        with self._lock:
            if not self._admissible(job_cost, tenant):
                raise _queue_full(self._retry_after())

    def estimate(self, cost: Cost | int) -> float | None:
        """The least time work of ``cost`` has needed lately (for tests and benchmarks)."""
        return self._estimates.lower_bound(Cost.of(cost))

    # ---- the queue (under self._lock) -----------------------------------------------------------

    def _admissible(self, cost: Cost, tenant: str) -> bool:
        if self._stopping:
            return False
        queued_jobs = sum(len(jobs) for jobs in self._pending.values())
        if queued_jobs == 0 and self._busy < self.workers:
            return True  # an idle worker takes it at once, whatever its size
        if self._queued.photos + cost.photos > self._queue_size:
            return False
        if self._queued.megapixels + cost.megapixels > self._queue_megapixels:
            return False
        if self._tenant_share < 1.0:
            mine = self._queued_by_tenant.get(tenant, Cost(0, 0.0))
            photo_cap = max(1, math.floor(self._queue_size * self._tenant_share))
            if mine.photos + cost.photos > photo_cap:
                return False
            if mine.megapixels + cost.megapixels > self._queue_megapixels * self._tenant_share:
                return False
        return True

    def _enqueue(self, job: _Job[Any]) -> None:
        jobs = self._pending.setdefault(job.tenant, deque())
        if not jobs:  # a tenant coming back gets no credit for the time it sent nothing
            self._served[job.tenant] = max(self._served.get(job.tenant, 0.0), self._virtual_time)
        jobs.append(job)
        self._account(job, +1)
        self._work_ready.notify()

    def _account(self, job: _Job[Any], sign: int) -> None:
        def add(total: Cost) -> Cost:
            return Cost(total.photos + sign * job.cost.photos, total.megapixels + sign * job.cost.megapixels)

        self._queued = add(self._queued)
        self._queued_by_tenant[job.tenant] = add(self._queued_by_tenant.get(job.tenant, Cost(0, 0.0)))

    def _next_job(self) -> _Job[Any] | None:
        """The first job of the tenant served the fewest photos; None when stopping."""
        with self._lock:
            while True:
                if self._stopping:
                    return None
                candidates = [(t, jobs) for t, jobs in self._pending.items() if jobs]
                if candidates:
                    tenant, jobs = min(
                        candidates, key=lambda item: (self._served.get(item[0], 0.0), item[1][0].enqueued_at)
                    )
                    job = jobs.popleft()
                    if not jobs:
                        del self._pending[tenant]
                    self._account(job, -1)
                    # start-time fair queuing: the clock is the start tag of the job dispatched last
                    self._virtual_time = self._served.get(tenant, 0.0)
                    self._served[tenant] = self._virtual_time + job.cost.photos
                    self._busy += 1
                    return job
                self._work_ready.wait()

    def _retry_after(self) -> float:
        return self._estimates.typical_per_photo() * (self._queued.photos + 1) / self.workers

    # ---- worker threads ----------------------------------------------------------------------

    def _serve(self) -> None:
        engine = self._load()
        if engine is None:
            return
        engines: dict[str | None, ProtectionEngine] = {None: engine}
        while True:
            job = self._next_job()
            if job is None:
                return
            try:
                self._run(job, engines)
            finally:
                with self._lock:
                    self._busy -= 1

    def _run(self, job: _Job[Any], engines: dict[str | None, ProtectionEngine]) -> None:
        if job.future.done():  # the caller went away while the job waited
            return
        if job.should_stop():
            _settle(
                job, error=asyncio.CancelledError() if job.cancelled.is_set() else DeadlineExceededError()
            )
            return
        job.started_at = time.monotonic()
        try:
            with torch_threads(self._threads_setting, share=self._core_share):
                engine = engines.get(job.revision)
                if engine is None and job.revision is not None:
                    log.info("loading engine", extra={"fields": {"revision": job.revision}})
                    engine = engines[job.revision] = self._revision_factories[job.revision]()
                assert engine is not None
                result = job.work(engine, job.should_stop)
        except ProtectionCancelledError as error:
            # the engine stops the same way for both; only the caller's going away is a cancel
            _settle(job, error=error if job.cancelled.is_set() else DeadlineExceededError())
        except BaseException as error:
            if not isinstance(error, FaceAnonyMixerError | ServiceError):
                log.error("job failed", exc_info=error)  # its frames are logged, then dropped
            _settle(job, error=without_frames(error))
        else:
            measured = job.measure(result) if job.measure is not None else None
            seconds = time.monotonic() - job.started_at
            self._estimates.record(measured or Measure(seconds, job.cost.photos))
            _settle(job, result=result)

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
