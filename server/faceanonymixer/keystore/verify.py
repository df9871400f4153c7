"""The integrity check of a key store (``KeyStore.verify``, ``faceanonymixer keys audit --verify``).

It checks the keyed audit chain link by link (a plain SHA-256 prefix only before the keyed
``upgrade`` anchor; epochs change only at ``rotate-kek`` events), the head's MAC, every key row's
MAC under the current integrity key, each key against the log (its create or revoke event, its
replacement), every ``use`` event against its key, and that every key's material opens.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.engine import Connection

from faceanonymixer.keystore import audit
from faceanonymixer.keystore.integrity import IntegrityKeys
from faceanonymixer.keystore.kek import KeyRing
from faceanonymixer.keystore.key_ids import KeyIds
from faceanonymixer.keystore.schema import (
    ACTIONS,
    ACTIVE,
    CREATE,
    GENESIS_HASH,
    REVOKE,
    REVOKED,
    ROTATE_KEK,
    STATES,
    UPGRADE,
    USE,
    audit_events,
    audit_head,
    keys,
)
from faceanonymixer.utils.errors import KeyStoreError

#: more problems than this are counted, not listed
MAX_PROBLEMS = 1000


@dataclass
class IntegrityReport:
    """What ``KeyStore.verify`` found: ``ok`` when ``problems`` is empty."""

    ok: bool
    problems: list[str] = field(default_factory=list)
    keys: int = 0
    events: int = 0


class _Problems:
    def __init__(self) -> None:
        self.items: list[str] = []
        self.dropped = 0

    def add(self, problem: str) -> None:
        if len(self.items) < MAX_PROBLEMS:
            self.items.append(problem)
        else:
            self.dropped += 1

    def listed(self) -> list[str]:
        if self.dropped:
            return [*self.items, f"... and {self.dropped} more problems"]
        return list(self.items)


@dataclass
class _Events:
    count: int = 0
    #: key id -> versions of its create events
    created: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    #: key id -> replacement key ids named by its revoke events
    revoked: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    #: key id -> tenants of its events
    tenants: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    #: key id -> (seq, version) of its use events
    used: dict[str, list[tuple[int, int]]] = field(default_factory=lambda: defaultdict(list))


def verify_store(
    connection: Connection, ring: KeyRing, ids: KeyIds, integrity: IntegrityKeys
) -> IntegrityReport:
    """Run every check in the caller's (snapshot) transaction."""
    problems = _Problems()
    if connection.dialect.name == "sqlite":
        verdicts = [str(row[0]) for row in connection.execute(text("PRAGMA integrity_check"))]
        if verdicts != ["ok"]:
            problems.add(f"SQLite integrity_check: {'; '.join(verdicts[:5])}")
    events = _check_chain(connection, integrity, problems)
    count = _check_keys(connection, ring, ids, integrity, events, problems)
    listed = problems.listed()
    return IntegrityReport(ok=not listed, problems=listed, keys=count, events=events.count)


def _check_chain(connection: Connection, integrity: IntegrityKeys, problems: _Problems) -> _Events:
    events = _Events()
    expected_seq, prev_hash = 1, GENESIS_HASH
    epoch: int | None = None  # the epoch of the keyed links so far; None: still in a plain prefix
    for row in connection.execute(select(audit_events).order_by(audit_events.c.seq)):
        events.count += 1
        seq = int(row.seq)
        if seq != expected_seq:
            problems.add(f"audit event {seq}: expected seq {expected_seq} (events missing or out of order)")
        if row.prev_hash != prev_hash:
            problems.add(f"audit event {seq}: prev_hash does not match the hash of the event before it")
        details = _details(row, problems)
        fields = {
            "prev_hash": row.prev_hash,
            "seq": seq,
            "at": row.at,
            "tenant": row.tenant,
            "action": row.action,
            "key_id": row.key_id,
            "version": int(row.version),
            "actor": row.actor,
            "details": details,
        }
        link_epoch = None if row.mac_epoch is None else int(row.mac_epoch)
        try:
            if link_epoch is None:
                digest = audit.event_hash(**fields)
            else:
                digest = audit.keyed_event_hash(integrity, epoch=link_epoch, **fields)
        except (TypeError, ValueError, KeyStoreError):
            digest = ""
        if digest != row.hash:
            problems.add(f"audit event {seq}: hash does not match its contents (the event was altered)")
        _check_link_epoch(seq, row.action, epoch, link_epoch, problems)
        if link_epoch is not None:
            epoch = link_epoch
        _collect(row, seq, details, events, problems)
        expected_seq, prev_hash = seq + 1, row.hash
    if epoch is not None and epoch != integrity.current_epoch:
        problems.add(
            f"the audit log ends under integrity key epoch {epoch}, the store is at {integrity.current_epoch}"
        )
    head = connection.execute(select(audit_head.c.seq, audit_head.c.hash, audit_head.c.mac)).all()
    if len(head) != 1:
        problems.add(f"audit_head holds {len(head)} rows, not 1")
    else:
        if (int(head[0].seq), head[0].hash) != (expected_seq - 1, prev_hash):
            problems.add(
                f"audit_head says seq {head[0].seq}, but the log ends at seq {expected_seq - 1} "
                "or with another hash (events were removed or the head was altered)"
            )
        if not integrity.head_is_authentic(int(head[0].seq), str(head[0].hash), head[0].mac):
            problems.add("audit_head fails its MAC (the head was re-pointed or altered)")
    return events


def _check_link_epoch(
    seq: int, action: str, before: int | None, link: int | None, problems: _Problems
) -> None:
    """Plain links only before the first keyed one, which is an ``upgrade`` anchor when plain
    links precede it; keyed epochs change only at ``rotate-kek`` events, and only upward."""
    if link is None:
        if before is not None:
            problems.add(f"audit event {seq}: a plain SHA-256 link after the keyed chain began")
        return
    if before is None:
        if seq > 1 and action != UPGRADE:
            problems.add(f"audit event {seq}: the keyed chain begins without an upgrade anchor")
        return
    if action == UPGRADE:
        problems.add(f"audit event {seq}: an upgrade anchor inside the keyed chain")
    if link != before and not (action == ROTATE_KEK and link == before + 1):
        problems.add(f"audit event {seq}: integrity key epoch {link} follows {before} outside a rotation")


def _collect(row: Any, seq: int, details: dict[str, Any], events: _Events, problems: _Problems) -> None:
    if row.action not in ACTIONS:
        problems.add(f"audit event {seq}: unknown action {row.action!r}")
        return
    if row.action in (UPGRADE, ROTATE_KEK):
        if row.key_id or row.tenant:
            problems.add(f"audit event {seq}: a {row.action} event names a key or a tenant")
        return
    if row.action == CREATE:
        events.created[row.key_id].append(int(row.version))
    elif row.action == REVOKE:
        replacement = details.get("replacement_key_id")
        if not isinstance(replacement, str):
            problems.add(f"audit event {seq}: a revoke event without replacement_key_id")
        else:
            events.revoked[row.key_id].append(replacement)
            events.tenants[replacement].add(row.tenant)
    elif row.action == USE:
        events.used[row.key_id].append((seq, int(row.version)))
    events.tenants[row.key_id].add(row.tenant)


def _details(row: Any, problems: _Problems) -> dict[str, Any]:
    try:
        details = json.loads(row.details)
    except (TypeError, ValueError):
        details = None
    if not isinstance(details, dict):
        problems.add(f"audit event {row.seq}: details are not a JSON object")
        return {}
    return details


def _check_keys(
    connection: Connection,
    ring: KeyRing,
    ids: KeyIds,
    integrity: IntegrityKeys,
    events: _Events,
    problems: _Problems,
) -> int:
    rows = {row.key_id: row for row in connection.execute(select(keys).order_by(keys.c.key_id))}
    for row in rows.values():
        _check_key(row, rows, ring, ids, integrity, events, problems)
    for key_id in sorted(set(events.created) | set(events.revoked) | set(events.used)):
        if key_id not in rows:
            problems.add(f"the audit log names key {key_id}, which is not in the store")
    return len(rows)


def _check_key(
    row: Any,
    rows: dict[str, Any],
    ring: KeyRing,
    ids: KeyIds,
    integrity: IntegrityKeys,
    events: _Events,
    problems: _Problems,
) -> None:
    key_id, version = row.key_id, int(row.version)
    where = f"key {key_id}"
    if not integrity.row_is_authentic(row._mapping, current_only=True):
        problems.add(f"{where}: fails its MAC (its state, version, tenant or another column was altered)")
    for seq, used_version in events.used.get(key_id, []):
        if used_version != version:
            problems.add(f"{where}: use event {seq} names version {used_version}, the key is {version}")
    if ids.classify(row.tenant, key_id) != "own":
        problems.add(f"{where}: its id was not issued to its tenant")
    if events.tenants.get(key_id, {row.tenant}) != {row.tenant}:
        problems.add(f"{where}: the audit log names it under another tenant")
    if row.state not in STATES:
        problems.add(f"{where}: unknown state {row.state!r}")
    # where it came from: a create event (version 1), or a revoke event naming it as replacement
    replaces = row.replaces_key_id
    if replaces is None:
        if version != 1 or row.lineage_id != key_id:
            problems.add(f"{where}: replaces no key but is not a version 1 key of its own lineage")
        if events.created.get(key_id) != [1]:
            problems.add(f"{where}: has {len(events.created.get(key_id, []))} create events, not 1")
    else:
        if events.created.get(key_id):
            problems.add(f"{where}: a replacement key with a create event")
        previous = rows.get(replaces)
        if previous is None:
            problems.add(f"{where}: replaces {replaces}, which is not in the store")
        elif (
            previous.replaced_by_key_id != key_id
            or int(previous.version) + 1 != version
            or previous.lineage_id != row.lineage_id
        ):
            problems.add(f"{where}: does not follow {replaces} (version, lineage or link differ)")
        if key_id not in events.revoked.get(replaces, []):
            problems.add(f"{where}: no revoke event of {replaces} names it as the replacement")
    # where it went: a revoked key has exactly one revoke event, naming its replacement
    revokes = events.revoked.get(key_id, [])
    if row.state == REVOKED:
        replacement = rows.get(row.replaced_by_key_id) if row.replaced_by_key_id else None
        if row.revoked_at is None:
            problems.add(f"{where}: revoked without revoked_at")
        if revokes != [row.replaced_by_key_id]:
            problems.add(f"{where}: has {len(revokes)} revoke events, not one naming its replacement")
        if replacement is None:
            problems.add(f"{where}: revoked, but its replacement is not in the store")
        elif (
            int(replacement.version) != version + 1
            or replacement.lineage_id != row.lineage_id
            or replacement.replaces_key_id != key_id
        ):
            problems.add(f"{where}: its replacement {replacement.key_id} has another version or lineage")
    elif row.state == ACTIVE and (revokes or row.replaced_by_key_id or row.revoked_at):
        problems.add(f"{where}: active, but revoked in the audit log or linked to a replacement")
    kek = ring.get(row.kek_id)
    if kek is None:
        problems.add(f"{where}: wrapped under key-encryption key {row.kek_id}, which is not in the keyring")
        return
    try:
        kek.unwrap(bytes(row.wrapped_material), tenant=row.tenant, key_id=key_id, version=version)
    except (KeyStoreError, ValueError, TypeError):
        problems.add(f"{where}: its wrapped material does not open under the key-encryption key")
