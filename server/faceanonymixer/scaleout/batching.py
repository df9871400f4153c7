"""Cross-request batching: several ``ProtectFace``/``ProtectFaces`` calls of one replica protected
in one engine call.

``ProtectionEngine.protect`` optimises the faces of several subjects as one batch, each with its
own key and loss terms: the loss is a sum of per-face terms and Adam is element-wise, so a face's
result depends on its batch-mates only through float rounding. Adam amplifies that over many steps
(measured on the CPU at 50 steps: 16/255 mean pixel difference from the same face alone, dlib
distance 0.17), so batched results are not bit-identical to unbatched ones; a batch size of one
keeps the plain server's CPU determinism. :func:`protect_subjects` is
:func:`~faceanonymixer.service.protection.protect_photos` for several requests at once;
:class:`BatchingProtectionServicer` is the service's own ``ProtectionServicer`` whose engine step
goes through a batcher (Ray Serve's ``@serve.batch`` in a deployment). Decoding, alignment and
encoding stay per photo: alignment runs dlib on one image at a time, and a photo that fails fails
alone.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from faceanonymixer.engine.batch import SubjectPhotos, protect_batch
from faceanonymixer.engine.protection import ProtectionEngine, StopCheck
from faceanonymixer.engine.protection_key import ProtectionKey
from faceanonymixer.faces.imageio import ImageInput
from faceanonymixer.keystore import KeyStore
from faceanonymixer.service.protection import Outcome, OutputOptions, ProtectedPhoto, encode_image
from faceanonymixer.service.servicers import CallGuard, ProtectionServicer
from faceanonymixer.service.settings import ServiceSettings
from faceanonymixer.service.workers import EnginePool

log = logging.getLogger("faceanonymixer.service")


@dataclass
class SubjectWork:
    """The photos of one call, its key and output options."""

    #: encoded photos (decoded on the worker) or arrays
    photos: Sequence[ImageInput]
    key: ProtectionKey
    options: OutputOptions


def protect_subjects(
    engine: ProtectionEngine, work: Sequence[SubjectWork], should_stop: StopCheck
) -> list[list[Outcome]]:
    """Protect every call's photos in one optimisation batch; one list of outcomes per call, in order.

    For one call this is ``protect_photos``'s work: a photo that cannot be aligned fails alone,
    ``optimise`` is the batch's optimisation time shared out per face.
    """
    rows = protect_batch(
        engine, [SubjectPhotos(item.photos, item.key) for item in work], should_stop=should_stop
    )
    outcomes: list[list[Outcome]] = []
    for item, row in zip(work, rows, strict=True):
        replies: list[Outcome] = []
        for outcome in row:
            if outcome.error is not None:
                replies.append(outcome.error)
                continue
            assert outcome.prepared is not None and outcome.result is not None  # protected with its batch
            started = time.perf_counter()
            options = item.options
            pixels = outcome.result.photo if options.paste_back else outcome.result.face
            size = 0 if options.paste_back else options.output_size
            data = encode_image(pixels, options.image_format, size=size)
            timings = {
                "align": outcome.align_seconds,
                "optimise": outcome.optimise_seconds,
                "encode": time.perf_counter() - started,
            }
            replies.append(ProtectedPhoto(data, options.image_format, outcome.prepared.chip.box, timings))
        outcomes.append(replies)
    return outcomes


@dataclass
class BatchItem:
    """One call waiting in the batcher."""

    work: SubjectWork
    enqueued_at: float = field(default_factory=time.monotonic)
    #: set when the caller went away; a batch stops once all its callers have gone
    gone: threading.Event = field(default_factory=threading.Event)


#: a call's outcomes and the seconds it waited (batcher + engine queue)
BatchResult = tuple[list[Outcome], float]
BatchFunction = Callable[[list[BatchItem]], Coroutine[Any, Any, list[BatchResult]]]
BatchedFunction = Callable[[BatchItem], Coroutine[Any, Any, BatchResult]]
#: makes a function of one item from a function of a list of them (``serve.batch(...)``)
Batcher = Callable[[BatchFunction], BatchedFunction]


def photo_count(items: list[BatchItem]) -> int:
    """A batch's size in photos (``batch_size_fn`` of ``serve.batch``)."""
    return sum(len(item.work.photos) for item in items)


class BatchingProtectionServicer(ProtectionServicer):
    """The service's ``ProtectionServicer``; only its engine step is batched across calls.

    Authentication, validation, key lookup, statuses, metrics and logs are the parent's. A call
    with ``max_batch_photos`` photos or more is a full batch by itself and skips the batcher.
    """

    def __init__(
        self,
        settings: ServiceSettings,
        store: KeyStore,
        pool: EnginePool,
        guard: CallGuard,
        *,
        batcher: Batcher,
        max_batch_photos: int,
    ) -> None:
        super().__init__(settings, store, pool, guard)
        self.max_batch_photos = max_batch_photos
        self._batched = batcher(self._run_batch)

    async def _protect(  # the parent's one engine step, batched
        self, photos: Sequence[ImageInput], key: ProtectionKey, options: OutputOptions, context: object
    ) -> tuple[list[Outcome], float]:
        item = BatchItem(SubjectWork(photos, key, options))
        try:
            if len(photos) >= self.max_batch_photos:
                [result] = await self._run_batch([item])
                return result
            return await self._batched(item)
        except asyncio.CancelledError:
            item.gone.set()
            raise

    async def _run_batch(self, items: list[BatchItem]) -> list[BatchResult]:
        started = time.monotonic()

        def work(engine: ProtectionEngine, should_stop: StopCheck) -> list[list[Outcome]]:
            def stop() -> bool:
                return should_stop() or all(item.gone.is_set() for item in items)

            return protect_subjects(engine, [item.work for item in items], stop)

        photos = photo_count(items)
        log.debug("batch", extra={"fields": {"calls": len(items), "photos": photos}})
        outcomes, queued = await self.pool.run(work, cost=photos)
        return [(row, started - item.enqueued_at + queued) for item, row in zip(items, outcomes, strict=True)]
