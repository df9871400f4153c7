"""Engines, transactions and migrations for the two supported databases.

SQLite (the default embedded store): the file created with mode 0600 (its folder 0700), WAL
journal, ``synchronous=FULL``, a 10 s busy timeout,
foreign keys on, and every write transaction opened with ``BEGIN IMMEDIATE`` (SQLAlchemy's
pysqlite recipe), so writers in several processes queue for the write lock instead of
deadlocking on a lock upgrade. PostgreSQL (psycopg 3): read committed, with ``SELECT ... FOR
UPDATE`` row locks taken by the store, and an advisory lock around migrations so that replicas
starting together migrate once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, exc, text
from sqlalchemy.engine import URL, Connection, make_url

from faceanonymixer.keystore.schema import VERSION_TABLE
from faceanonymixer.utils.errors import KeyStoreError

log = logging.getLogger("faceanonymixer.keystore")

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
BUSY_TIMEOUT_S = 10.0
#: seconds to wait for a PostgreSQL connection (unless the URL sets connect_timeout)
CONNECT_TIMEOUT_S = 10
#: pg_advisory_xact_lock key that serialises migrations of replicas ("FAMKS")
_PG_MIGRATION_LOCK_KEY = 0x46414D4B53
_WRITE = "faceanonymixer_keystore_write"
#: alembic keeps its running migration context in module globals, so one process migrates one
#: store at a time; taken before the database's own lock, always in that order
MIGRATION_LOCK = threading.Lock()


def safe_url(url: URL | str) -> str:
    """The URL with any password hidden, for messages."""
    if isinstance(url, URL):
        return url.render_as_string(hide_password=True)
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparsable URL>"


def one_line(error: BaseException) -> str:
    """The first line of a database error, without SQLAlchemy's statement and parameters."""
    original = getattr(error, "orig", None)
    message = str(original if original is not None else error).strip()
    return (message.splitlines() or [type(error).__name__])[0]


def parse_url(url: str) -> URL:
    """``sqlite:///path`` or ``postgresql://...`` (run on psycopg 3); anything else is refused."""
    try:
        parsed = make_url(url)
    except (exc.ArgumentError, ValueError, TypeError):
        raise KeyStoreError(
            "not a key store URL; use sqlite:///path/to/keys.db or postgresql://user@host/database"
        ) from None
    backend, _, driver = parsed.drivername.partition("+")
    if backend == "sqlite" and driver in ("", "pysqlite"):
        database = parsed.database or ""
        if database in ("", ":memory:") or database.startswith("file:"):
            raise KeyStoreError(
                f"{safe_url(parsed)}: the SQLite key store needs a file path (sqlite:///path/to/keys.db)"
            )
        return parsed.set(drivername="sqlite+pysqlite")
    if backend in ("postgresql", "postgres") and driver in ("", "psycopg"):
        return parsed.set(drivername="postgresql+psycopg")
    raise KeyStoreError(
        f"{safe_url(parsed)}: unsupported key store database; use sqlite:///path or postgresql://..."
    )


def create(url: URL) -> Engine:
    """An engine for a URL from ``parse_url``; makes the SQLite file's folder."""
    if url.get_backend_name() == "sqlite":
        return _create_sqlite(url)
    connect_args = {} if "connect_timeout" in url.query else {"connect_timeout": CONNECT_TIMEOUT_S}
    try:
        return create_engine(url, hide_parameters=True, pool_pre_ping=True, connect_args=connect_args)
    except ImportError:
        raise KeyStoreError(
            "a PostgreSQL key store needs the psycopg driver: pip install 'psycopg[binary]'"
        ) from None


def _create_sqlite(url: URL) -> Engine:
    path = Path(url.database or "").expanduser()
    try:
        if not path.parent.exists():
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # created here, 0600, before SQLite would create it with the umask's mode (often 0644);
        # SQLite gives its -wal and -shm files the database file's mode
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise KeyStoreError(
            f"{safe_url(url)}: cannot create the key store or its folder ({reason})"
        ) from None
    mode = path.stat().st_mode
    if mode & 0o077:
        log.warning(
            "the key store file %s is accessible to other users (mode %04o); run chmod 600 on it",
            path,
            mode & 0o777,
        )
    engine = create_engine(
        url.set(database=str(path)),
        hide_parameters=True,
        connect_args={"check_same_thread": False, "timeout": BUSY_TIMEOUT_S},
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
        # pysqlite must not issue BEGIN itself: the "begin" listener below does
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = FULL")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        immediate = connection.get_execution_options().get(_WRITE, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


@contextlib.contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """A transaction that may write: ``BEGIN IMMEDIATE`` on SQLite; committed unless it raises."""
    with engine.connect() as connection:
        connection.execution_options(**{_WRITE: True})
        with connection.begin():
            yield connection


@contextlib.contextmanager
def read_transaction(engine: Engine, *, snapshot: bool = False) -> Iterator[Connection]:
    """A read-only transaction; ``snapshot`` asks PostgreSQL for one consistent view (SQLite has it)."""
    with engine.connect() as connection:
        if snapshot and engine.dialect.name == "postgresql":
            connection.execution_options(isolation_level="REPEATABLE READ")
        with connection.begin():
            yield connection


def migrate(connection: Connection, target: str = "head") -> None:
    """Upgrade the schema to the newest migration (or ``target``), inside the caller's write
    transaction.

    The caller holds ``MIGRATION_LOCK`` (taken before the transaction began).
    """
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK_KEY})
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS).replace("%", "%%"))
    config.set_main_option("path_separator", "os")
    config.attributes["connection"] = connection
    config.attributes["version_table"] = VERSION_TABLE
    command.upgrade(config, target)
