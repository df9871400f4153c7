"""The key store: protection keys, wrapped under a KEK, in SQLite or PostgreSQL.

Every key has its own key id and version, and records the profile revision it was made for.
Revoking a key marks it revoked and, in the same transaction, issues its replacement (a new key
id, the next version, fresh material, the same subject, labels, profile and revision); every
create, revoke, batch of uses and KEK rotation is appended to the keyed audit chain. Every key
row carries an HMAC over all its columns (``integrity.py``), checked whenever the key is read for
use. Key material exists in clear only in memory: it is stored wrapped, and never logged or put
into an error message.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from sqlalchemy import Engine, exc, func, insert, select, update
from sqlalchemy.engine import Connection

from faceanonymixer.keystore import audit, database, paging
from faceanonymixer.keystore.audit import AuditEvent
from faceanonymixer.keystore.integrity import IntegrityKeys, KeyIntegrityError
from faceanonymixer.keystore.kek import KeyEncryptionKey, KeyRing
from faceanonymixer.keystore.key_ids import KeyIds
from faceanonymixer.keystore.schema import (
    ACTIVE,
    CREATE,
    CURRENT_KEK,
    GENESIS_HASH,
    ID_TAG_KEY,
    INTEGRITY_EPOCH,
    INTEGRITY_KEY_PREFIX,
    KEK_CHECK,
    REVOKE,
    REVOKED,
    ROTATE_KEK,
    STATES,
    UPGRADE,
    USE,
    audit_events,
    keys,
    store_meta,
)
from faceanonymixer.keystore.verify import IntegrityReport, verify_store
from faceanonymixer.utils.errors import (
    FaceAnonyMixerError,
    InvalidRequestError,
    KeyAccessDeniedError,
    KeyNotFoundError,
    KeyRevokedError,
    KeyStoreError,
    ProfileMismatchError,
    WrongKeyEncryptionKeyError,
)

if TYPE_CHECKING:
    from faceanonymixer.engine.protection_key import ProtectionKey

MATERIAL_BYTES = 32
INTEGRITY_KEY_BYTES = 32


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
    #: ``profiles.profile_revision`` of the models and settings the key was made for (None: a key
    #: of an unknown profile from before revisions were recorded)
    profile_revision: str | None = None

    @property
    def active(self) -> bool:
        return self.state == ACTIVE


@dataclass(frozen=True)
class KeyUse:
    """Protections under one key since the last flush (``KeyStore.record_uses``): calls by
    outcome (a gRPC status code name) and the photos protected. Never any image data."""

    tenant: str
    key_id: str
    version: int
    calls: Mapping[str, int]
    photos: int
    first_at: datetime
    last_at: datetime


@dataclass(frozen=True)
class RotationReport:
    """What ``KeyStore.rotate_kek`` did."""

    from_kek: str
    to_kek: str
    keys: int
    integrity_epoch: int


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
        profile_revision=row.profile_revision,
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

    def __init__(
        self,
        engine: Engine,
        ring: KeyEncryptionKey | KeyRing,
        *,
        url: str,
        tag_key: bytes | None = None,
        integrity: IntegrityKeys | None = None,
    ) -> None:
        """Use ``KeyStore.open``; this wraps an engine that is already migrated and checked."""
        self._engine = engine
        self._ring = KeyRing.of(ring)
        self._ids = KeyIds(tag_key if tag_key is not None else self._ring.primary.key_id_tag_key())
        self._integrity = integrity or IntegrityKeys(current_epoch=0)
        self._url = url
        self._closed = False
        self._lock = threading.Lock()

    # -- opening and closing ----------------------------------------------------------------------

    @classmethod
    def open(cls, url: str, kek: KeyEncryptionKey | KeyRing) -> KeyStore:
        """Open (creating and migrating if needed) the store at ``sqlite:///path`` or ``postgresql://...``.

        ``kek``: the key-encryption key, or a keyring holding the store's current KEK (and any
        other KEK a key may be wrapped under while a rotation is rolled out)."""
        if not isinstance(kek, KeyEncryptionKey | KeyRing):
            raise KeyStoreError("KeyStore.open needs a KeyEncryptionKey or a KeyRing")
        ring = KeyRing.of(kek)
        parsed = database.parse_url(url)
        shown = database.safe_url(parsed)
        engine = database.create(parsed)
        try:
            with database.MIGRATION_LOCK, database.write_transaction(engine) as connection:
                database.migrate(connection)
                tag_key, integrity = _prepare(connection, ring, shown)
        except FaceAnonyMixerError:
            engine.dispose()
            raise
        except Exception as error:
            engine.dispose()
            raise KeyStoreError(
                f"cannot open the key store at {shown}: {database.one_line(error)}"
            ) from error
        return cls(engine, ring, url=shown, tag_key=tag_key, integrity=integrity)

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

    @property
    def key_ids(self) -> KeyIds:
        """Mints and classifies this store's key ids (its tag key outlives KEK rotations)."""
        return self._ids

    # -- keys -------------------------------------------------------------------------------------

    def create_key(
        self,
        tenant: str,
        subject: str,
        *,
        labels: Mapping[str, str] | None = None,
        profile_id: str,
        profile_revision: str | None = None,
        actor: str,
    ) -> KeyRecord:
        """A new active key, version 1, with fresh random material.

        ``profile_revision``: the revision of ``profile_id`` the key is made for (the server's);
        default: the profile's revision with its default settings."""
        tenant = _text(tenant, "tenant")
        subject = _text(subject, "subject")
        label_map = _labels(labels)
        profile_id = _text(profile_id, "profile_id", allow_empty=False)
        revision = _text(
            profile_revision if profile_revision is not None else _default_revision(profile_id),
            "profile_revision",
            allow_empty=False,
        )
        actor = _text(actor, "actor")
        key_id = self._ids.mint(tenant)
        now = audit.utc_text(datetime.now(UTC))
        with self._writing("create a key") as (connection, kek, integrity):
            values = {
                "key_id": key_id,
                "tenant": tenant,
                "lineage_id": key_id,
                "version": 1,
                "state": ACTIVE,
                "subject": subject,
                "labels": audit.canonical_json(label_map),
                "profile_id": profile_id,
                "profile_revision": revision,
                "created_at": now,
                "revoked_at": None,
                "replaces_key_id": None,
                "replaced_by_key_id": None,
                "kek_id": kek.kek_id,
                "wrapped_material": _fresh_material(kek, tenant=tenant, key_id=key_id, version=1),
            }
            connection.execute(insert(keys).values(**values, row_mac=integrity.row_mac(values)))
            audit.append(
                connection,
                integrity,
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

    def revoke_key(
        self,
        tenant: str,
        key_id: str,
        *,
        actor: str,
        revisions: Mapping[str, str] | None = None,
    ) -> tuple[KeyRecord, KeyRecord]:
        """Revoke a key and issue its replacement; returns (revoked key, replacement).

        The replacement is made under ``revisions[profile id]`` (the revoking server's current
        revision of the key's profile: faces are enrolled again under a replacement anyway),
        else under the revoked key's revision. Revoking a key that is already revoked changes
        nothing and returns the same pair again.
        """
        tenant = _text(tenant, "tenant")
        actor = _text(actor, "actor")
        self._check_id(tenant, key_id)
        with self._writing("revoke a key") as (connection, kek, integrity):
            row = self._row(connection, tenant, key_id, for_update=True)
            # a tampered row is still revoked (revocation is the safe way out); its event says so
            authentic = integrity.row_is_authentic(row._mapping)
            if row.state == REVOKED:
                replacement = self._row(connection, tenant, row.replaced_by_key_id)
                return _record(row), _record(replacement)
            new_id = self._ids.mint(tenant)
            version = int(row.version) + 1
            now = audit.utc_text(datetime.now(UTC))
            values = {
                "key_id": new_id,
                "tenant": tenant,
                "lineage_id": row.lineage_id,
                "version": version,
                "state": ACTIVE,
                "subject": row.subject,
                "labels": row.labels,
                "profile_id": row.profile_id,
                "profile_revision": (revisions or {}).get(row.profile_id, row.profile_revision),
                "created_at": now,
                "revoked_at": None,
                "replaces_key_id": key_id,
                "replaced_by_key_id": None,
                "kek_id": kek.kek_id,
                "wrapped_material": _fresh_material(kek, tenant=tenant, key_id=new_id, version=version),
            }
            connection.execute(insert(keys).values(**values, row_mac=integrity.row_mac(values)))
            revoked_values = {
                **row._mapping,
                "state": REVOKED,
                "revoked_at": now,
                "replaced_by_key_id": new_id,
            }
            connection.execute(
                update(keys)
                .where(keys.c.key_id == key_id, keys.c.state == ACTIVE)
                .values(
                    state=REVOKED,
                    revoked_at=now,
                    replaced_by_key_id=new_id,
                    row_mac=integrity.row_mac(revoked_values),
                )
            )
            audit.append(
                connection,
                integrity,
                at=now,
                tenant=tenant,
                action=REVOKE,
                key_id=key_id,
                version=int(row.version),
                actor=actor,
                details={"replacement_key_id": new_id, **({} if authentic else {"integrity": "failed"})},
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
        self,
        tenant: str,
        key_id: str,
        *,
        profile: str | None = None,
        revisions: Collection[str] | None = None,
    ) -> tuple[KeyRecord, ProtectionKey]:
        """The key and its material, read from the database on every call (no cache), so a
        revocation by any replica is enforced at once. The row must pass its integrity check
        (``KeyIntegrityError`` otherwise). A revoked key raises ``KeyRevokedError``; a key bound
        to another profile than ``profile`` (the caller's; None: any), or made under a revision
        not in ``revisions`` (the caller's served revisions; None: any), raises
        ``ProfileMismatchError``."""
        from faceanonymixer.engine.protection_key import ProtectionKey

        tenant = _text(tenant, "tenant")
        self._check_id(tenant, key_id)
        with self._reading("read a key") as connection:
            row = self._verified(self._row(connection, tenant, key_id))
        record = _record(row)
        _check_usable(record, profile=profile, revisions=revisions)
        kek = self._kek_of(row)
        material = kek.unwrap(
            bytes(row.wrapped_material), tenant=tenant, key_id=key_id, version=record.version
        )
        return record, ProtectionKey(material, version=record.version, key_id=key_id)

    def check_usable(self, tenant: str, key_id: str, version: int) -> None:
        """Raise ``KeyRevokedError`` unless the key is still active at ``version`` (one read by
        primary key, integrity-checked): what the service checks when queued work starts and
        before it returns a result."""
        with self._reading("read a key") as connection:
            row = self._verified(self._row(connection, tenant, key_id))
        record = _record(row)
        if record.state != ACTIVE or record.version != version:
            raise _revoked(record)

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

    # -- use, rotation ----------------------------------------------------------------------------

    def record_uses(self, uses: Sequence[KeyUse], *, actor: str) -> int:
        """Append one ``use`` event per entry (calls by outcome, photos, first and last time) in
        one transaction; returns the number appended."""
        if not uses:
            return 0
        actor = _text(actor, "actor")
        now = audit.utc_text(datetime.now(UTC))
        with self._writing("record key use") as (connection, _, integrity):
            for use in uses:
                audit.append(
                    connection,
                    integrity,
                    at=now,
                    tenant=_text(use.tenant, "tenant"),
                    action=USE,
                    key_id=_text(use.key_id, "key_id"),
                    version=int(use.version),
                    actor=actor,
                    details={
                        "calls": {str(code): int(count) for code, count in sorted(use.calls.items())},
                        "photos": int(use.photos),
                        "first": audit.utc_text(use.first_at),
                        "last": audit.utc_text(use.last_at),
                    },
                )
        return len(uses)

    def rotate_kek(self, new_kek: KeyEncryptionKey, *, actor: str) -> RotationReport:
        """Re-wrap every key and the store's own secrets under ``new_kek`` in one transaction, and
        roll the integrity key (every row re-MACed, the audit chain goes on under the new key).
        Key ids do not change. Other processes keep reading while their keyring holds both KEKs."""
        if not isinstance(new_kek, KeyEncryptionKey):
            raise KeyStoreError("rotate_kek needs a KeyEncryptionKey")
        actor = _text(actor, "actor")
        ring = self._ring.with_kek(new_kek)
        with self._writing("rotate the key-encryption key") as (connection, old_kek, integrity):
            audit.lock_head(connection)  # every writer takes the head first: no write interleaves
            epoch = integrity.current_epoch + 1
            secrets = {**integrity.secrets, epoch: os.urandom(INTEGRITY_KEY_BYTES)}
            rolled = IntegrityKeys(current_epoch=epoch, secrets=secrets)
            rows = connection.execute(select(keys).order_by(keys.c.key_id).with_for_update()).all()
            for row in rows:
                self._verified(row, integrity)
                kek = ring.get(row.kek_id)
                if kek is None:
                    raise KeyStoreError(
                        f"key {row.key_id} is wrapped under KEK {row.kek_id}, which this process lacks"
                    )
                material = kek.unwrap(
                    bytes(row.wrapped_material),
                    tenant=row.tenant,
                    key_id=row.key_id,
                    version=int(row.version),
                )
                values = {
                    **row._mapping,
                    "kek_id": new_kek.kek_id,
                    "wrapped_material": new_kek.wrap(
                        material, tenant=row.tenant, key_id=row.key_id, version=int(row.version)
                    ),
                }
                connection.execute(
                    update(keys)
                    .where(keys.c.key_id == row.key_id)
                    .values(
                        kek_id=values["kek_id"],
                        wrapped_material=values["wrapped_material"],
                        row_mac=rolled.row_mac(values),
                    )
                )
            meta = {
                KEK_CHECK: new_kek.make_check(),
                CURRENT_KEK: new_kek.kek_id.encode("ascii"),
                ID_TAG_KEY: new_kek.seal(self._ids_tag_key(connection, old_kek), name=ID_TAG_KEY),
                INTEGRITY_EPOCH: str(epoch).encode("ascii"),
                **{
                    f"{INTEGRITY_KEY_PREFIX}{n}": new_kek.seal(secret, name=f"{INTEGRITY_KEY_PREFIX}{n}")
                    for n, secret in secrets.items()
                },
            }
            _write_meta(connection, meta)
            audit.append(
                connection,
                rolled,
                at=audit.utc_text(datetime.now(UTC)),
                tenant="",
                action=ROTATE_KEK,
                key_id="",
                version=0,
                actor=actor,
                details={
                    "from_kek": old_kek.kek_id,
                    "to_kek": new_kek.kek_id,
                    "keys": len(rows),
                    "epoch": epoch,
                },
            )
            report = RotationReport(old_kek.kek_id, new_kek.kek_id, len(rows), epoch)
        self._ring = ring
        self._integrity = rolled
        return report

    # -- audit and integrity ----------------------------------------------------------------------

    def audit_events(self, tenant: str | None = None) -> list[AuditEvent]:
        """The audit log in order; only one tenant's events when ``tenant`` is given."""
        query = select(audit.audit_events).order_by(audit.audit_events.c.seq)
        if tenant is not None:
            query = query.where(audit.audit_events.c.tenant == _text(tenant, "tenant"))
        with self._reading("read the audit log") as connection:
            return [audit.from_row(row) for row in connection.execute(query)]

    def verify(self) -> IntegrityReport:
        """Check the keyed audit chain and its head, every key row's MAC, the keys against the
        log, and that every key opens; reports, never raises."""
        try:
            with self._reading("verify the key store", snapshot=True) as connection:
                integrity = _load_integrity(connection, self._ring)
                return verify_store(connection, self._ring, self._ids, integrity)
        except KeyStoreError as error:
            return IntegrityReport(ok=False, problems=[str(error)], keys=0, events=0)

    # -- helpers ----------------------------------------------------------------------------------

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

    def _verified(self, row: Any, integrity: IntegrityKeys | None = None) -> Any:
        """``row`` if its MAC holds (under any epoch the store has); else KeyIntegrityError."""
        mapping = row._mapping
        integrity = integrity or self._integrity
        if integrity.row_is_authentic(mapping):
            return row
        if integrity is self._integrity:  # another process may have rotated: reload and retry
            with self._reading("read the key store's integrity keys") as connection:
                self._integrity = integrity = _load_integrity(connection, self._ring)
            if integrity.row_is_authentic(mapping):
                return row
        raise KeyIntegrityError(
            f"key {row.key_id}: its stored record fails its integrity check "
            "(it was altered outside the key store); run `faceanonymixer keys audit --verify`"
        )

    def _kek_of(self, row: Any) -> KeyEncryptionKey:
        kek = self._ring.get(row.kek_id)
        if kek is None:
            raise KeyStoreError(
                f"key {row.key_id} is wrapped under key-encryption key {row.kek_id}, which this process "
                "does not hold (add it to FACEANONYMIXER_ADDITIONAL_KEK_FILES while a rotation rolls out)"
            )
        return kek

    def _ids_tag_key(self, connection: Connection, kek: KeyEncryptionKey) -> bytes:
        blob = connection.execute(
            select(store_meta.c.value).where(store_meta.c.name == ID_TAG_KEY)
        ).scalar_one()
        return kek.unseal(bytes(blob), name=ID_TAG_KEY)

    def _open_engine(self) -> Engine:
        with self._lock:
            if self._closed:
                raise KeyStoreError("the key store is closed")
        return self._engine

    @contextlib.contextmanager
    def _writing(self, action: str) -> Iterator[tuple[Connection, KeyEncryptionKey, IntegrityKeys]]:
        """A write transaction, the store's current KEK and integrity keys as of this transaction
        (read inside it: a rotation by another process is followed, never written around)."""
        with self._database_errors(action), database.write_transaction(self._open_engine()) as connection:
            meta = _read_meta(connection, [CURRENT_KEK, INTEGRITY_EPOCH])
            kek = _current_kek(meta, self._ring, self._url)
            epoch = int(bytes(meta.get(INTEGRITY_EPOCH, b"0")).decode("ascii") or 0)
            if epoch != self._integrity.current_epoch or epoch not in self._integrity.secrets:
                self._integrity = _load_integrity(connection, self._ring)
            yield connection, kek, self._integrity

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


def _default_revision(profile_id: str) -> str:
    from faceanonymixer.engine.profiles import PROFILES, profile_revision

    profile = PROFILES.get(profile_id)
    if profile is None:
        raise InvalidRequestError(
            f"unknown profile {profile_id!r}: give its profile_revision", field="profile_id"
        )
    return profile_revision(profile)


def _revoked(record: KeyRecord) -> KeyRevokedError:
    return KeyRevokedError(f"key {record.key_id} was revoked; its replacement is {record.replaced_by_key_id}")


def _check_usable(record: KeyRecord, *, profile: str | None, revisions: Collection[str] | None) -> None:
    if record.state != ACTIVE:
        raise _revoked(record)
    if profile is not None and record.profile_id != profile:
        raise ProfileMismatchError(
            f"key {record.key_id} is bound to profile {record.profile_id!r}, not {profile!r}",
            metadata={"key_profile": record.profile_id, "server_profile": profile},
        )
    if revisions is not None and record.profile_revision not in revisions:
        served = ", ".join(sorted(revisions))
        raise ProfileMismatchError(
            f"key {record.key_id} was made under revision {record.profile_revision or '(none recorded)'} "
            f"of profile {record.profile_id!r}; this server serves revision {served}: protected faces "
            "would not match the ones enrolled with it (re-enroll under a new key, or serve the old "
            "revision beside the new one: docs/security.md)",
            metadata={
                "key_profile": record.profile_id,
                "key_revision": record.profile_revision or "",
                "server_revisions": served,
            },
        )


def _fresh_material(kek: KeyEncryptionKey, *, tenant: str, key_id: str, version: int) -> bytes:
    return kek.wrap(os.urandom(MATERIAL_BYTES), tenant=tenant, key_id=key_id, version=version)


# -- store metadata: the KEK check, the current KEK, the sealed secrets ------------------------------


def _read_meta(connection: Connection, names: Sequence[str] | None = None) -> dict[str, bytes]:
    query = select(store_meta.c.name, store_meta.c.value)
    if names is not None:
        query = query.where(store_meta.c.name.in_(list(names)))
    return {row.name: bytes(row.value) for row in connection.execute(query)}


def _write_meta(connection: Connection, values: Mapping[str, bytes]) -> None:
    existing = set(_read_meta(connection, list(values)))
    for name, value in values.items():
        if name in existing:
            connection.execute(update(store_meta).where(store_meta.c.name == name).values(value=value))
        else:
            connection.execute(insert(store_meta).values(name=name, value=value))


def _current_kek(meta: Mapping[str, bytes], ring: KeyRing, shown: str) -> KeyEncryptionKey:
    kek_id = meta.get(CURRENT_KEK, b"").decode("ascii", "replace")
    kek = ring.get(kek_id)
    if kek is None:
        raise WrongKeyEncryptionKeyError(
            f"the key-encryption key does not open this key store ({shown}): it is under KEK "
            f"{kek_id or '(unknown)'}, this process holds {', '.join(ring.kek_ids)}; use the store's "
            "current KEK (after a rotation, the new one)"
        )
    return kek


def _load_integrity(connection: Connection, ring: KeyRing) -> IntegrityKeys:
    meta = _read_meta(connection)
    kek = _current_kek(meta, ring, "this database")
    epoch = int(meta.get(INTEGRITY_EPOCH, b"0").decode("ascii") or 0)
    secrets = {
        int(name[len(INTEGRITY_KEY_PREFIX) :]): kek.unseal(value, name=name)
        for name, value in meta.items()
        if name.startswith(INTEGRITY_KEY_PREFIX)
    }
    if epoch not in secrets:
        raise KeyIntegrityError(f"the key store has no integrity key of its current epoch {epoch}")
    return IntegrityKeys(current_epoch=epoch, secrets=secrets)


def _prepare(connection: Connection, ring: KeyRing, shown: str) -> tuple[bytes, IntegrityKeys]:
    """Check the keyring against the store (making a new store's secrets, or upgrading a store
    made before 0002); returns the key-id tag key and the integrity keys."""
    meta = _read_meta(connection)
    if KEK_CHECK not in meta:  # a new store
        kek = ring.primary
        integrity = IntegrityKeys(current_epoch=1, secrets={1: os.urandom(INTEGRITY_KEY_BYTES)})
        _write_meta(connection, _new_secrets(kek, kek.key_id_tag_key(), integrity))
        audit.write_head(connection, integrity, 0, GENESIS_HASH)
        return kek.key_id_tag_key(), integrity
    if CURRENT_KEK not in meta:  # made before 0002: the KEK that opens the check is the current one
        opening = next((k for k in ring if k.opens_check(meta[KEK_CHECK])), None)
        if opening is None:
            raise _wrong_kek(shown)
        if any(name.startswith(INTEGRITY_KEY_PREFIX) for name in meta) or ID_TAG_KEY in meta:
            raise KeyIntegrityError(
                f"the key store at {shown} has integrity keys but no current KEK: its metadata was altered"
            )
        return _upgrade_legacy_store(connection, opening)
    kek = _current_kek(meta, ring, shown)
    if not kek.opens_check(meta[KEK_CHECK]):
        raise _wrong_kek(shown)
    return kek.unseal(meta[ID_TAG_KEY], name=ID_TAG_KEY), _load_integrity(connection, ring)


def _wrong_kek(shown: str) -> WrongKeyEncryptionKeyError:
    return WrongKeyEncryptionKeyError(
        f"the key-encryption key does not open this key store ({shown}); use the key it was created with"
    )


def _new_secrets(kek: KeyEncryptionKey, tag_key: bytes, integrity: IntegrityKeys) -> dict[str, bytes]:
    values = {
        KEK_CHECK: kek.make_check(),
        CURRENT_KEK: kek.kek_id.encode("ascii"),
        ID_TAG_KEY: kek.seal(tag_key, name=ID_TAG_KEY),
        INTEGRITY_EPOCH: str(integrity.current_epoch).encode("ascii"),
    }
    for epoch, secret in integrity.secrets.items():
        name = f"{INTEGRITY_KEY_PREFIX}{epoch}"
        values[name] = kek.seal(secret, name=name)
    return values


def _upgrade_legacy_store(connection: Connection, kek: KeyEncryptionKey) -> tuple[bytes, IntegrityKeys]:
    """A store made before migration 0002: its key ids keep the tag key derived from this KEK (now
    stored), its key rows get their KEK id and MAC, and a keyed ``upgrade`` event anchors its plain
    SHA-256 audit chain. Trust on first use: the store is taken as it is at this moment."""
    tag_key = kek.key_id_tag_key()
    integrity = IntegrityKeys(current_epoch=1, secrets={1: os.urandom(INTEGRITY_KEY_BYTES)})
    _write_meta(connection, _new_secrets(kek, tag_key, integrity))
    connection.execute(update(keys).where(keys.c.kek_id.is_(None)).values(kek_id=kek.kek_id))
    rows = connection.execute(select(keys).where(keys.c.row_mac.is_(None))).all()
    for row in rows:
        connection.execute(
            update(keys).where(keys.c.key_id == row.key_id).values(row_mac=integrity.row_mac(row._mapping))
        )
    head_seq, head_hash = audit.lock_head(connection)
    legacy = connection.execute(select(func.count()).select_from(audit_events)).scalar_one()
    audit.append(
        connection,
        integrity,
        at=audit.utc_text(datetime.now(UTC)),
        tenant="",
        action=UPGRADE,
        key_id="",
        version=0,
        actor="keystore-upgrade",
        details={
            "legacy_events": int(legacy),
            "legacy_head_seq": head_seq,
            "legacy_head": head_hash,
            "keys": len(rows),
        },
    )
    return tag_key, integrity
