"""A key store as the code before migration 0002 made it (faceanonymixer at commit 5a6be81).

The schema comes from migration 0001 itself; the rows are written the way that code's
``KeyStore`` wrote them: material wrapped with AAD (tenant, key id, version), key ids tagged with
the tag key derived from the KEK, a plain SHA-256 audit chain, an unauthenticated head, and a
``kek_check`` under the KEK. The upgrade tests open such a store with today's code. (Checked by
hand: 5a6be81's own ``KeyStore.verify`` passes on what this writes, and a store written by
5a6be81 itself upgrades the same way; docs/decisions/2026-12-07-service-hardening.md.)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa

from faceanonymixer.keystore import database
from faceanonymixer.keystore.audit import canonical_json, event_hash, utc_text
from faceanonymixer.keystore.kek import KeyEncryptionKey
from faceanonymixer.keystore.key_ids import KeyIds


@dataclass
class LegacyKey:
    key_id: str
    tenant: str
    version: int
    material: bytes
    state: str = "active"
    replaced_by: str | None = None


def make_store_0001(
    url: str, kek: KeyEncryptionKey, *, tenant: str = "acme", keys: int = 3
) -> list[LegacyKey]:
    """Create, at ``url``, a store of migration 0001 holding ``keys`` keys of ``tenant``; the first
    is revoked (so there is a replacement). Returns every key, material included."""
    parsed = database.parse_url(url)
    engine = database.create(parsed)
    ids = KeyIds(kek.key_id_tag_key())
    made: list[LegacyKey] = []
    try:
        with database.MIGRATION_LOCK, database.write_transaction(engine) as connection:
            database.migrate(connection, "0001")
            connection.execute(
                sa.text("INSERT INTO store_meta (name, value) VALUES ('kek_check', :value)"),
                {"value": kek.make_check()},
            )
            chain = _Chain(connection)
            for index in range(keys):
                key = LegacyKey(ids.mint(tenant), tenant, 1, os.urandom(32))
                _insert(connection, kek, key, subject=f"subject-{index}", lineage=key.key_id, replaces=None)
                chain.append(tenant, "create", key.key_id, 1, {})
                made.append(key)
            old = made[0]
            new = LegacyKey(ids.mint(tenant), tenant, 2, os.urandom(32))
            _insert(connection, kek, new, subject="subject-0", lineage=old.key_id, replaces=old.key_id)
            connection.execute(
                sa.text(
                    "UPDATE keys SET state = 'revoked', revoked_at = :now, replaced_by_key_id = :new "
                    "WHERE key_id = :old"
                ),
                {"now": _now(), "new": new.key_id, "old": old.key_id},
            )
            old.state, old.replaced_by = "revoked", new.key_id
            chain.append(tenant, "revoke", old.key_id, 1, {"replacement_key_id": new.key_id})
            made.append(new)
    finally:
        engine.dispose()
    return made


def _now() -> str:
    return utc_text(datetime.now(UTC))


def _insert(
    connection: sa.Connection,
    kek: KeyEncryptionKey,
    key: LegacyKey,
    *,
    subject: str,
    lineage: str,
    replaces: str | None,
) -> None:
    connection.execute(
        sa.text(
            "INSERT INTO keys (key_id, tenant, lineage_id, version, state, subject, labels, profile_id, "
            "created_at, revoked_at, replaces_key_id, replaced_by_key_id, wrapped_material) VALUES "
            "(:key_id, :tenant, :lineage, :version, 'active', :subject, :labels, 'embedded', :now, NULL, "
            ":replaces, NULL, :wrapped)"
        ),
        {
            "key_id": key.key_id,
            "tenant": key.tenant,
            "lineage": lineage,
            "version": key.version,
            "subject": subject,
            "labels": canonical_json({"team": "blue"}),
            "now": _now(),
            "replaces": replaces,
            "wrapped": kek.wrap(key.material, tenant=key.tenant, key_id=key.key_id, version=key.version),
        },
    )


class _Chain:
    """The 0001 audit log: sha256(prev_hash + canonical JSON), head updated in place."""

    def __init__(self, connection: sa.Connection) -> None:
        self.connection = connection
        head = connection.execute(sa.text("SELECT seq, hash FROM audit_head WHERE id = 1")).one()
        self.seq, self.hash = int(head.seq), str(head.hash)

    def append(self, tenant: str, action: str, key_id: str, version: int, details: dict[str, str]) -> None:
        seq, at = self.seq + 1, _now()
        digest = event_hash(
            prev_hash=self.hash,
            seq=seq,
            at=at,
            tenant=tenant,
            action=action,
            key_id=key_id,
            version=version,
            actor="legacy",
            details=details,
        )
        self.connection.execute(
            sa.text(
                "INSERT INTO audit_events (seq, at, tenant, action, key_id, version, actor, details, "
                "prev_hash, hash) VALUES (:seq, :at, :tenant, :action, :key_id, :version, 'legacy', "
                ":details, :prev, :hash)"
            ),
            {
                "seq": seq,
                "at": at,
                "tenant": tenant,
                "action": action,
                "key_id": key_id,
                "version": version,
                "details": json.dumps(details, sort_keys=True, separators=(",", ":")),
                "prev": self.hash,
                "hash": digest,
            },
        )
        self.connection.execute(
            sa.text("UPDATE audit_head SET seq = :seq, hash = :hash WHERE id = 1"),
            {"seq": seq, "hash": digest},
        )
        self.seq, self.hash = seq, digest
