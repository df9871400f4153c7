"""Ray Serve's per-call gRPC context, seen as the ``grpc.aio.ServicerContext`` the servicers use.

The servicers of :mod:`faceanonymixer.service.servicers` read the caller's metadata and deadline
and end a refused call with ``context.abort``. Ray's context cannot abort: a deployment sets the
code, details and trailing metadata on it and returns, and Ray's proxy copies them onto the real
call. So :meth:`ServeCallContext.abort` sets them and raises :class:`CallAbortedError`, which the
deployment turns into an (empty, discarded) response. The rich status travels unchanged in the
``grpc-status-details-bin`` trailer, so the SDK's typed errors work through Ray.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NoReturn, Protocol

import grpc
from google.rpc import status_pb2

#: trailing metadata naming the replica that answered (for operators and tests)
REPLICA_METADATA_KEY = "faceanonymixer-replica"
_STATUS_DETAILS_KEY = "grpc-status-details-bin"

Metadata = Sequence[tuple[str, str | bytes]]


class RayGrpcContext(Protocol):
    """What this module uses of ``ray.serve.grpc_util.RayServegRPCContext``."""

    def invocation_metadata(self) -> Metadata: ...

    def set_code(self, code: grpc.StatusCode) -> None: ...

    def set_details(self, details: str) -> None: ...

    def set_trailing_metadata(self, trailing_metadata: list[tuple[str, str | bytes]]) -> None: ...


class CallAbortedError(Exception):
    """The servicer ended the call with ``status``; its code is already set on Ray's context."""

    def __init__(self, status: status_pb2.Status) -> None:
        super().__init__(status.message)
        self.status = status

    def __reduce__(self) -> tuple[type[CallAbortedError], tuple[status_pb2.Status]]:
        return CallAbortedError, (self.status,)  # Ray pickles what a replica raises


class ServeCallContext:
    """The part of ``grpc.aio.ServicerContext`` that the servicers call, over Ray's context."""

    def __init__(self, ray_context: RayGrpcContext, replica: str) -> None:
        self._ray = ray_context
        self._replica: list[tuple[str, str | bytes]] = [(REPLICA_METADATA_KEY, replica)]
        ray_context.set_trailing_metadata(list(self._replica))

    def invocation_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return tuple(self._ray.invocation_metadata())

    def time_remaining(self) -> float | None:
        # Ray's proxy does not forward the caller's deadline (the replica sees no grpc-timeout);
        # None is what grpc.aio says for a call without one. Cancellation still arrives.
        return None

    async def abort(self, code: grpc.StatusCode, details: str, trailing_metadata: Metadata = ()) -> NoReturn:
        self._ray.set_code(code)
        self._ray.set_details(details)
        self._ray.set_trailing_metadata([*self._replica, *trailing_metadata])
        raise CallAbortedError(_status(code, details, trailing_metadata))


def _status(code: grpc.StatusCode, details: str, trailing_metadata: Metadata) -> status_pb2.Status:
    for name, value in trailing_metadata:
        if name == _STATUS_DETAILS_KEY and isinstance(value, bytes):
            return status_pb2.Status.FromString(value)
    return status_pb2.Status(code=code.value[0], message=details)
