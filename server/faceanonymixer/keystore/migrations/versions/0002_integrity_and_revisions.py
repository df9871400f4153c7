"""Tamper evidence, KEK ids and profile revisions: keys.kek_id, keys.profile_revision,
keys.row_mac, audit_events.mac_epoch (and the actions use, rotate-kek, upgrade), audit_head.mac.

The new columns are nullable here: what needs the key-encryption key (the row MACs, the KEK id of
each key, the integrity key, the keyed anchor of the old SHA-256 audit chain) is written by
``KeyStore.open`` in the same transaction, right after this migration (``store.py``,
``_upgrade_legacy_store``).

profile_revision of existing keys: the revision the code of 2026-12-07 computes for the key's
profile with its default settings (``faceanonymixer.engine.profiles.profile_revision``), written out
below so that later code changes cannot move it. A server that ran with ``optimisation``
overrides made its keys under another revision: see docs/security.md and
docs/decisions/2026-12-07-service-hardening.md.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: profiles.profile_revision(profile) of each profile as of this migration (default settings)
REVISIONS_2026_12_07 = {
    "embedded": "7ecc44409b29bb84",
    "embedded-digiface": "360b21a3eba2cad9",
    "ffhq": "ebc5f41412419ee4",
}
_OLD_ACTIONS = "action IN ('create', 'revoke')"
_NEW_ACTIONS = "action IN ('create', 'revoke', 'use', 'rotate-kek', 'upgrade')"
_APPEND_ONLY = "audit_events is append-only: its rows can be neither updated nor deleted"
_SQLITE_TRIGGERS: tuple[str, ...] = (
    f"""CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
    BEGIN SELECT RAISE(ABORT, '{_APPEND_ONLY}'); END""",
    f"""CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
    BEGIN SELECT RAISE(ABORT, '{_APPEND_ONLY}'); END""",
)
_EVENT_COLUMNS = "seq, at, tenant, action, key_id, version, actor, details, prev_hash, hash"


def _audit_events_table(name: str, actions: str, *, with_epoch: bool) -> None:
    columns: list[sa.Column[object]] = [
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
    ]
    if with_epoch:
        columns.append(sa.Column("mac_epoch", sa.Integer(), nullable=True))
    op.create_table(
        name,
        *columns,
        sa.CheckConstraint("seq >= 1", name="ck_audit_events_seq"),
        sa.CheckConstraint(actions, name="ck_audit_events_action"),
    )


def _rebuild_sqlite_audit_events(actions: str, *, with_epoch: bool) -> None:
    """SQLite cannot alter a CHECK constraint: copy the append-only table into a new one."""
    op.execute("DROP TRIGGER IF EXISTS audit_events_no_update")
    op.execute("DROP TRIGGER IF EXISTS audit_events_no_delete")
    op.drop_index("ix_audit_events_tenant_seq", table_name="audit_events")
    op.rename_table("audit_events", "audit_events_previous")
    _audit_events_table("audit_events", actions, with_epoch=with_epoch)
    op.execute(
        f"INSERT INTO audit_events ({_EVENT_COLUMNS}) SELECT {_EVENT_COLUMNS} FROM audit_events_previous"
    )
    op.drop_table("audit_events_previous")  # its implicit DELETE fires no trigger (SQLite docs)
    op.create_index("ix_audit_events_tenant_seq", "audit_events", ["tenant", "seq"])
    for statement in _SQLITE_TRIGGERS:
        op.execute(statement)


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    op.add_column("keys", sa.Column("kek_id", sa.Text(), nullable=True))
    op.add_column("keys", sa.Column("profile_revision", sa.Text(), nullable=True))
    op.add_column("keys", sa.Column("row_mac", sa.Text(), nullable=True))
    keys = sa.table("keys", sa.column("profile_id", sa.Text()), sa.column("profile_revision", sa.Text()))
    for profile_id, profile_revision in REVISIONS_2026_12_07.items():
        op.execute(
            keys.update()
            .where(keys.c.profile_id == profile_id, keys.c.profile_revision.is_(None))
            .values(profile_revision=profile_revision)
        )
    op.add_column("audit_head", sa.Column("mac", sa.Text(), nullable=True))
    if dialect == "sqlite":
        _rebuild_sqlite_audit_events(_NEW_ACTIONS, with_epoch=True)
    else:
        op.add_column("audit_events", sa.Column("mac_epoch", sa.Integer(), nullable=True))
        op.drop_constraint("ck_audit_events_action", "audit_events", type_="check")
        op.create_check_constraint("ck_audit_events_action", "audit_events", _NEW_ACTIONS)


def downgrade() -> None:
    """Only for a store that has no events of the new actions (the CHECK refuses them)."""
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        _rebuild_sqlite_audit_events(_OLD_ACTIONS, with_epoch=False)
    else:
        op.drop_constraint("ck_audit_events_action", "audit_events", type_="check")
        op.create_check_constraint("ck_audit_events_action", "audit_events", _OLD_ACTIONS)
        op.drop_column("audit_events", "mac_epoch")
    op.drop_column("audit_head", "mac")
    op.drop_column("keys", "row_mac")
    op.drop_column("keys", "profile_revision")
    op.drop_column("keys", "kek_id")
