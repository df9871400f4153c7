"""gRPC method handlers whose request parsing never fails the call from inside gRPC.

The generated ``add_*Servicer_to_server`` functions parse requests with ``FromString``; bytes that
are not a valid message then end the call with UNKNOWN and a Python class name, never reaching
the servicer, its metrics or its access log. These handlers parse the same way but hand a
:class:`MalformedRequest` to the servicer instead, which refuses it with INVALID_ARGUMENT (reason
MALFORMED_REQUEST) like any other bad request (``CallGuard``).
"""

from __future__ import annotations

from functools import partial
from types import ModuleType
from typing import Any

import grpc
from google.protobuf.message import DecodeError, Message


class MalformedRequest:
    """What a servicer method receives for bytes that do not parse as its request message."""

    __slots__ = ("message_name", "reason")

    def __init__(self, message_name: str, reason: str) -> None:
        self.message_name = message_name
        self.reason = reason

    def __repr__(self) -> str:
        return f"MalformedRequest({self.message_name}: {self.reason})"


def _parse(message_class: type[Message], data: bytes) -> Message | MalformedRequest:
    try:
        return message_class.FromString(data)
    except (DecodeError, ValueError, TypeError) as error:
        return MalformedRequest(message_class.DESCRIPTOR.name, str(error) or type(error).__name__)


def tolerant_handler(servicer: Any, module: ModuleType, service: str) -> grpc.GenericRpcHandler:
    """The handler of ``service`` (a service of the generated ``module``, e.g. ``protection_pb2``)
    calling ``servicer``'s methods, unary-unary and unary-stream alike."""
    descriptor = module.DESCRIPTOR.services_by_name[service]
    handlers = {}
    for method in descriptor.methods:
        if method.client_streaming:
            raise ValueError(f"{descriptor.full_name}/{method.name}: client streaming is not handled")
        request_class = getattr(module, method.input_type.name)
        response_class = getattr(module, method.output_type.name)
        make = (
            grpc.unary_stream_rpc_method_handler
            if method.server_streaming
            else grpc.unary_unary_rpc_method_handler
        )
        handlers[method.name] = make(
            getattr(servicer, method.name),
            request_deserializer=partial(_parse, request_class),
            response_serializer=response_class.SerializeToString,
        )
    return grpc.method_handlers_generic_handler(descriptor.full_name, handlers)
