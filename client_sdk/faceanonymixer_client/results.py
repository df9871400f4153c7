"""What the SDK returns: keys and protections as plain dataclasses, built from the wire messages."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from faceanonymixer_proto.v1 import keys_pb2, protection_pb2

KeyState = Literal["active", "revoked"]

_STATES: dict[int, KeyState] = {keys_pb2.KEY_STATE_ACTIVE: "active", keys_pb2.KEY_STATE_REVOKED: "revoked"}
_STATE_FILTERS: dict[str | None, keys_pb2.KeyState] = {
    None: keys_pb2.KEY_STATE_UNSPECIFIED,
    "active": keys_pb2.KEY_STATE_ACTIVE,
    "revoked": keys_pb2.KEY_STATE_REVOKED,
}


@dataclass(frozen=True)
class KeyInfo:
    """A key as the server describes it; its material never leaves the server."""

    key_id: str
    version: int
    state: KeyState
    subject: str
    labels: dict[str, str]
    profile_id: str
    created: datetime
    revoked: datetime | None
    #: the key this one replaced (its revoked predecessor), if any
    replaces_key_id: str | None
    #: the key that replaced this one, once revoked
    replaced_by_key_id: str | None
    #: the revision of ``profile_id`` (its models and settings) that protects under this key;
    #: None from a server older than the field
    profile_revision: str | None = None

    @classmethod
    def from_message(cls, key: keys_pb2.Key) -> KeyInfo:
        return cls(
            key_id=key.key_id,
            version=key.version,
            state=_STATES[key.state],
            subject=key.subject,
            labels=dict(key.labels),
            profile_id=key.profile_id,
            created=key.create_time.ToDatetime(tzinfo=UTC),
            revoked=key.revoke_time.ToDatetime(tzinfo=UTC) if key.HasField("revoke_time") else None,
            replaces_key_id=key.replaces_key_id or None,
            replaced_by_key_id=key.replaced_by_key_id or None,
            profile_revision=key.profile_revision or None,
        )


@dataclass(frozen=True)
class Revocation:
    """``revoked`` refuses all use from now on; enroll again with ``replacement``."""

    revoked: KeyInfo
    replacement: KeyInfo


@dataclass(frozen=True)
class FaceBox:
    left: int
    top: int
    right: int
    bottom: int


@dataclass(frozen=True)
class Protection:
    """One protected image with what the server said about it."""

    #: the protected image, in the kind the caller gave (see :mod:`faceanonymixer_client.images`)
    image: Any
    key_id: str
    key_version: int
    profile_id: str
    #: where the face was found in the photo, in its pixels
    face_box: FaceBox
    #: seconds per stage: decode, queue, align, optimise, encode, total
    timings: dict[str, float]


def protection_from(
    reply: protection_pb2.ProtectFaceResponse | protection_pb2.ProtectFacesResponse, image: Any
) -> Protection:
    box = reply.face_box
    timings = {
        field.name: getattr(reply.timings, field.name).ToTimedelta().total_seconds()
        for field in reply.timings.DESCRIPTOR.fields
    }
    return Protection(
        image=image,
        key_id=reply.key_id,
        key_version=reply.key_version,
        profile_id=reply.profile_id,
        face_box=FaceBox(box.left, box.top, box.right, box.bottom),
        timings=timings,
    )


def state_filter(state: KeyState | None) -> keys_pb2.KeyState:
    if state not in _STATE_FILTERS:
        raise ValueError(f"state must be 'active', 'revoked' or None, not {state!r}")
    return _STATE_FILTERS[state]
