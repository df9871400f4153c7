"""The key store's tables, as SQLAlchemy Core metadata.

The migrations in ``migrations/versions`` create them (plus the triggers that keep the audit log
insert-only); this module only describes them for queries. Columns added after the first
migration are nullable there (a store made before them is filled in when ``KeyStore.open``
upgrades it, with the KEK at hand); the store never writes NULL into them.
``tests/unit/test_keystore.py`` checks that the two agree.
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
#: protections under a key, counted per key and outcome (one event per key per flush)
USE = "use"
#: every key re-wrapped under a new key-encryption key, the integrity key rolled
ROTATE_KEK = "rotate-kek"
#: a store made before the keyed audit log: its plain SHA-256 chain anchored under the HMAC one
UPGRADE = "upgrade"
ACTIONS = (CREATE, REVOKE, USE, ROTATE_KEK, UPGRADE)
#: prev_hash of the first audit event
GENESIS_HASH = "0" * 64
#: the alembic version table of the key store (its own name, so a shared database is no problem)
VERSION_TABLE = "keystore_alembic_version"
#: store_meta names: the check value of the current KEK, the current KEK's id, the sealed key-id
#: tag key, the sealed integrity keys ("integrity_key:<epoch>") and the current epoch
KEK_CHECK = "kek_check"
CURRENT_KEK = "current_kek"
ID_TAG_KEY = "id_tag_key"
INTEGRITY_KEY_PREFIX = "integrity_key:"
INTEGRITY_EPOCH = "integrity_epoch"

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
    #: the KEK (KeyEncryptionKey.kek_id) that wraps the material
    Column("kek_id", Text, nullable=True),
    #: profiles.profile_revision of the models and settings the key was made for
    Column("profile_revision", Text, nullable=True),
    #: "<epoch>:<hex HMAC-SHA256>" over every other column (integrity.row_mac)
    Column("row_mac", Text, nullable=True),
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
    #: the integrity key's epoch of an HMAC chain link; NULL: a plain SHA-256 link (before 0002)
    Column("mac_epoch", Integer, nullable=True),
    CheckConstraint("seq >= 1", name="ck_audit_events_seq"),
    CheckConstraint(
        "action IN ('create', 'revoke', 'use', 'rotate-kek', 'upgrade')", name="ck_audit_events_action"
    ),
    Index("ix_audit_events_tenant_seq", "tenant", "seq"),
)

audit_head = Table(
    "audit_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", Integer, nullable=False),
    Column("hash", Text, nullable=False),
    #: "<epoch>:<hex HMAC-SHA256>" of (seq, hash): the head cannot be re-pointed without the key
    Column("mac", Text, nullable=True),
    CheckConstraint("id = 1", name="ck_audit_head_single_row"),
)

store_meta = Table(
    "store_meta",
    metadata,
    Column("name", Text, primary_key=True),
    Column("value", LargeBinary, nullable=False),
)
