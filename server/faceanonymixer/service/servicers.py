"""The gRPC servicers: ``ProtectionService`` and ``KeyService`` on grpc.aio.

Every call authenticates first, then validates, then touches the key store (off the event loop),
then queues engine work. Failures end the call with the rich status of :mod:`.status`; nothing
secret reaches a status message or a log line.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from faceanonymixer.errors import FaceAnonyMixerError, InvalidImageError, InvalidRequestError
from faceanonymixer.imageio import RGBImage, decode_image_bytes
from faceanonymixer.keystore import KeyRecord, KeyStore
from faceanonymixer.protection_key import ProtectionKey
from faceanonymixer.service import key_operations
from faceanonymixer.service.auth import Authenticator
from faceanonymixer.service.metrics import ServiceMetrics
from faceanonymixer.service.protection import OutputOptions, ProtectedPhoto, protect_photos
from faceanonymixer.service.settings import ServiceSettings
from faceanonymixer.service.status import (
    Reason,
    ServiceError,
    abort,
    rich_status,
    status_for,
)
from faceanonymixer.service.workers import DeadlineExceededError, EnginePool
from faceanonymixer_proto.v1 import keys_pb2, keys_pb2_grpc, protection_pb2, protection_pb2_grpc

log = logging.getLogger("faceanonymixer.service")

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


class CallGuard:
    """Authentication, error statuses, metrics and the access log shared by every method."""

    def __init__(self, authenticator: Authenticator, metrics: ServiceMetrics) -> None:
        self.authenticator = authenticator
        self.metrics = metrics

    @asynccontextmanager
    async def call(self, context: grpc.aio.ServicerContext, method: str) -> AsyncIterator[dict[str, Any]]:
        """Yields the call's log fields (``tenant`` set once authenticated; callers may add)."""
        started = time.perf_counter()
        fields: dict[str, Any] = {"method": method}
        code = "OK"
        status = None
        try:
            fields["tenant"] = self.authenticator.tenant(context.invocation_metadata())
            yield fields
        except asyncio.CancelledError:
            remaining = context.time_remaining()
            code = "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "CANCELLED"
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
        # aborted only once counted and logged: the caller may read the metrics as soon as it has
        # the status, and abort sends the status before it raises
        if status is not None:
            await abort(context, status)


class ProtectionServicer(protection_pb2_grpc.ProtectionServiceServicer):
    def __init__(
        self, settings: ServiceSettings, store: KeyStore, pool: EnginePool, guard: CallGuard
    ) -> None:
        self.settings = settings
        self.store = store
        self.pool = pool
        self.guard = guard

    async def ProtectFace(  # noqa: N802 (gRPC method name)
        self, request: protection_pb2.ProtectFaceRequest, context: grpc.aio.ServicerContext
    ) -> protection_pb2.ProtectFaceResponse:
        async with self.guard.call(context, "ProtectFace") as fields:
            received = time.perf_counter()
            options = self._options(request)
            self.pool.check_admission(cost=1, deadline=_deadline(context))
            record, key = await self._key(fields["tenant"], request.key_id, fields)
            photo, decode = await _decode_one(request.image, "image")
            if isinstance(photo, InvalidImageError):
                raise photo
            [outcome], queued = await self._protect([photo], key, options, context)
            if isinstance(outcome, FaceAnonyMixerError):
                raise outcome
            return protection_pb2.ProtectFaceResponse(
                **_result_fields(outcome, record, decode, queued, time.perf_counter() - received)
            )
        raise AssertionError("unreachable")  # pragma: no cover (the guard aborts)

    async def ProtectFaces(  # noqa: N802 (gRPC method name)
        self, request: protection_pb2.ProtectFacesRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[protection_pb2.ProtectFacesResponse]:
        async with self.guard.call(context, "ProtectFaces") as fields:
            received = time.perf_counter()
            options = self._options(request)
            if not request.images:
                raise InvalidRequestError("no images: send one or more photos", field="images")
            if len(request.images) > self.settings.max_images_per_request:
                raise InvalidRequestError(
                    f"at most {self.settings.max_images_per_request} photos per call", field="images"
                )
            self.pool.check_admission(cost=len(request.images), deadline=_deadline(context))
            record, key = await self._key(fields["tenant"], request.key_id, fields)
            decoded = await asyncio.gather(
                *(_decode_one(image, f"images[{index}]") for index, image in enumerate(request.images))
            )
            usable = []
            for index, (photo, decode) in enumerate(decoded):
                if isinstance(photo, InvalidImageError):
                    yield protection_pb2.ProtectFacesResponse(index=index, status=status_for(photo))
                else:
                    usable.append((index, photo, decode))
            if not usable:
                return
            outcomes, queued = await self._protect([photo for _, photo, _ in usable], key, options, context)
            for (index, _, decode), outcome in zip(usable, outcomes, strict=True):
                if isinstance(outcome, FaceAnonyMixerError):
                    yield protection_pb2.ProtectFacesResponse(index=index, status=status_for(outcome))
                    continue
                yield protection_pb2.ProtectFacesResponse(
                    index=index,
                    status=status_pb2.Status(code=code_pb2.OK),
                    **_result_fields(outcome, record, decode, queued, time.perf_counter() - received),
                )

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

    async def _key(self, tenant: str, key_id: str, fields: dict[str, Any]) -> tuple[KeyRecord, ProtectionKey]:
        key_operations.check_key_id(key_id)
        fields["key_id"] = key_id
        return await asyncio.to_thread(self.store.key_for_use, tenant, key_id, profile=self.settings.profile)

    async def _protect(
        self,
        photos: list[RGBImage],
        key: ProtectionKey,
        options: OutputOptions,
        context: grpc.aio.ServicerContext,
    ) -> tuple[list[ProtectedPhoto | FaceAnonyMixerError], float]:
        return await self.pool.run(
            lambda engine, should_stop: protect_photos(engine, photos, key, options, should_stop),
            deadline=_deadline(context),
            cost=len(photos),
        )


class KeyServicer(keys_pb2_grpc.KeyServiceServicer):
    def __init__(self, settings: ServiceSettings, store: KeyStore, guard: CallGuard) -> None:
        self.settings = settings
        self.store = store
        self.guard = guard

    async def CreateKey(  # noqa: N802 (gRPC method name)
        self, request: keys_pb2.CreateKeyRequest, context: grpc.aio.ServicerContext
    ) -> keys_pb2.CreateKeyResponse:
        async with self.guard.call(context, "CreateKey") as fields:
            tenant = fields["tenant"]
            reply = await asyncio.to_thread(
                key_operations.create_key,
                self.store,
                tenant,
                request,
                default_profile=self.settings.profile,
                actor=f"grpc:{tenant}",
            )
            fields["key_id"] = reply.key.key_id
            return reply
        raise AssertionError("unreachable")  # pragma: no cover (the guard aborts)

    async def RevokeKey(  # noqa: N802 (gRPC method name)
        self, request: keys_pb2.RevokeKeyRequest, context: grpc.aio.ServicerContext
    ) -> keys_pb2.RevokeKeyResponse:
        async with self.guard.call(context, "RevokeKey") as fields:
            tenant, fields["key_id"] = fields["tenant"], request.key_id[: key_operations.MAX_TEXT]
            reply = await asyncio.to_thread(
                key_operations.revoke_key, self.store, tenant, request, actor=f"grpc:{tenant}"
            )
            fields["replacement_key_id"] = reply.replacement_key.key_id
            return reply
        raise AssertionError("unreachable")  # pragma: no cover

    async def GetKey(  # noqa: N802 (gRPC method name)
        self, request: keys_pb2.GetKeyRequest, context: grpc.aio.ServicerContext
    ) -> keys_pb2.GetKeyResponse:
        async with self.guard.call(context, "GetKey") as fields:
            fields["key_id"] = request.key_id[: key_operations.MAX_TEXT]
            return await asyncio.to_thread(key_operations.get_key, self.store, fields["tenant"], request)
        raise AssertionError("unreachable")  # pragma: no cover

    async def ListKeys(  # noqa: N802 (gRPC method name)
        self, request: keys_pb2.ListKeysRequest, context: grpc.aio.ServicerContext
    ) -> keys_pb2.ListKeysResponse:
        async with self.guard.call(context, "ListKeys") as fields:
            return await asyncio.to_thread(key_operations.list_keys, self.store, fields["tenant"], request)
        raise AssertionError("unreachable")  # pragma: no cover


def _deadline(context: grpc.aio.ServicerContext) -> float | None:
    """The call's deadline as a ``time.monotonic()`` instant (None: the caller set none)."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


async def _decode_one(data: bytes, field: str) -> tuple[RGBImage | InvalidImageError, float]:
    """The decoded photo (or the error it raised, for per-item statuses) and the seconds it took."""
    started = time.perf_counter()
    try:
        photo: RGBImage | InvalidImageError = await asyncio.to_thread(decode_image_bytes, data)
    except InvalidImageError as error:
        error.field = field
        photo = error
    return photo, time.perf_counter() - started


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
