"""The KeyService's operations as plain functions over a :class:`KeyStore`: request in, response
out, typed errors for bad input. The gRPC servicer runs them off the event loop; the ``keys``
command runs them on the local store, so both validate and answer alike."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from google.protobuf import timestamp_pb2

from faceanonymixer.engine.profiles import PROFILES, profile_revision, with_optimisation_overrides
from faceanonymixer.keystore import KeyRecord, KeyStore
from faceanonymixer.utils.errors import InvalidRequestError
from faceanonymixer_proto.v1 import keys_pb2

if TYPE_CHECKING:
    from faceanonymixer.service.settings import ServiceSettings

MAX_TEXT = 256
MAX_LABELS = 64

_STATES = {"active": keys_pb2.KEY_STATE_ACTIVE, "revoked": keys_pb2.KEY_STATE_REVOKED}
_STATE_FILTERS = {
    keys_pb2.KEY_STATE_UNSPECIFIED: None,
    keys_pb2.KEY_STATE_ACTIVE: "active",
    keys_pb2.KEY_STATE_REVOKED: "revoked",
}


def settings_revision(settings: ServiceSettings) -> str:
    """The revision of the server's profile as ``settings`` run it (optimisation overrides count)."""
    profile = PROFILES.get(settings.profile)
    if profile is None:
        raise InvalidRequestError(f"unknown profile {settings.profile!r}", field="profile")
    try:
        return profile_revision(with_optimisation_overrides(profile, settings.optimisation))
    except (TypeError, ValueError) as error:
        raise InvalidRequestError(f"invalid optimisation overrides: {error}", field="optimisation") from None


def create_key(
    store: KeyStore,
    tenant: str,
    request: keys_pb2.CreateKeyRequest,
    *,
    default_profile: str,
    default_revision: str | None = None,
    actor: str,
) -> keys_pb2.CreateKeyResponse:
    """``default_revision``: the revision keys of ``default_profile`` are made under (the
    server's, with its overrides); a key of another profile gets that profile's own revision."""
    subject = request.subject
    if not subject or len(subject) > MAX_TEXT:
        raise InvalidRequestError(f"subject must be 1 to {MAX_TEXT} characters", field="subject")
    labels = dict(request.labels)
    if len(labels) > MAX_LABELS or any(len(k) > MAX_TEXT or len(v) > MAX_TEXT for k, v in labels.items()):
        raise InvalidRequestError(f"at most {MAX_LABELS} labels of {MAX_TEXT} characters", field="labels")
    profile_id = request.profile_id or default_profile
    if profile_id not in PROFILES:
        raise InvalidRequestError(
            f"unknown profile {profile_id!r}; available: {', '.join(sorted(PROFILES))}", field="profile_id"
        )
    revision = default_revision if profile_id == default_profile and default_revision else None
    record = store.create_key(
        tenant, subject, labels=labels, profile_id=profile_id, profile_revision=revision, actor=actor
    )
    return keys_pb2.CreateKeyResponse(key=key_message(record))


def revoke_key(
    store: KeyStore,
    tenant: str,
    request: keys_pb2.RevokeKeyRequest,
    *,
    actor: str,
    revisions: dict[str, str] | None = None,
) -> keys_pb2.RevokeKeyResponse:
    """``revisions``: profile id -> the revision a replacement of a key of that profile is made
    under (the server's current one)."""
    check_key_id(request.key_id)
    revoked, replacement = store.revoke_key(tenant, request.key_id, actor=actor, revisions=revisions)
    return keys_pb2.RevokeKeyResponse(
        revoked_key=key_message(revoked), replacement_key=key_message(replacement)
    )


def get_key(store: KeyStore, tenant: str, request: keys_pb2.GetKeyRequest) -> keys_pb2.GetKeyResponse:
    check_key_id(request.key_id)
    return keys_pb2.GetKeyResponse(key=key_message(store.get_key(tenant, request.key_id)))


def list_keys(store: KeyStore, tenant: str, request: keys_pb2.ListKeysRequest) -> keys_pb2.ListKeysResponse:
    if request.state not in _STATE_FILTERS:
        raise InvalidRequestError(f"unknown key state {request.state}", field="state")
    if len(request.subject) > MAX_TEXT:
        raise InvalidRequestError(f"subject is longer than {MAX_TEXT} characters", field="subject")
    records, next_token = store.list_keys(
        tenant,
        state=_STATE_FILTERS[request.state],
        subject=request.subject or None,
        page_size=request.page_size,
        page_token=request.page_token,
    )
    return keys_pb2.ListKeysResponse(keys=[key_message(r) for r in records], next_page_token=next_token)


def check_key_id(key_id: str) -> None:
    if not key_id:
        raise InvalidRequestError("key_id is empty", field="key_id")
    if len(key_id) > MAX_TEXT:
        raise InvalidRequestError(f"key_id is longer than {MAX_TEXT} characters", field="key_id")


def key_message(record: KeyRecord) -> keys_pb2.Key:
    message = keys_pb2.Key(
        key_id=record.key_id,
        version=record.version,
        state=_STATES[record.state],
        subject=record.subject,
        labels=record.labels,
        profile_id=record.profile_id,
        profile_revision=record.profile_revision or "",
        replaces_key_id=record.replaces_key_id or "",
        replaced_by_key_id=record.replaced_by_key_id or "",
    )
    message.create_time.CopyFrom(_timestamp(record.created_at))
    if record.revoked_at is not None:
        message.revoke_time.CopyFrom(_timestamp(record.revoked_at))
    return message


def _timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


KeyOperation = Callable[[KeyStore, str, Any], Any]
