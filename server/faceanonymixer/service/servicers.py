"""The gRPC servicers: ``ProtectionService`` and ``KeyService`` on grpc.aio.

Every call authenticates first, then validates (a malformed message included), then touches the
key store (on its own executor, never behind image work), then queues engine work by cost.
Photos are only probed here (format and size, from their headers); they are decoded on the
engine worker, one at a time. Failures end the call with the rich status of :mod:`.status`;
nothing secret reaches a status message or a log line.

A protection checks its key three times: when admitted, when its work starts on a worker, and
before its result is returned (one read by primary key each), so a revocation by any replica
stops work already queued or running: it ends with FAILED_PRECONDITION KEY_REVOKED.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from faceanonymixer.engine.profiles import (
    Profile,
    get_profile,
    profile_revision,
    served_profiles,
    with_optimisation_overrides,
)
from faceanonymixer.engine.protection_key import ProtectionKey
from faceanonymixer.faces.imageio import ImageInput, Probe, probe_image
from faceanonymixer.keystore import KeyRecord, KeyStore
from faceanonymixer.service import key_operations
from faceanonymixer.service.auth import Authenticator
from faceanonymixer.service.handlers import MalformedRequest
from faceanonymixer.service.metrics import ServiceMetrics
from faceanonymixer.service.protection import (
    OutputOptions,
    ProtectedPhoto,
    WorkStats,
    protect_photos,
    reply_bound,
)
from faceanonymixer.service.settings import ServiceSettings
from faceanonymixer.service.status import (
    Reason,
    ServiceError,
    abort,
    rich_status,
    status_for,
)
from faceanonymixer.service.usage import UsageRecorder
from faceanonymixer.service.workers import Cost, DeadlineExceededError, EnginePool, Measure
from faceanonymixer.utils.errors import FaceAnonyMixerError, InvalidImageError, InvalidRequestError
from faceanonymixer_proto.v1 import keys_pb2, keys_pb2_grpc, protection_pb2, protection_pb2_grpc

log = logging.getLogger("faceanonymixer.service")

T = TypeVar("T")

_FORMATS = {
    protection_pb2.IMAGE_FORMAT_UNSPECIFIED: "png",
    protection_pb2.IMAGE_FORMAT_PNG: "png",
    protection_pb2.IMAGE_FORMAT_JPEG: "jpeg",
    protection_pb2.IMAGE_FORMAT_WEBP: "webp",
}
_FORMAT_ENUMS = {
    "png": protection_pb2.IMAGE_FORMAT_PNG,
    "jpeg": protection_pb2.IMAGE_FORMAT_JPEG,
    "webp": protection_pb2.IMAGE_FORMAT_WEBP,
}
_PROTECT_METHODS = frozenset({"ProtectFace", "ProtectFaces"})
#: a call cancelled this close to its deadline was the client's timeout, not a cancel: the
#: client's own deadline fires a little before the server's (the header's transit time)
_DEADLINE_SLACK_S = 0.5
#: the side of the largest face crop any profile's generator makes (ffhq's StyleGAN2), for
#: profiles whose output_size is the generator's own
_LARGEST_GENERATOR_SIDE = 1024


def keystore_executor(settings: ServiceSettings) -> ThreadPoolExecutor:
    """The key store's own threads: key calls never wait behind image work."""
    return ThreadPoolExecutor(settings.keystore_threads, thread_name_prefix="keystore")


def decode_executor(settings: ServiceSettings) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="decode")


class CallGuard:
    """Authentication, error statuses, metrics, the access log and the audit of key use, shared by
    every method."""

    def __init__(
        self, authenticator: Authenticator, metrics: ServiceMetrics, usage: UsageRecorder | None = None
    ) -> None:
        self.authenticator = authenticator
        self.metrics = metrics
        self.usage = usage

    @asynccontextmanager
    async def call(
        self, context: grpc.aio.ServicerContext, method: str, request: object = None
    ) -> AsyncIterator[dict[str, Any]]:
        """Yields the call's log fields (``tenant`` set once authenticated; callers may add:
        ``key_id``, ``key_version`` once the key was found, ``photos`` protected)."""
        started = time.perf_counter()
        deadline = _deadline(context)
        fields: dict[str, Any] = {"method": method}
        code = "OK"
        status = None
        try:
            fields["tenant"] = self.authenticator.tenant(context.invocation_metadata())
            if isinstance(request, MalformedRequest):
                raise ServiceError(
                    rich_status(
                        code_pb2.INVALID_ARGUMENT,
                        f"the request is not a valid {request.message_name} message",
                        Reason.MALFORMED_REQUEST,
                        metadata={"message": request.message_name},
                    )
                )
            yield fields
        except asyncio.CancelledError:
            late = deadline is not None and time.monotonic() >= deadline - _DEADLINE_SLACK_S
            code = "DEADLINE_EXCEEDED" if late else "CANCELLED"
            raise
        except Exception as error:
            status = status_for(_deadline_as_status(error))
            code = code_pb2.Code.Name(status.code)
            fields["reason"] = _reason(status)
            if fields["reason"] in (Reason.INTERNAL, Reason.KEY_STORE_UNAVAILABLE):
                log.exception("unexpected error", extra={"fields": fields})
        finally:
            seconds = time.perf_counter() - started
            self.metrics.observe(method, code, seconds)
            log.info("call", extra={"fields": {**fields, "code": code, "seconds": round(seconds, 4)}})
            if self.usage is not None and method in _PROTECT_METHODS and "key_version" in fields:
                self.usage.record(
                    fields["tenant"],
                    fields["key_id"],
                    fields["key_version"],
                    code,
                    photos=int(fields.get("photos", 0)),
                )
        # aborted only once counted and logged: the caller may read the metrics as soon as it has
        # the status, and abort sends the status before it raises
        if status is not None:
            await abort(context, status)


def _probe_all(images: Sequence[bytes], fields: Sequence[str]) -> list[Probe | InvalidImageError]:
    probes: list[Probe | InvalidImageError] = []
    for data, field in zip(images, fields, strict=True):
        try:
            probes.append(probe_image(data))
        except InvalidImageError as error:
            error.field = field
            probes.append(error)
    return probes


@dataclass
class _CallState:
    """What the servicer's ``_protect`` step needs of its call besides the photos and the key."""

    tenant: str
    cost: Cost
    fields: list[str]
    revision: str | None
    deadline: float | None


_CALL: contextvars.ContextVar[_CallState] = contextvars.ContextVar("faceanonymixer_protect_call")


class ProtectionServicer(protection_pb2_grpc.ProtectionServiceServicer):
    def __init__(
        self,
        settings: ServiceSettings,
        store: KeyStore,
        pool: EnginePool,
        guard: CallGuard,
        *,
        key_calls: Executor | None = None,
        probes: Executor | None = None,
        profiles: dict[str, Profile] | None = None,
    ) -> None:
        """``key_calls``, ``probes``: the executors of key store calls and of image headers (default:
        one of each of this servicer's own). ``profiles``: the profile revisions this server
        serves (revision -> profile; default: from ``settings``); the pool has an engine factory
        for each one that is not current."""
        self.settings = settings
        self.store = store
        self.pool = pool
        self.guard = guard
        self.keystore_executor = key_calls if key_calls is not None else keystore_executor(settings)
        self.decode_executor = probes if probes is not None else decode_executor(settings)
        current = with_optimisation_overrides(get_profile(settings.profile), settings.optimisation)
        self.revision = profile_revision(current)
        self.profiles = profiles or served_profiles(current, archived=settings.archived_revisions)
        self._face_side = current.output_size or _LARGEST_GENERATOR_SIDE

    async def ProtectFace(  # noqa: N802 (gRPC method name)
        self, request: protection_pb2.ProtectFaceRequest, context: grpc.aio.ServicerContext
    ) -> protection_pb2.ProtectFaceResponse:
        async with self.guard.call(context, "ProtectFace", request) as fields:
            received = time.perf_counter()
            tenant = fields["tenant"]
            options = self._options(request)
            key_operations.check_key_id(request.key_id)
            fields["key_id"] = request.key_id
            started = time.perf_counter()
            [probe] = await self._in(self.decode_executor, _probe_all, [request.image], ["image"])
            decode = time.perf_counter() - started
            if isinstance(probe, InvalidImageError):
                raise probe
            self._check_reply(probe, options)
            cost = self._cost([probe])
            deadline = _deadline(context)
            self.pool.check_admission(cost=cost, deadline=deadline, tenant=tenant)
            record, key = await self._key(tenant, request.key_id, fields)
            state = _CallState(tenant, cost, ["image"], self._revision_of(record), deadline)
            [outcome], queued = await self._run_protect(state, [request.image], key, options, context)
            await self._still_usable(tenant, record)
            if isinstance(outcome, FaceAnonyMixerError):
                raise outcome
            fields["photos"] = 1
            reply = protection_pb2.ProtectFaceResponse(
                **_result_fields(outcome, record, decode, queued, time.perf_counter() - received)
            )
            self._check_sent_size(reply.ByteSize())
            return reply
        raise AssertionError("unreachable")  # pragma: no cover (the guard aborts)

    async def ProtectFaces(  # noqa: N802 (gRPC method name)
        self, request: protection_pb2.ProtectFacesRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[protection_pb2.ProtectFacesResponse]:
        async with self.guard.call(context, "ProtectFaces", request) as fields:
            received = time.perf_counter()
            tenant = fields["tenant"]
            options = self._options(request)
            if not request.images:
                raise InvalidRequestError("no images: send one or more photos", field="images")
            if len(request.images) > self.settings.max_images_per_request:
                raise InvalidRequestError(
                    f"at most {self.settings.max_images_per_request} photos per call", field="images"
                )
            key_operations.check_key_id(request.key_id)
            fields["key_id"] = request.key_id
            names = [f"images[{index}]" for index in range(len(request.images))]
            started = time.perf_counter()
            probes = await self._in(self.decode_executor, _probe_all, list(request.images), names)
            decode = (time.perf_counter() - started) / len(probes)
            self._cost([probe for probe in probes if isinstance(probe, Probe)])  # the pixel budget
            refused: dict[int, status_pb2.Status] = {}
            usable: list[tuple[int, Probe]] = []
            for index, probe in enumerate(probes):
                if isinstance(probe, InvalidImageError):
                    refused[index] = status_for(probe)
                    continue
                try:
                    self._check_reply(probe, options)
                except ServiceError as too_large:
                    refused[index] = too_large.status
                    continue
                usable.append((index, probe))
            cost = self._cost([probe for _, probe in usable])
            deadline = _deadline(context)
            if usable:
                self.pool.check_admission(cost=cost, deadline=deadline, tenant=tenant)
            record, key = await self._key(tenant, request.key_id, fields)
            for index, status in sorted(refused.items()):
                yield protection_pb2.ProtectFacesResponse(index=index, status=status)
            if not usable:
                return
            state = _CallState(
                tenant, cost, [names[i] for i, _ in usable], self._revision_of(record), deadline
            )
            photos = [request.images[index] for index, _ in usable]
            outcomes, queued = await self._run_protect(state, photos, key, options, context)
            await self._still_usable(tenant, record)
            fields["photos"] = sum(isinstance(outcome, ProtectedPhoto) for outcome in outcomes)
            for (index, _), outcome in zip(usable, outcomes, strict=True):
                if isinstance(outcome, FaceAnonyMixerError):
                    yield protection_pb2.ProtectFacesResponse(index=index, status=status_for(outcome))
                    continue
                reply = protection_pb2.ProtectFacesResponse(
                    index=index,
                    status=status_pb2.Status(code=code_pb2.OK),
                    **_result_fields(outcome, record, decode, queued, time.perf_counter() - received),
                )
                self._check_sent_size(reply.ByteSize())
                yield reply

    def _options(
        self, request: protection_pb2.ProtectFaceRequest | protection_pb2.ProtectFacesRequest
    ) -> OutputOptions:
        image_format = _FORMATS.get(request.output_format)
        if image_format is None:
            raise InvalidRequestError(f"unknown output format {request.output_format}", field="output_format")
        if request.output_size > self.settings.max_output_size or 0 < request.output_size < 16:
            raise InvalidRequestError(
                f"output_size must be 0 or 16 to {self.settings.max_output_size} pixels", field="output_size"
            )
        return OutputOptions(image_format, request.output_size, request.paste_back)

    def _cost(self, probes: Sequence[Probe]) -> Cost:
        """The call's cost; refused at once when its photos exceed the pixel budget."""
        megapixels = sum(probe.megapixels for probe in probes)
        budget = self.settings.max_request_megapixels
        if megapixels > budget:
            raise ServiceError(
                rich_status(
                    code_pb2.RESOURCE_EXHAUSTED,
                    f"the photos of this call decode to {megapixels:.1f} megapixels, over the budget "
                    f"of {budget:g} per call: send fewer or smaller photos",
                    Reason.PIXEL_BUDGET,
                    metadata={"megapixels": f"{megapixels:.1f}", "budget_megapixels": f"{budget:g}"},
                )
            )
        return Cost(len(probes), megapixels)

    def _check_reply(self, probe: Probe, options: OutputOptions) -> None:
        """Refuse, before any work, a photo whose reply could exceed the message limit."""
        bound = max(
            reply_bound(probe.width, probe.height, options, self._face_side),
            reply_bound(probe.height, probe.width, options, self._face_side),  # EXIF may turn it
        )
        if bound > self.settings.max_message_bytes:
            self._refuse_reply(bound, "could take")

    def _check_sent_size(self, size: int) -> None:
        if size > self.settings.max_message_bytes:  # a safety net: _check_reply bounds it first
            self._refuse_reply(size, "takes")

    def _refuse_reply(self, size: int, verb: str) -> None:
        limit = self.settings.max_message_bytes
        raise ServiceError(
            rich_status(
                code_pb2.RESOURCE_EXHAUSTED,
                f"the reply {verb} {size:,} bytes, over the message limit of {limit:,}: ask for JPEG "
                "or WebP, a face crop instead of paste_back, or a smaller photo",
                Reason.REPLY_TOO_LARGE,
                metadata={"reply_bytes": str(size), "max_message_bytes": str(limit)},
            )
        )

    def _revision_of(self, record: KeyRecord) -> str | None:
        """The pool's engine for the key's revision (None: the current one)."""
        return None if record.profile_revision == self.revision else record.profile_revision

    async def _in(self, executor: Executor, function: Callable[..., T], *args: Any) -> T:
        """``function(*args)`` on ``executor``, never the event loop's shared default one."""
        return await asyncio.get_running_loop().run_in_executor(executor, functools.partial(function, *args))

    async def _key(self, tenant: str, key_id: str, fields: dict[str, Any]) -> tuple[KeyRecord, ProtectionKey]:
        record, key = await self._in(
            self.keystore_executor,
            functools.partial(
                self.store.key_for_use, profile=self.settings.profile, revisions=set(self.profiles)
            ),
            tenant,
            key_id,
        )
        fields["key_version"] = record.version
        return record, key

    async def _still_usable(self, tenant: str, record: KeyRecord) -> None:
        """The key is still active (it may have been revoked on any replica while the work ran)."""
        await self._in(self.keystore_executor, self.store.check_usable, tenant, record.key_id, record.version)

    async def _run_protect(
        self,
        state: _CallState,
        photos: list[bytes],
        key: ProtectionKey,
        options: OutputOptions,
        context: grpc.aio.ServicerContext,
    ) -> tuple[list[ProtectedPhoto | FaceAnonyMixerError], float]:
        token = _CALL.set(state)
        try:
            return await self._protect(photos, key, options, context)
        finally:
            _CALL.reset(token)

    async def _protect(
        self,
        photos: Sequence[ImageInput],
        key: ProtectionKey,
        options: OutputOptions,
        context: grpc.aio.ServicerContext,
    ) -> tuple[list[ProtectedPhoto | FaceAnonyMixerError], float]:
        """The engine step of one call (subclasses batch it): decode, align, protect, encode on a
        worker; the key is checked again when the work starts."""
        state = _CALL.get()
        stats = WorkStats()
        assert key.key_id is not None

        def still_active() -> None:
            assert key.key_id is not None
            self.store.check_usable(state.tenant, key.key_id, key.version)

        def work(engine: Any, should_stop: Callable[[], bool]) -> list[ProtectedPhoto | FaceAnonyMixerError]:
            return protect_photos(
                engine,
                photos,
                key,
                options,
                should_stop,
                fields=state.fields,
                stats=stats,
                before_work=still_active,
            )

        def measure(_: object) -> Measure:
            return Measure(stats.engine_seconds, stats.prepared, stats.prepare_seconds, state.cost.megapixels)

        return await self.pool.run(
            work,
            deadline=state.deadline,
            cost=state.cost,
            tenant=state.tenant,
            revision=state.revision,
            measure=measure,
        )


class KeyServicer(keys_pb2_grpc.KeyServiceServicer):
    def __init__(
        self,
        settings: ServiceSettings,
        store: KeyStore,
        guard: CallGuard,
        *,
        key_calls: Executor | None = None,
    ) -> None:
        """``key_calls``: the key store's executor (default: one of this servicer's own)."""
        self.settings = settings
        self.store = store
        self.guard = guard
        self.executor = key_calls if key_calls is not None else keystore_executor(settings)
        self.revision = key_operations.settings_revision(settings)

    async def _in(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """On the key store's own executor: a busy image pipeline never delays a key call."""
        call = functools.partial(function, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self.executor, call)

    async def CreateKey(  # noqa: N802 (gRPC method name)
        self, request: keys_pb2.CreateKeyRequest, context: grpc.aio.ServicerContext
    ) -> keys_pb2.CreateKeyResponse:
        async with self.guard.call(context, "CreateKey", request) as fields:
            tenant = fields["tenant"]
            reply = await self._in(
                key_operations.create_key,
                self.store,
                tenant,
                request,
                default_profile=self.settings.profile,
                default_revision=self.revision,
                actor=f"grpc:{tenant}",
            )
            fields["key_id"] = reply.key.key_id
            return reply
        raise AssertionError("unreachable")  # pragma: no cover (the guard aborts)

    async def RevokeKey(  # noqa: N802 (gRPC method name)
        self, request: keys_pb2.RevokeKeyRequest, context: grpc.aio.ServicerContext
    ) -> keys_pb2.RevokeKeyResponse:
        async with self.guard.call(context, "RevokeKey", request) as fields:
            tenant, fields["key_id"] = fields["tenant"], request.key_id[: key_operations.MAX_TEXT]
            reply = await self._in(
                key_operations.revoke_key,
                self.store,
                tenant,
                request,
                actor=f"grpc:{tenant}",
                revisions={self.settings.profile: self.revision},
            )
            fields["replacement_key_id"] = reply.replacement_key.key_id
            return reply
        raise AssertionError("unreachable")  # pragma: no cover

    async def GetKey(  # noqa: N802 (gRPC method name)
        self, request: keys_pb2.GetKeyRequest, context: grpc.aio.ServicerContext
    ) -> keys_pb2.GetKeyResponse:
        async with self.guard.call(context, "GetKey", request) as fields:
            fields["key_id"] = request.key_id[: key_operations.MAX_TEXT]
            return await self._in(key_operations.get_key, self.store, fields["tenant"], request)
        raise AssertionError("unreachable")  # pragma: no cover

    async def ListKeys(  # noqa: N802 (gRPC method name)
        self, request: keys_pb2.ListKeysRequest, context: grpc.aio.ServicerContext
    ) -> keys_pb2.ListKeysResponse:
        async with self.guard.call(context, "ListKeys", request) as fields:
            return await self._in(key_operations.list_keys, self.store, fields["tenant"], request)
        raise AssertionError("unreachable")  # pragma: no cover


def _deadline(context: grpc.aio.ServicerContext) -> float | None:
    """The call's deadline as a ``time.monotonic()`` instant (None: the caller set none)."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


def _result_fields(
    outcome: ProtectedPhoto, record: KeyRecord, decode: float, queued: float, total: float
) -> dict[str, Any]:
    box = outcome.face_box
    seconds = {"decode": decode, "queue": queued, **outcome.timings, "total": total}
    timings = protection_pb2.Timings(**{name: _duration(value) for name, value in seconds.items()})
    return {
        "image": outcome.image,
        "image_format": _FORMAT_ENUMS[outcome.image_format],
        "key_id": record.key_id,
        "key_version": record.version,
        "profile_id": record.profile_id,
        "timings": timings,
        "face_box": protection_pb2.FaceBox(left=box.left, top=box.top, right=box.right, bottom=box.bottom),
    }


def _duration(seconds: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(int(seconds * 1e9))
    return duration


def _deadline_as_status(error: BaseException) -> BaseException:
    if isinstance(error, DeadlineExceededError):
        return ServiceError(
            rich_status(code_pb2.DEADLINE_EXCEEDED, "the deadline passed", Reason.DEADLINE_EXCEEDED)
        )
    return error


def _reason(status: status_pb2.Status) -> str:
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info.reason
    return ""
