"""Client SDK of FaceAnonyMixer: protect face images and manage keys on a FaceAnonyMixer server.

Light by design: grpcio, protobuf, numpy, Pillow and tqdm; it never imports torch, dlib or the
models::

    from faceanonymixer_client import ProtectionClient, KeyRevokedError

    with ProtectionClient("localhost:50051", token="...") as client:
        key = client.create_key("alice")
        protected = client.protect(photo_rgb, key.key_id, channel_order="RGB")  # numpy in, numpy out

Put protection in front of a recognizer you already run with
:class:`ProtectedRecognizer`, or the adapters with the calling conventions of face_recognition
(:func:`protected_face_encodings`), deepface (:func:`protected_represent`) and InsightFace
(:class:`ProtectedFaceAnalysis`).
"""

from __future__ import annotations

from faceanonymixer_client._version import __version__
from faceanonymixer_client.aio import AsyncProtectionClient
from faceanonymixer_client.client import ProtectionClient
from faceanonymixer_client.errors import (
    CancelledError,
    DeadlineError,
    FaceAnonyMixerError,
    FacePolicyError,
    InvalidArgumentError,
    InvalidImageError,
    KeyNotFoundError,
    KeyRevokedError,
    MultipleFacesError,
    NoFaceError,
    PermissionDeniedError,
    ProfileMismatchError,
    Reason,
    ServerBusyError,
    ServerError,
    ServiceUnavailableError,
    UnauthenticatedError,
)
from faceanonymixer_client.options import MAX_MESSAGE_BYTES, RetryPolicy, TlsConfig, connect
from faceanonymixer_client.recognizer import (
    AsyncProtectedRecognizer,
    ProtectedFaceAnalysis,
    ProtectedRecognizer,
    protected_face_encodings,
    protected_represent,
)
from faceanonymixer_client.results import FaceBox, KeyInfo, Protection, Revocation
from faceanonymixer_proto.v1 import keys_pb2, keys_pb2_grpc, protection_pb2, protection_pb2_grpc

__all__ = [
    "MAX_MESSAGE_BYTES",
    "AsyncProtectedRecognizer",
    "AsyncProtectionClient",
    "CancelledError",
    "DeadlineError",
    "FaceAnonyMixerError",
    "FaceBox",
    "FacePolicyError",
    "InvalidArgumentError",
    "InvalidImageError",
    "KeyInfo",
    "KeyNotFoundError",
    "KeyRevokedError",
    "MultipleFacesError",
    "NoFaceError",
    "PermissionDeniedError",
    "ProfileMismatchError",
    "ProtectedFaceAnalysis",
    "ProtectedRecognizer",
    "Protection",
    "ProtectionClient",
    "Reason",
    "RetryPolicy",
    "Revocation",
    "ServerBusyError",
    "ServerError",
    "ServiceUnavailableError",
    "TlsConfig",
    "UnauthenticatedError",
    "__version__",
    "connect",
    "keys_pb2",
    "keys_pb2_grpc",
    "protected_face_encodings",
    "protected_represent",
    "protection_pb2",
    "protection_pb2_grpc",
]
