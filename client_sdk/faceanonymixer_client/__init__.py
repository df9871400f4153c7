"""Client SDK of FaceAnonyMixer: talk to the protection service over gRPC.

Light by design: it needs grpcio, protobuf and googleapis-common-protos, and never imports torch,
dlib or the models. For now it re-exports the generated wire types and offers :func:`connect`;
the typed client with retries arrives in a later issue::

    from faceanonymixer_client import connect, protection_pb2, protection_pb2_grpc

    with connect("localhost:50051") as channel:
        stub = protection_pb2_grpc.ProtectionServiceStub(channel)
        reply = stub.ProtectFace(protection_pb2.ProtectFaceRequest(image=photo, key_id=key_id))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc

from faceanonymixer._version import __version__
from faceanonymixer.v1 import keys_pb2, keys_pb2_grpc, protection_pb2, protection_pb2_grpc

__all__ = [
    "MAX_MESSAGE_BYTES",
    "__version__",
    "connect",
    "keys_pb2",
    "keys_pb2_grpc",
    "protection_pb2",
    "protection_pb2_grpc",
]

#: the largest message sent or received by default: room for several full-size photos
MAX_MESSAGE_BYTES = 32 * 1024 * 1024


def connect(
    address: str,
    *,
    credentials: grpc.ChannelCredentials | None = None,
    options: Sequence[tuple[str, Any]] | None = None,
) -> grpc.Channel:
    """Open a channel to a FaceAnonyMixer server at ``address`` (``host:port``).

    The channel is secure when ``credentials`` are given and plaintext otherwise. Send and receive
    limits default to :data:`MAX_MESSAGE_BYTES`; entries of ``options`` (gRPC channel arguments)
    override the defaults of the same name. The caller closes the channel (or uses it as a context
    manager).
    """
    merged: dict[str, Any] = {
        "grpc.max_send_message_length": MAX_MESSAGE_BYTES,
        "grpc.max_receive_message_length": MAX_MESSAGE_BYTES,
    }
    merged.update(options or ())
    channel_options = list(merged.items())
    if credentials is None:
        return grpc.insecure_channel(address, options=channel_options)
    return grpc.secure_channel(address, credentials, options=channel_options)
