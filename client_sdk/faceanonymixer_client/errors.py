"""Typed errors built from the service's ``google.rpc`` rich statuses.

The service answers every refusal with a status code, an ``ErrorInfo`` (domain :data:`DOMAIN`, a
stable :class:`Reason`), and where it applies a ``BadRequest`` field violation or a ``RetryInfo``.
:func:`error_from_status` turns that into one exception class per row of the error table, so
callers branch with ``except KeyRevokedError`` instead of comparing strings. This module is the
single source of the table: the server's statuses, the CLI's exit codes and the error
reference in docs/errors.md all come from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

DOMAIN = "faceanonymixer.v1"


class Reason(StrEnum):
    """``ErrorInfo.reason`` values: part of the contract, never renamed."""

    INVALID_IMAGE = "INVALID_IMAGE"
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NO_FACE = "NO_FACE"
    MULTIPLE_FACES = "MULTIPLE_FACES"
    KEY_NOT_FOUND = "KEY_NOT_FOUND"
    KEY_REVOKED = "KEY_REVOKED"
    KEY_ACCESS_DENIED = "KEY_ACCESS_DENIED"
    PROFILE_MISMATCH = "PROFILE_MISMATCH"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    QUEUE_FULL = "QUEUE_FULL"
    DEADLINE_TOO_SHORT = "DEADLINE_TOO_SHORT"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    CANCELLED = "CANCELLED"
    NOT_SERVING = "NOT_SERVING"
    KEY_STORE_UNAVAILABLE = "KEY_STORE_UNAVAILABLE"
    INTERNAL = "INTERNAL"


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


class FaceAnonyMixerError(Exception):
    """Base class of every error the SDK raises; carries what the server said."""

    #: exit code of the ``faceanonymixer`` CLI for this kind of error
    exit_code: int = 1
    #: whether sending the same call again may succeed (the SDK's retry policy uses it)
    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode | None = None,
        reason: str = "",
        field_violations: tuple[FieldViolation, ...] = (),
        retry_after: float | None = None,
        metadata: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        #: the gRPC status code (None when the SDK refused before calling)
        self.code = code
        #: the ``ErrorInfo.reason`` (a :class:`Reason` value), or ""
        self.reason = reason
        #: the ``BadRequest`` field violations: which request field was wrong, and why
        self.field_violations = field_violations
        #: seconds the server asked the client to wait before retrying (``RetryInfo``)
        self.retry_after = retry_after
        #: the ``ErrorInfo.metadata`` (for example ``faces`` of MULTIPLE_FACES)
        self.metadata = metadata or {}
        #: which of the caller's inputs the error is about (a file name, or ``images[2]``), when known
        self.input: str | None = None

    def __str__(self) -> str:
        label = ", ".join(part for part in (self.code.name if self.code else "", self.reason) if part)
        return f"{self.message} ({label})" if label else self.message


class InvalidImageError(FaceAnonyMixerError, ValueError):
    """Not an image, an unsupported or truncated file, a decompression bomb, too small or too big."""

    exit_code = 2


class InvalidArgumentError(FaceAnonyMixerError, ValueError):
    """A request field other than the image is malformed (a size, a format, a page token)."""

    exit_code = 2


class FacePolicyError(FaceAnonyMixerError):
    """The image is valid but the face policy cannot be met."""

    exit_code = 3


class NoFaceError(FacePolicyError):
    """No face was found in the image."""


class MultipleFacesError(FacePolicyError):
    """Several faces were found; the policy asks for exactly one (``metadata['faces']``)."""


class KeyNotFoundError(FaceAnonyMixerError, LookupError):
    """No key with this id exists for the caller (or the id is malformed)."""

    exit_code = 4


class KeyRevokedError(FaceAnonyMixerError):
    """The key was revoked and refuses all use; its replacement has a new key id."""

    exit_code = 4


class ProfileMismatchError(FaceAnonyMixerError):
    """The key belongs to a model profile this server does not run."""

    exit_code = 4


class UnauthenticatedError(FaceAnonyMixerError):
    """No bearer token, or one the server does not know."""

    exit_code = 5


class PermissionDeniedError(FaceAnonyMixerError, PermissionError):
    """The key was not issued to the caller's tenant (says nothing about whether it exists)."""

    exit_code = 5


class ServerBusyError(FaceAnonyMixerError):
    """The server's queue is full (RESOURCE_EXHAUSTED); ``retry_after`` says when to try again."""

    exit_code = 6
    retryable = True


class ServiceUnavailableError(FaceAnonyMixerError):
    """The server cannot be reached, is not serving yet or is shutting down, or its key store is
    down (UNAVAILABLE)."""

    exit_code = 6
    retryable = True


class DeadlineError(FaceAnonyMixerError, TimeoutError):
    """The call's deadline passed, or is too short for the work (``reason`` DEADLINE_TOO_SHORT:
    refused before any work started). The work was stopped."""

    exit_code = 7


class CancelledError(FaceAnonyMixerError):
    """The call was cancelled; the work was stopped."""

    exit_code = 7


class ServerError(FaceAnonyMixerError):
    """An internal error of the server, or a status this SDK does not know."""


def error_row(error: FaceAnonyMixerError) -> ErrorRow | None:
    """The row of the error table that ``error`` belongs to (None: an error outside the table)."""
    return next((row for row in ERROR_TABLE if isinstance(error, row.error)), None)


@dataclass(frozen=True)
class ErrorRow:
    """One row of the error table."""

    condition: str
    code: grpc.StatusCode
    reasons: tuple[Reason, ...]
    error: type[FaceAnonyMixerError]


#: the error table: what the server answers for each condition, and the exception the SDK raises
ERROR_TABLE: tuple[ErrorRow, ...] = (
    ErrorRow(
        "not an image, unsupported format, truncated, decompression bomb, too small or too big",
        grpc.StatusCode.INVALID_ARGUMENT,
        (Reason.INVALID_IMAGE,),
        InvalidImageError,
    ),
    ErrorRow(
        "a malformed request field (output size or format, page token, empty list)",
        grpc.StatusCode.INVALID_ARGUMENT,
        (Reason.INVALID_ARGUMENT,),
        InvalidArgumentError,
    ),
    ErrorRow("no face in the image", grpc.StatusCode.FAILED_PRECONDITION, (Reason.NO_FACE,), NoFaceError),
    ErrorRow(
        "several faces in the image",
        grpc.StatusCode.FAILED_PRECONDITION,
        (Reason.MULTIPLE_FACES,),
        MultipleFacesError,
    ),
    ErrorRow(
        "unknown or malformed key id", grpc.StatusCode.NOT_FOUND, (Reason.KEY_NOT_FOUND,), KeyNotFoundError
    ),
    ErrorRow("revoked key", grpc.StatusCode.FAILED_PRECONDITION, (Reason.KEY_REVOKED,), KeyRevokedError),
    ErrorRow(
        "key of another model profile",
        grpc.StatusCode.FAILED_PRECONDITION,
        (Reason.PROFILE_MISMATCH,),
        ProfileMismatchError,
    ),
    ErrorRow(
        "missing or unknown bearer token",
        grpc.StatusCode.UNAUTHENTICATED,
        (Reason.UNAUTHENTICATED,),
        UnauthenticatedError,
    ),
    ErrorRow(
        "another tenant's key id (existence never revealed)",
        grpc.StatusCode.PERMISSION_DENIED,
        (Reason.KEY_ACCESS_DENIED,),
        PermissionDeniedError,
    ),
    ErrorRow(
        "queue full (with RetryInfo)",
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        (Reason.QUEUE_FULL,),
        ServerBusyError,
    ),
    ErrorRow(
        "not serving yet or shutting down; key store down; server unreachable",
        grpc.StatusCode.UNAVAILABLE,
        (Reason.NOT_SERVING, Reason.KEY_STORE_UNAVAILABLE),
        ServiceUnavailableError,
    ),
    ErrorRow(
        "deadline too short for the work, or passed while working (work stopped)",
        grpc.StatusCode.DEADLINE_EXCEEDED,
        (Reason.DEADLINE_TOO_SHORT, Reason.DEADLINE_EXCEEDED),
        DeadlineError,
    ),
    ErrorRow("call cancelled (work stopped)", grpc.StatusCode.CANCELLED, (Reason.CANCELLED,), CancelledError),
    ErrorRow("internal error", grpc.StatusCode.INTERNAL, (Reason.INTERNAL,), ServerError),
)

_BY_REASON = {reason.value: row.error for row in ERROR_TABLE for reason in row.reasons}
# a status without ErrorInfo (from gRPC itself: no connection, deadline, cancel, size limits)
_BY_CODE: dict[grpc.StatusCode, type[FaceAnonyMixerError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: KeyNotFoundError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ServerBusyError,
    grpc.StatusCode.UNAVAILABLE: ServiceUnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineError,
    grpc.StatusCode.CANCELLED: CancelledError,
}
_CODES_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


def error_from_status(status: status_pb2.Status) -> FaceAnonyMixerError:
    """The typed error for a ``google.rpc.Status`` (a failed call's, or one stream item's)."""
    code = _CODES_BY_NUMBER.get(status.code, grpc.StatusCode.UNKNOWN)
    reason, metadata, retry_after = "", {}, None
    violations: list[FieldViolation] = []
    for detail in status.details:
        info, bad_request, retry = (
            error_details_pb2.ErrorInfo(),
            error_details_pb2.BadRequest(),
            error_details_pb2.RetryInfo(),
        )
        if detail.Unpack(info):
            reason, metadata = info.reason, dict(info.metadata)
        elif detail.Unpack(bad_request):
            violations.extend(FieldViolation(v.field, v.description) for v in bad_request.field_violations)
        elif detail.Unpack(retry):
            retry_after = retry.retry_delay.ToTimedelta().total_seconds()
    # a RESOURCE_EXHAUSTED without ErrorInfo is gRPC's own message-size limit: not worth retrying
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and not reason:
        error_type: type[FaceAnonyMixerError] = InvalidArgumentError
    else:
        error_type = _BY_REASON.get(reason) or _BY_CODE.get(code, ServerError)
    return error_type(
        status.message,
        code=code,
        reason=reason,
        field_violations=tuple(violations),
        retry_after=retry_after,
        metadata=metadata,
    )


def error_from_rpc(error: grpc.RpcError) -> FaceAnonyMixerError:
    """The typed error for a failed gRPC call (sync or asyncio)."""
    # sync calls and grpc.aio's AioRpcError both offer code(), details(), trailing_metadata()
    status = rpc_status.from_call(error)
    if status is None:  # no rich details: gRPC's own status
        code = error.code()
        status = status_pb2.Status(code=code.value[0], message=error.details() or code.name)
    return error_from_status(status)
