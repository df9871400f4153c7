"""Alembic environment of the key store.

The store runs its migrations itself (``KeyStore.open``), inside its own transaction, passing the
connection in ``config.attributes["connection"]``; there is no alembic.ini and no offline mode.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if not isinstance(connection, Connection):
        raise RuntimeError(
            "the key store migrations run from KeyStore.open, with config.attributes['connection'] set"
        )
    context.configure(
        connection=connection,
        version_table=context.config.attributes.get("version_table", "keystore_alembic_version"),
        transactional_ddl=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise RuntimeError("the key store migrations have no offline (SQL script) mode")
run_migrations_online()
