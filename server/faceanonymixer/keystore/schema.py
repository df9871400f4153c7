"""The key store's tables, as SQLAlchemy Core metadata.

The migrations in ``migrations/versions`` create them (plus the triggers that keep the audit log
insert-only); this module only describes them for queries. ``tests/test_keystore.py`` checks that
the two agree.
"""

from __future__ import annotations

from sqlalchemy import (
    CheckConstraint,
    Column,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Table,
    Text,
    UniqueConstraint,
)

ACTIVE = "active"
REVOKED = "revoked"
STATES = (ACTIVE, REVOKED)
CREATE = "create"
REVOKE = "revoke"
ACTIONS = (CREATE, REVOKE)
#: prev_hash of the first audit event
GENESIS_HASH = "0" * 64
#: the alembic version table of the key store (its own name, so a shared database is no problem)
VERSION_TABLE = "keystore_alembic_version"
KEK_CHECK = "kek_check"

metadata = MetaData()

keys = Table(
    "keys",
    metadata,
    Column("key_id", Text, primary_key=True),
    Column("tenant", Text, nullable=False),
    Column("lineage_id", Text, nullable=False),
    Column("version", Integer, nullable=False),
    Column("state", Text, nullable=False),
    Column("subject", Text, nullable=False),
    Column("labels", Text, nullable=False),
    Column("profile_id", Text, nullable=False),
    Column("created_at", Text, nullable=False),
    Column("revoked_at", Text, nullable=True),
    Column("replaces_key_id", Text, nullable=True),
    Column("replaced_by_key_id", Text, nullable=True),
    Column("wrapped_material", LargeBinary, nullable=False),
    CheckConstraint("version >= 1", name="ck_keys_version"),
    CheckConstraint("state IN ('active', 'revoked')", name="ck_keys_state"),
    UniqueConstraint("lineage_id", "version", name="uq_keys_lineage_version"),
    ForeignKeyConstraint(["replaces_key_id"], ["keys.key_id"], name="fk_keys_replaces_key_id"),
    ForeignKeyConstraint(["replaced_by_key_id"], ["keys.key_id"], name="fk_keys_replaced_by_key_id"),
    Index("ix_keys_tenant_key_id", "tenant", "key_id"),
    Index("ix_keys_tenant_subject_key_id", "tenant", "subject", "key_id"),
)

audit_events = Table(
    "audit_events",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("at", Text, nullable=False),
    Column("tenant", Text, nullable=False),
    Column("action", Text, nullable=False),
    Column("key_id", Text, nullable=False),
    Column("version", Integer, nullable=False),
    Column("actor", Text, nullable=False),
    Column("details", Text, nullable=False),
    Column("prev_hash", Text, nullable=False),
    Column("hash", Text, nullable=False),
    CheckConstraint("seq >= 1", name="ck_audit_events_seq"),
    CheckConstraint("action IN ('create', 'revoke')", name="ck_audit_events_action"),
    Index("ix_audit_events_tenant_seq", "tenant", "seq"),
)

audit_head = Table(
    "audit_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", Integer, nullable=False),
    Column("hash", Text, nullable=False),
    CheckConstraint("id = 1", name="ck_audit_head_single_row"),
)

store_meta = Table(
    "store_meta",
    metadata,
    Column("name", Text, primary_key=True),
    Column("value", LargeBinary, nullable=False),
)
