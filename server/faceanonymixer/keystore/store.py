"""The key store: protection keys, wrapped under the KEK, in SQLite or PostgreSQL.

Every key has its own key id and version. Revoking a key marks it revoked and, in the same
transaction, issues its replacement (a new key id, the next version, fresh material, the same
subject, labels and profile); every create and revoke is appended to the hash-chained audit log.
Key material exists in clear only in memory: it is stored wrapped, and never logged or put into
an error message.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from sqlalchemy import Engine, exc, insert, select, update
from sqlalchemy.engine import Connection

from faceanonymixer.errors import (
    FaceAnonyMixerError,
    InvalidRequestError,
    KeyAccessDeniedError,
    KeyNotFoundError,
    KeyRevokedError,
    KeyStoreError,
    ProfileMismatchError,
    WrongKeyEncryptionKeyError,
)
from faceanonymixer.keystore import audit, database, paging
from faceanonymixer.keystore.audit import AuditEvent
from faceanonymixer.keystore.kek import KeyEncryptionKey
from faceanonymixer.keystore.key_ids import KeyIds
from faceanonymixer.keystore.schema import (
    ACTIVE,
    CREATE,
    KEK_CHECK,
    REVOKE,
    REVOKED,
    STATES,
    keys,
    store_meta,
)
from faceanonymixer.keystore.verify import IntegrityReport, verify_store

if TYPE_CHECKING:
    from faceanonymixer.protection_key import ProtectionKey

MATERIAL_BYTES = 32


@dataclass(frozen=True)
class KeyRecord:
    """What the store knows about one key: metadata only, never its material."""

    key_id: str
    tenant: str
    version: int
    state: str
    subject: str
    labels: dict[str, str]
    profile_id: str
    created_at: datetime
    revoked_at: datetime | None
    replaces_key_id: str | None
    replaced_by_key_id: str | None

    @property
    def active(self) -> bool:
        return self.state == ACTIVE


def _record(row: Any) -> KeyRecord:
    return KeyRecord(
        key_id=row.key_id,
        tenant=row.tenant,
        version=int(row.version),
        state=row.state,
        subject=row.subject,
        labels=dict(json.loads(row.labels)),
        profile_id=row.profile_id,
        created_at=audit.parse_utc(row.created_at),
        revoked_at=None if row.revoked_at is None else audit.parse_utc(row.revoked_at),
        replaces_key_id=row.replaces_key_id,
        replaced_by_key_id=row.replaced_by_key_id,
    )


def _labels(labels: Mapping[str, str] | None) -> dict[str, str]:
    if labels is None:
        return {}
    if not isinstance(labels, Mapping) or not all(
        isinstance(name, str) and isinstance(value, str) for name, value in labels.items()
    ):
        raise InvalidRequestError("labels must map strings to strings", field="labels")
    return dict(labels)


def _text(value: object, field: str, *, allow_empty: bool = True) -> str:
    if not isinstance(value, str) or (not allow_empty and not value):
        raise InvalidRequestError(
            f"{field} must be a {'' if allow_empty else 'non-empty '}string", field=field
        )
    if "\0" in value:
        raise InvalidRequestError(f"{field} must not contain NUL characters", field=field)
    return value


class KeyStore:
    """Protection keys of many tenants. Thread-safe; several processes may share one database."""

    def __init__(self, engine: Engine, kek: KeyEncryptionKey, *, url: str) -> None:
        """Use ``KeyStore.open``; this wraps an engine that is already migrated and checked."""
        self._engine = engine
        self._kek = kek
        self._ids = KeyIds(kek.key_id_tag_key())
        self._url = url
        self._closed = False
        self._lock = threading.Lock()

    # -- opening and closing ----------------------------------------------------------------------

    @classmethod
    def open(cls, url: str, kek: KeyEncryptionKey) -> KeyStore:
        """Open (creating and migrating if needed) the store at ``sqlite:///path`` or ``postgresql://...``."""
        if not isinstance(kek, KeyEncryptionKey):
            raise KeyStoreError("KeyStore.open needs a KeyEncryptionKey")
        parsed = database.parse_url(url)
        shown = database.safe_url(parsed)
        engine = database.create(parsed)
        try:
            with database.MIGRATION_LOCK, database.write_transaction(engine) as connection:
                database.migrate(connection)
                cls._check_kek(connection, kek, shown)
        except FaceAnonyMixerError:
            engine.dispose()
            raise
        except Exception as error:
            engine.dispose()
            raise KeyStoreError(
                f"cannot open the key store at {shown}: {database.one_line(error)}"
            ) from error
        return cls(engine, kek, url=shown)

    @staticmethod
    def _check_kek(connection: Connection, kek: KeyEncryptionKey, shown: str) -> None:
        check = connection.execute(
            select(store_meta.c.value).where(store_meta.c.name == KEK_CHECK).with_for_update()
        ).scalar_one_or_none()
        if check is None:
            connection.execute(insert(store_meta).values(name=KEK_CHECK, value=kek.make_check()))
        elif not kek.opens_check(bytes(check)):
            raise WrongKeyEncryptionKeyError(
                f"the key-encryption key does not open this key store ({shown}); "
                "use the key it was created with"
            )

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"KeyStore({self._url!r})"

    @property
    def url(self) -> str:
        """The database URL, password hidden."""
        return self._url

    # -- keys -------------------------------------------------------------------------------------

    def create_key(
        self,
        tenant: str,
        subject: str,
        *,
        labels: Mapping[str, str] | None = None,
        profile_id: str,
        actor: str,
    ) -> KeyRecord:
        """A new active key, version 1, with fresh random material."""
        tenant = _text(tenant, "tenant")
        subject = _text(subject, "subject")
        label_map = _labels(labels)
        profile_id = _text(profile_id, "profile_id", allow_empty=False)
        actor = _text(actor, "actor")
        key_id = self._ids.mint(tenant)
        now = audit.utc_text(datetime.now(UTC))
        with self._writing("create a key") as connection:
            connection.execute(
                insert(keys).values(
                    key_id=key_id,
                    tenant=tenant,
                    lineage_id=key_id,
                    version=1,
                    state=ACTIVE,
                    subject=subject,
                    labels=audit.canonical_json(label_map),
                    profile_id=profile_id,
                    created_at=now,
                    revoked_at=None,
                    replaces_key_id=None,
                    replaced_by_key_id=None,
                    wrapped_material=self._fresh_material(tenant=tenant, key_id=key_id, version=1),
                )
            )
            audit.append(
                connection,
                at=now,
                tenant=tenant,
                action=CREATE,
                key_id=key_id,
                version=1,
                actor=actor,
                details={},
            )
            row = self._row(connection, tenant, key_id)
        return _record(row)

    def revoke_key(self, tenant: str, key_id: str, *, actor: str) -> tuple[KeyRecord, KeyRecord]:
        """Revoke a key and issue its replacement; returns (revoked key, replacement).

        Revoking a key that is already revoked changes nothing and returns the same pair again.
        """
        tenant = _text(tenant, "tenant")
        actor = _text(actor, "actor")
        self._check_id(tenant, key_id)
        with self._writing("revoke a key") as connection:
            row = self._row(connection, tenant, key_id, for_update=True)
            if row.state == REVOKED:
                replacement = self._row(connection, tenant, row.replaced_by_key_id)
                return _record(row), _record(replacement)
            new_id = self._ids.mint(tenant)
            version = int(row.version) + 1
            now = audit.utc_text(datetime.now(UTC))
            connection.execute(
                insert(keys).values(
                    key_id=new_id,
                    tenant=tenant,
                    lineage_id=row.lineage_id,
                    version=version,
                    state=ACTIVE,
                    subject=row.subject,
                    labels=row.labels,
                    profile_id=row.profile_id,
                    created_at=now,
                    revoked_at=None,
                    replaces_key_id=key_id,
                    replaced_by_key_id=None,
                    wrapped_material=self._fresh_material(tenant=tenant, key_id=new_id, version=version),
                )
            )
            connection.execute(
                update(keys)
                .where(keys.c.key_id == key_id, keys.c.state == ACTIVE)
                .values(state=REVOKED, revoked_at=now, replaced_by_key_id=new_id)
            )
            audit.append(
                connection,
                at=now,
                tenant=tenant,
                action=REVOKE,
                key_id=key_id,
                version=int(row.version),
                actor=actor,
                details={"replacement_key_id": new_id},
            )
            revoked = self._row(connection, tenant, key_id)
            replacement = self._row(connection, tenant, new_id)
        return _record(revoked), _record(replacement)

    def get_key(self, tenant: str, key_id: str) -> KeyRecord:
        tenant = _text(tenant, "tenant")
        self._check_id(tenant, key_id)
        with self._reading("read a key") as connection:
            return _record(self._row(connection, tenant, key_id))

    def key_for_use(
        self, tenant: str, key_id: str, *, profile: str | None = None
    ) -> tuple[KeyRecord, ProtectionKey]:
        """The key and its material, read from the database on every call (no cache), so a
        revocation by any replica is enforced at once. A revoked key raises ``KeyRevokedError``;
        a key bound to another profile than ``profile`` (the caller's; None: any) raises
        ``ProfileMismatchError``."""
        from faceanonymixer.protection_key import ProtectionKey

        tenant = _text(tenant, "tenant")
        self._check_id(tenant, key_id)
        with self._reading("read a key") as connection:
            row = self._row(connection, tenant, key_id)
        record = _record(row)
        if record.state != ACTIVE:
            raise KeyRevokedError(f"key {key_id} was revoked; its replacement is {record.replaced_by_key_id}")
        if profile is not None and record.profile_id != profile:
            raise ProfileMismatchError(
                f"key {key_id} is bound to profile {record.profile_id!r}, not {profile!r}"
            )
        material = self._kek.unwrap(
            bytes(row.wrapped_material), tenant=tenant, key_id=key_id, version=record.version
        )
        return record, ProtectionKey(material, version=record.version, key_id=key_id)

    def list_keys(
        self,
        tenant: str,
        *,
        state: str | None = None,
        subject: str | None = None,
        page_size: int = 100,
        page_token: str = "",
    ) -> tuple[list[KeyRecord], str]:
        """One page of the tenant's keys ordered by key id, and the token of the next ("" at the end)."""
        tenant = _text(tenant, "tenant")
        if state is not None and state not in STATES:
            raise InvalidRequestError(f"state must be one of {', '.join(STATES)} or unset", field="state")
        if subject is not None:
            subject = _text(subject, "subject")
        size = paging.page_size(page_size)
        after = paging.read_token(page_token, tenant=tenant, state=state, subject=subject)
        query = select(keys).where(keys.c.tenant == tenant)
        if state is not None:
            query = query.where(keys.c.state == state)
        if subject is not None:
            query = query.where(keys.c.subject == subject)
        if after is not None:
            query = query.where(keys.c.key_id > after)
        query = query.order_by(keys.c.key_id).limit(size + 1)
        with self._reading("list keys") as connection:
            rows = connection.execute(query).all()
        records = [_record(row) for row in rows[:size]]
        token = ""
        if len(rows) > size:
            token = paging.make_token(records[-1].key_id, tenant=tenant, state=state, subject=subject)
        return records, token

    # -- audit and integrity ----------------------------------------------------------------------

    def audit_events(self, tenant: str | None = None) -> list[AuditEvent]:
        """The audit log in order; only one tenant's events when ``tenant`` is given."""
        query = select(audit.audit_events).order_by(audit.audit_events.c.seq)
        if tenant is not None:
            query = query.where(audit.audit_events.c.tenant == _text(tenant, "tenant"))
        with self._reading("read the audit log") as connection:
            return [audit.from_row(row) for row in connection.execute(query)]

    def verify(self) -> IntegrityReport:
        """Check the audit chain, the keys against it, and that every key opens; reports, never raises."""
        try:
            with self._reading("verify the key store", snapshot=True) as connection:
                return verify_store(connection, self._kek, self._ids)
        except KeyStoreError as error:
            return IntegrityReport(ok=False, problems=[str(error)], keys=0, events=0)

    # -- helpers ----------------------------------------------------------------------------------

    def _fresh_material(self, *, tenant: str, key_id: str, version: int) -> bytes:
        return self._kek.wrap(os.urandom(MATERIAL_BYTES), tenant=tenant, key_id=key_id, version=version)

    def _check_id(self, tenant: str, key_id: str) -> None:
        verdict = self._ids.classify(tenant, key_id)
        if verdict == "malformed":
            shown = key_id[:64] if isinstance(key_id, str) else type(key_id).__name__
            raise KeyNotFoundError(f"no key {shown!r}: not a key id")
        if verdict == "foreign":
            raise KeyAccessDeniedError(f"key {key_id} was not issued to this tenant")

    @staticmethod
    def _row(connection: Connection, tenant: str, key_id: str, *, for_update: bool = False) -> Any:
        query = select(keys).where(keys.c.key_id == key_id, keys.c.tenant == tenant)
        if for_update:
            query = query.with_for_update()
        row = connection.execute(query).one_or_none()
        if row is None:
            raise KeyNotFoundError(f"no key {key_id} in this tenant")
        return row

    def _open_engine(self) -> Engine:
        with self._lock:
            if self._closed:
                raise KeyStoreError("the key store is closed")
        return self._engine

    @contextlib.contextmanager
    def _writing(self, action: str) -> Iterator[Connection]:
        with self._database_errors(action), database.write_transaction(self._open_engine()) as connection:
            yield connection

    @contextlib.contextmanager
    def _reading(self, action: str, *, snapshot: bool = False) -> Iterator[Connection]:
        with (
            self._database_errors(action),
            database.read_transaction(self._open_engine(), snapshot=snapshot) as connection,
        ):
            yield connection

    @contextlib.contextmanager
    def _database_errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except exc.SQLAlchemyError as error:
            raise KeyStoreError(
                f"cannot {action} in the key store at {self._url}: {database.one_line(error)}"
            ) from error
