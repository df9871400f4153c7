"""The key store: keys, an insert-only hash-chained audit log, its head, and store metadata.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_GENESIS_HASH = "0" * 64
_APPEND_ONLY = "audit_events is append-only: its rows can be neither updated nor deleted"

_SQLITE_TRIGGERS: tuple[str, ...] = (
    f"""CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
    BEGIN SELECT RAISE(ABORT, '{_APPEND_ONLY}'); END""",
    f"""CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
    BEGIN SELECT RAISE(ABORT, '{_APPEND_ONLY}'); END""",
)
_POSTGRESQL_TRIGGERS: tuple[str, ...] = (
    f"""CREATE FUNCTION keystore_audit_events_append_only() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION '{_APPEND_ONLY}' USING ERRCODE = 'insufficient_privilege';
    END;
    $$""",
    """CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION keystore_audit_events_append_only()""",
    """CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION keystore_audit_events_append_only()""",
)


def upgrade() -> None:
    op.create_table(
        "keys",
        sa.Column("key_id", sa.Text(), primary_key=True),
        sa.Column("tenant", sa.Text(), nullable=False),
        sa.Column("lineage_id", sa.Text(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("labels", sa.Text(), nullable=False),
        sa.Column("profile_id", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Text(), nullable=False),
        sa.Column("revoked_at", sa.Text(), nullable=True),
        sa.Column("replaces_key_id", sa.Text(), nullable=True),
        sa.Column("replaced_by_key_id", sa.Text(), nullable=True),
        sa.Column("wrapped_material", sa.LargeBinary(), nullable=False),
        sa.CheckConstraint("version >= 1", name="ck_keys_version"),
        sa.CheckConstraint("state IN ('active', 'revoked')", name="ck_keys_state"),
        sa.UniqueConstraint("lineage_id", "version", name="uq_keys_lineage_version"),
        sa.ForeignKeyConstraint(["replaces_key_id"], ["keys.key_id"], name="fk_keys_replaces_key_id"),
        sa.ForeignKeyConstraint(["replaced_by_key_id"], ["keys.key_id"], name="fk_keys_replaced_by_key_id"),
    )
    op.create_index("ix_keys_tenant_key_id", "keys", ["tenant", "key_id"])
    op.create_index("ix_keys_tenant_subject_key_id", "keys", ["tenant", "subject", "key_id"])

    op.create_table(
        "audit_events",
        sa.Column("seq", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("at", sa.Text(), nullable=False),
        sa.Column("tenant", sa.Text(), nullable=False),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("key_id", sa.Text(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column("details", sa.Text(), nullable=False),
        sa.Column("prev_hash", sa.Text(), nullable=False),
        sa.Column("hash", sa.Text(), nullable=False),
        sa.CheckConstraint("seq >= 1", name="ck_audit_events_seq"),
        sa.CheckConstraint("action IN ('create', 'revoke')", name="ck_audit_events_action"),
    )
    op.create_index("ix_audit_events_tenant_seq", "audit_events", ["tenant", "seq"])

    audit_head = op.create_table(
        "audit_head",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("hash", sa.Text(), nullable=False),
        sa.CheckConstraint("id = 1", name="ck_audit_head_single_row"),
    )
    op.bulk_insert(audit_head, [{"id": 1, "seq": 0, "hash": _GENESIS_HASH}])

    op.create_table(
        "store_meta",
        sa.Column("name", sa.Text(), primary_key=True),
        sa.Column("value", sa.LargeBinary(), nullable=False),
    )

    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        statements = _SQLITE_TRIGGERS
    elif dialect == "postgresql":
        statements = _POSTGRESQL_TRIGGERS
    else:
        raise RuntimeError(f"the key store supports SQLite and PostgreSQL, not {dialect}")
    for statement in statements:
        op.execute(statement)


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS audit_events_no_update")
        op.execute("DROP TRIGGER IF EXISTS audit_events_no_delete")
    elif dialect == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_events_no_truncate ON audit_events")
        op.execute("DROP TRIGGER IF EXISTS audit_events_append_only ON audit_events")
        op.execute("DROP FUNCTION IF EXISTS keystore_audit_events_append_only()")
    op.drop_table("store_meta")
    op.drop_table("audit_head")
    op.drop_index("ix_audit_events_tenant_seq", table_name="audit_events")
    op.drop_table("audit_events")
    op.drop_index("ix_keys_tenant_subject_key_id", table_name="keys")
    op.drop_index("ix_keys_tenant_key_id", table_name="keys")
    op.drop_table("keys")
