"""Errors as ``google.rpc`` rich statuses, following the error table (docs/errors.md).

Every refusal carries an ``ErrorInfo`` (domain :data:`DOMAIN`, a stable ``reason`` clients branch
on); bad fields add a ``BadRequest`` field violation, a full queue a ``RetryInfo``.
"""

from __future__ import annotations

import math
from typing import NoReturn, TypeVar

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from faceanonymixer.keystore.integrity import KeyIntegrityError
from faceanonymixer.utils.errors import (
    InvalidImageError,
    InvalidKeyError,
    InvalidRequestError,
    KeyAccessDeniedError,
    KeyNotFoundError,
    KeyRevokedError,
    KeyStoreError,
    MultipleFacesError,
    NoFaceError,
    ProfileMismatchError,
    ProtectionCancelledError,
)
from faceanonymixer_client.errors import DOMAIN, Reason

E = TypeVar("E", bound=BaseException)


class ServiceError(Exception):
    """A refusal decided by the service itself (not by the engine); carries its full status."""

    def __init__(self, status: status_pb2.Status) -> None:
        super().__init__(status.message)
        self.status = status


def rich_status(
    code: int,
    message: str,
    reason: Reason,
    *,
    field: str | None = None,
    retry_after: float | None = None,
    metadata: dict[str, str] | None = None,
) -> status_pb2.Status:
    details = [error_details_pb2.ErrorInfo(reason=reason.value, domain=DOMAIN, metadata=metadata or {})]
    if field is not None:
        violation = error_details_pb2.BadRequest.FieldViolation(field=field, description=message)
        details.append(error_details_pb2.BadRequest(field_violations=[violation]))
    if retry_after is not None:
        seconds = max(retry_after, 0.001)
        delay = duration_pb2.Duration(seconds=int(seconds), nanos=int(math.modf(seconds)[0] * 1e9))
        details.append(error_details_pb2.RetryInfo(retry_delay=delay))
    packed = []
    for detail in details:
        holder = any_pb2.Any()
        holder.Pack(detail)
        packed.append(holder)
    return status_pb2.Status(code=code, message=message, details=packed)


def status_for(error: BaseException) -> status_pb2.Status:
    """The status a caller gets for ``error``; unexpected errors say nothing about internals."""
    if isinstance(error, ServiceError):
        return error.status
    if isinstance(error, InvalidImageError | InvalidRequestError):
        reason = Reason.INVALID_IMAGE if isinstance(error, InvalidImageError) else Reason.INVALID_ARGUMENT
        return rich_status(code_pb2.INVALID_ARGUMENT, str(error), reason, field=error.field)
    if isinstance(error, NoFaceError):
        return rich_status(code_pb2.FAILED_PRECONDITION, str(error), Reason.NO_FACE)
    if isinstance(error, MultipleFacesError):
        return rich_status(
            code_pb2.FAILED_PRECONDITION,
            str(error),
            Reason.MULTIPLE_FACES,
            metadata={"faces": str(error.count)},
        )
    if isinstance(error, KeyNotFoundError):
        return rich_status(code_pb2.NOT_FOUND, str(error), Reason.KEY_NOT_FOUND)
    if isinstance(error, KeyRevokedError):
        return rich_status(code_pb2.FAILED_PRECONDITION, str(error), Reason.KEY_REVOKED)
    if isinstance(error, ProfileMismatchError):
        metadata = {k: str(v) for k, v in getattr(error, "metadata", {}).items()}
        return rich_status(
            code_pb2.FAILED_PRECONDITION, str(error), Reason.PROFILE_MISMATCH, metadata=metadata
        )
    if isinstance(error, KeyAccessDeniedError):
        return rich_status(code_pb2.PERMISSION_DENIED, str(error), Reason.KEY_ACCESS_DENIED)
    if isinstance(error, InvalidKeyError):
        return rich_status(code_pb2.INVALID_ARGUMENT, str(error), Reason.INVALID_ARGUMENT, field="key_id")
    if isinstance(error, KeyIntegrityError):  # tampering: the details are for the log, not the caller
        return rich_status(code_pb2.INTERNAL, "internal error", Reason.INTERNAL)
    if isinstance(error, KeyStoreError):  # the database went away: worth a retry; details stay in the log
        message = "the key store is unavailable"
        return rich_status(code_pb2.UNAVAILABLE, message, Reason.KEY_STORE_UNAVAILABLE, retry_after=1.0)
    if isinstance(error, ProtectionCancelledError):
        return rich_status(code_pb2.CANCELLED, str(error), Reason.CANCELLED)
    return rich_status(code_pb2.INTERNAL, "internal error", Reason.INTERNAL)


def without_frames(error: E) -> E:
    """``error`` without its traceback, nor any chained error's: a kept error (a per-photo outcome,
    a job's result) must not keep the frames it was raised through alive, with the photos they
    hold, until a full garbage collection. Returns ``error``."""
    seen: set[int] = set()
    stack: list[BaseException] = [error]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        current.__traceback__ = None
        stack.extend(chained for chained in (current.__cause__, current.__context__) if chained is not None)
    return error


async def abort(context: grpc.aio.ServicerContext, status: status_pb2.Status) -> NoReturn:
    """End the call with ``status``; its details travel in ``grpc-status-details-bin``."""
    converted = rpc_status.to_status(status)
    await context.abort(converted.code, converted.details, converted.trailing_metadata)
    raise AssertionError("unreachable: context.abort raises")  # pragma: no cover
