"""The audit log: insert-only events in one keyed hash chain.

Each event's ``hash`` is ``HMAC-SHA256(audit key of its epoch, prev_hash + canonical JSON of its
fields and epoch)``, hex (``integrity.py``); the first event's prev_hash is 64 zeros. Events of a
store made before the keyed chain (``mac_epoch`` NULL) were linked with plain
``sha256(prev_hash + canonical JSON)``; the upgrade appended a keyed ``upgrade`` event after
them, which anchors them. ``audit_head`` holds the newest (seq, hash) and its MAC; appending
locks it (``SELECT ... FOR UPDATE``), so appends from several processes or replicas take turns and
never fork the chain. Events never hold a subject, labels, image data or key material.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection

from faceanonymixer.keystore.integrity import IntegrityKeys
from faceanonymixer.keystore.schema import audit_events, audit_head


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def utc_text(moment: datetime) -> str:
    """UTC ISO-8601 with microseconds, e.g. ``2025-01-02T03:04:05.000006+00:00``."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def parse_utc(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _body(
    *,
    seq: int,
    at: str,
    tenant: str,
    action: str,
    key_id: str,
    version: int,
    actor: str,
    details: Mapping[str, Any],
    epoch: int | None = None,
) -> dict[str, Any]:
    body = {
        "seq": seq,
        "at": at,
        "tenant": tenant,
        "action": action,
        "key_id": key_id,
        "version": version,
        "actor": actor,
        "details": dict(details),
    }
    if epoch is not None:
        body["epoch"] = epoch
    return body


def event_hash(
    *,
    prev_hash: str,
    seq: int,
    at: str,
    tenant: str,
    action: str,
    key_id: str,
    version: int,
    actor: str,
    details: Mapping[str, Any],
) -> str:
    """The plain SHA-256 link of an event written before the keyed chain (``mac_epoch`` NULL)."""
    body = canonical_json(
        _body(
            seq=seq,
            at=at,
            tenant=tenant,
            action=action,
            key_id=key_id,
            version=version,
            actor=actor,
            details=details,
        )
    )
    return hashlib.sha256((prev_hash + body).encode("utf-8")).hexdigest()


def keyed_event_hash(
    integrity: IntegrityKeys,
    *,
    epoch: int,
    prev_hash: str,
    seq: int,
    at: str,
    tenant: str,
    action: str,
    key_id: str,
    version: int,
    actor: str,
    details: Mapping[str, Any],
) -> str:
    """The HMAC link of an event under the audit key of ``epoch``."""
    body = _body(
        seq=seq,
        at=at,
        tenant=tenant,
        action=action,
        key_id=key_id,
        version=version,
        actor=actor,
        details=details,
        epoch=epoch,
    )
    return integrity.event_mac(prev_hash, canonical_json(body).encode("utf-8"), epoch=epoch)


@dataclass(frozen=True)
class AuditEvent:
    """One audit event, as stored."""

    seq: int
    at: datetime
    tenant: str
    action: str
    key_id: str
    version: int
    actor: str
    details: dict[str, Any] = field(default_factory=dict)
    prev_hash: str = ""
    hash: str = ""
    #: the integrity key's epoch that keys this link; None: a plain SHA-256 link (before 0002)
    mac_epoch: int | None = None


def lock_head(connection: Connection) -> tuple[int, str]:
    """Lock the audit head for this transaction (every writer takes it first); its (seq, hash)."""
    head = connection.execute(
        select(audit_head.c.seq, audit_head.c.hash).where(audit_head.c.id == 1).with_for_update()
    ).one()
    return int(head.seq), str(head.hash)


def append(
    connection: Connection,
    integrity: IntegrityKeys,
    *,
    at: str,
    tenant: str,
    action: str,
    key_id: str,
    version: int,
    actor: str,
    details: Mapping[str, Any],
) -> int:
    """Append one event, keyed under the current epoch, in the caller's write transaction; returns
    its seq."""
    head_seq, prev_hash = lock_head(connection)
    seq = head_seq + 1
    epoch = integrity.current_epoch
    digest = keyed_event_hash(
        integrity,
        epoch=epoch,
        prev_hash=prev_hash,
        seq=seq,
        at=at,
        tenant=tenant,
        action=action,
        key_id=key_id,
        version=version,
        actor=actor,
        details=details,
    )
    connection.execute(
        insert(audit_events).values(
            seq=seq,
            at=at,
            tenant=tenant,
            action=action,
            key_id=key_id,
            version=version,
            actor=actor,
            details=canonical_json(dict(details)),
            prev_hash=prev_hash,
            hash=digest,
            mac_epoch=epoch,
        )
    )
    write_head(connection, integrity, seq, digest)
    return seq


def write_head(connection: Connection, integrity: IntegrityKeys, seq: int, head_hash: str) -> None:
    mac = integrity.head_mac(seq, head_hash)
    connection.execute(
        update(audit_head).where(audit_head.c.id == 1).values(seq=seq, hash=head_hash, mac=mac)
    )


def from_row(row: Any) -> AuditEvent:
    return AuditEvent(
        seq=int(row.seq),
        at=parse_utc(row.at),
        tenant=row.tenant,
        action=row.action,
        key_id=row.key_id,
        version=int(row.version),
        actor=row.actor,
        details=json.loads(row.details),
        prev_hash=row.prev_hash,
        hash=row.hash,
        mac_epoch=None if row.mac_epoch is None else int(row.mac_epoch),
    )
