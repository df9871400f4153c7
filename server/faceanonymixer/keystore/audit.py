"""The audit log: insert-only events in one SHA-256 hash chain.

Each event's hash is ``sha256(prev_hash + canonical JSON of its fields)``, hex; the first event's
prev_hash is 64 zeros. ``audit_head`` holds the newest (seq, hash); appending locks it (``SELECT
... FOR UPDATE``), so appends from several processes or replicas take turns and never fork the
chain. Events never hold a subject, labels or key material.
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

from faceanonymixer.keystore.schema import audit_events, audit_head


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def utc_text(moment: datetime) -> str:
    """UTC ISO-8601 with microseconds, e.g. ``2025-01-02T03:04:05.000006+00:00``."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def parse_utc(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


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
    body = canonical_json(
        {
            "seq": seq,
            "at": at,
            "tenant": tenant,
            "action": action,
            "key_id": key_id,
            "version": version,
            "actor": actor,
            "details": dict(details),
        }
    )
    return hashlib.sha256((prev_hash + body).encode("utf-8")).hexdigest()


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


def append(
    connection: Connection,
    *,
    at: str,
    tenant: str,
    action: str,
    key_id: str,
    version: int,
    actor: str,
    details: Mapping[str, Any],
) -> int:
    """Append one event in the caller's write transaction; returns its seq."""
    head = connection.execute(
        select(audit_head.c.seq, audit_head.c.hash).where(audit_head.c.id == 1).with_for_update()
    ).one()
    seq = int(head.seq) + 1
    prev_hash = str(head.hash)
    digest = event_hash(
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
        )
    )
    connection.execute(update(audit_head).where(audit_head.c.id == 1).values(seq=seq, hash=digest))
    return seq


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
    )
