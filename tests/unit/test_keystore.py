"""The key store: the same behaviour on SQLite and on PostgreSQL.

PostgreSQL tests use the server at 127.0.0.1:5432 (user ``postgres``, trust auth; override with
FACEANONYMIXER_TEST_POSTGRES, an admin URL): one fresh database per module, one fresh schema per
test. Without a server they are skipped, except with CI=true, where that is a failure.
"""

from __future__ import annotations

import base64
import os
import pickle
import secrets
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from faceanonymixer.keystore import AuditEvent, KeyEncryptionKey, KeyRecord, KeyStore
from faceanonymixer.keystore import key_ids as key_ids_module
from faceanonymixer.keystore.integrity import KeyIntegrityError
from faceanonymixer.keystore.kek import KeyRing
from faceanonymixer.keystore.key_ids import KeyIds
from faceanonymixer.keystore.schema import VERSION_TABLE, metadata
from faceanonymixer.utils.errors import (
    InvalidRequestError,
    KeyAccessDeniedError,
    KeyNotFoundError,
    KeyRevokedError,
    KeyStoreError,
    WrongKeyEncryptionKeyError,
)

KEK_BYTES = bytes(range(32))
ACTOR = "tests"


# -- backends -------------------------------------------------------------------------------------


@dataclass
class Backend:
    """A database for one test: the store's URL, and a raw engine that bypasses the store."""

    name: str
    url: str
    raw: sa.Engine

    def execute(self, statement: str, params: dict[str, Any] | None = None) -> list[Any]:
        with self.raw.begin() as connection:
            result = connection.execute(sa.text(statement), params or {})
            return list(result) if result.returns_rows else []

    def drop_audit_triggers(self) -> None:
        if self.name == "sqlite":
            self.execute("DROP TRIGGER audit_events_no_update")
            self.execute("DROP TRIGGER audit_events_no_delete")
        else:
            self.execute("DROP TRIGGER audit_events_append_only ON audit_events")


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        path = tmp_path / "store" / "keys.db"
        raw = sa.create_engine(f"sqlite:///{path}")
        yield Backend("sqlite", f"sqlite:///{path}", raw)
        raw.dispose()
        return
    database: sa.URL = request.getfixturevalue("postgres_database")
    schema = f"t_{secrets.token_hex(6)}"
    url = database.update_query_dict({"options": f"-csearch_path={schema}"})
    raw = sa.create_engine(url)
    with raw.begin() as connection:
        connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    yield Backend("postgresql", url.render_as_string(hide_password=False), raw)
    raw.dispose()


@pytest.fixture
def kek() -> KeyEncryptionKey:
    return KeyEncryptionKey(KEK_BYTES)


@pytest.fixture
def store(backend: Backend, kek: KeyEncryptionKey) -> Iterator[KeyStore]:
    with KeyStore.open(backend.url, kek) as opened:
        yield opened


def tenant() -> str:
    return f"tenant-{secrets.token_hex(4)}"


def create(store: KeyStore, tenant: str, subject: str = "alice", **labels: str) -> KeyRecord:
    return store.create_key(tenant, subject, labels=labels, profile_id="embedded", actor=ACTOR)


def all_keys(store: KeyStore, tenant: str) -> list[KeyRecord]:
    records, token = store.list_keys(tenant, page_size=1000)
    assert token == ""
    return records


# -- keys -----------------------------------------------------------------------------------------


def test_create_get_and_list(store: KeyStore) -> None:
    owner = tenant()
    record = create(store, owner, "alice", team="blue")
    assert record.key_id.startswith("fk_") and record.tenant == owner
    assert (record.version, record.state, record.subject) == (1, "active", "alice")
    assert record.labels == {"team": "blue"} and record.profile_id == "embedded"
    assert record.created_at.tzinfo is not None and record.created_at.utcoffset() == timedelta(0)
    assert record.revoked_at is None and record.replaces_key_id is None and record.replaced_by_key_id is None
    assert store.get_key(owner, record.key_id) == record
    assert all_keys(store, owner) == [record]
    assert all_keys(store, tenant()) == []
    with pytest.raises(InvalidRequestError) as caught:
        store.create_key(owner, "bob", labels={"n": 1}, profile_id="embedded", actor=ACTOR)  # type: ignore[dict-item]
    assert caught.value.field == "labels"
    with pytest.raises(InvalidRequestError):
        store.create_key(owner, "bob", profile_id="", actor=ACTOR)


def test_list_pages_and_filters(store: KeyStore) -> None:
    owner = tenant()
    made = [create(store, owner, "alice" if i % 2 else "bob") for i in range(7)]
    revoked, replacement = store.revoke_key(owner, made[0].key_id, actor=ACTOR)
    current = [store.get_key(owner, r.key_id) for r in made]
    everything = sorted([*current, replacement], key=lambda r: r.key_id)

    pages, token = [], ""
    while True:
        page, token = store.list_keys(owner, page_size=3, page_token=token)
        pages.append(page)
        if not token:
            break
    assert [len(page) for page in pages] == [3, 3, 2]
    assert [r for page in pages for r in page] == everything

    assert store.list_keys(owner, page_size=0)[0] == everything  # 0 means the default (100)
    assert store.list_keys(owner, page_size=5000)[0] == everything  # capped, not refused
    assert [r.key_id for r in all_keys_state(store, owner, "revoked")] == [revoked.key_id]
    assert len(all_keys_state(store, owner, "active")) == 7
    bobs = [r for r in everything if r.subject == "bob"]
    page, token = store.list_keys(owner, subject="bob", page_size=2)
    rest, last = store.list_keys(owner, subject="bob", page_size=2, page_token=token)
    assert page + rest + store.list_keys(owner, subject="bob", page_size=2, page_token=last)[0] == bobs
    assert store.list_keys(owner, subject="nobody") == ([], "")


def all_keys_state(store: KeyStore, tenant: str, state: str) -> list[KeyRecord]:
    records, token = store.list_keys(tenant, state=state, page_size=1000)
    assert token == ""
    return records


def test_list_rejects_bad_page_arguments(store: KeyStore) -> None:
    owner = tenant()
    for _ in range(3):
        create(store, owner)
    _, token = store.list_keys(owner, page_size=1)
    assert token
    with pytest.raises(InvalidRequestError) as caught:
        store.list_keys(owner, page_size=-1)
    assert caught.value.field == "page_size"
    forged = base64.urlsafe_b64encode(b'{"after":"x","filters":"y"}').decode()
    for bad in ["garbage!", "e30", forged, "x" * 600]:
        with pytest.raises(InvalidRequestError) as caught:
            store.list_keys(owner, page_token=bad)
        assert caught.value.field == "page_token"
    for other in [{"state": "active"}, {"subject": "alice"}]:
        with pytest.raises(InvalidRequestError) as caught:
            store.list_keys(owner, page_token=token, **other)  # type: ignore[arg-type]
        assert caught.value.field == "page_token"
    with pytest.raises(InvalidRequestError):
        store.list_keys(tenant(), page_token=token)  # made for another tenant
    with pytest.raises(InvalidRequestError) as caught:
        store.list_keys(owner, state="lost")
    assert caught.value.field == "state"


def test_revoke_issues_a_replacement(store: KeyStore) -> None:
    owner = tenant()
    original = create(store, owner, "alice", team="blue")
    _, old_key = store.key_for_use(owner, original.key_id)
    assert old_key.version == 1 and old_key.key_id == original.key_id

    revoked, replacement = store.revoke_key(owner, original.key_id, actor="admin")
    assert revoked.key_id == original.key_id and revoked.state == "revoked" and revoked.revoked_at
    assert revoked.replaced_by_key_id == replacement.key_id != original.key_id
    assert replacement.replaces_key_id == original.key_id
    assert (replacement.version, replacement.state, replacement.subject) == (2, "active", "alice")
    assert (replacement.labels, replacement.profile_id) == ({"team": "blue"}, "embedded")

    with pytest.raises(KeyRevokedError, match="was revoked"):
        store.key_for_use(owner, original.key_id)
    record, new_key = store.key_for_use(owner, replacement.key_id)
    assert record == replacement and new_key.version == 2 and new_key.key_id == replacement.key_id
    assert new_key.material != old_key.material and len(new_key.material) == 32

    _, third = store.revoke_key(owner, replacement.key_id, actor="admin")
    assert third.version == 3 and third.replaces_key_id == replacement.key_id
    events = store.audit_events(owner)
    assert [(e.action, e.key_id, e.version) for e in events] == [
        ("create", original.key_id, 1),
        ("revoke", original.key_id, 1),
        ("revoke", replacement.key_id, 2),
    ]
    assert events[1].actor == "admin" and events[1].details == {"replacement_key_id": replacement.key_id}
    assert all(isinstance(e, AuditEvent) and "alice" not in repr(e) and "blue" not in repr(e) for e in events)


def test_revoking_twice_returns_the_same_pair(store: KeyStore) -> None:
    owner = tenant()
    original = create(store, owner)
    first = store.revoke_key(owner, original.key_id, actor=ACTOR)
    events = len(store.audit_events())
    assert store.revoke_key(owner, original.key_id, actor=ACTOR) == first
    assert len(store.audit_events()) == events
    assert len(all_keys(store, owner)) == 2


def test_tenants_are_isolated(store: KeyStore, kek: KeyEncryptionKey) -> None:
    owner, other = tenant(), tenant()
    record = create(store, owner)
    for call in (store.get_key, store.key_for_use, lambda t, k: store.revoke_key(t, k, actor=ACTOR)):
        with pytest.raises(KeyAccessDeniedError):
            call(other, record.key_id)
    # decided from the id alone: an id of the owner's that does not exist is refused the same way
    unknown_of_owner = KeyIds(kek.key_id_tag_key()).mint(owner)
    with pytest.raises(KeyAccessDeniedError):
        store.get_key(other, unknown_of_owner)
    with pytest.raises(KeyNotFoundError):
        store.get_key(owner, unknown_of_owner)
    with pytest.raises(KeyNotFoundError):
        store.revoke_key(owner, unknown_of_owner, actor=ACTOR)
    for malformed in ["", "fk_", "nope", record.key_id.upper(), record.key_id[:-1], record.key_id + "a"]:
        with pytest.raises(KeyNotFoundError):
            store.get_key(owner, malformed)
    assert store.get_key(owner, record.key_id) == record
    assert store.audit_events(other) == []


def test_closed_store_refuses_use(backend: Backend, kek: KeyEncryptionKey) -> None:
    opened = KeyStore.open(backend.url, kek)
    opened.close()
    with pytest.raises(KeyStoreError, match="closed"):
        create(opened, tenant())


# -- persistence and the key-encryption key -------------------------------------------------------


def test_data_survives_reopen(backend: Backend, kek: KeyEncryptionKey) -> None:
    owner = tenant()
    with KeyStore.open(backend.url, kek) as first:
        record = create(first, owner)
        _, key = first.key_for_use(owner, record.key_id)
    with KeyStore.open(backend.url, KeyEncryptionKey(KEK_BYTES)) as second:
        assert second.get_key(owner, record.key_id) == record
        assert second.key_for_use(owner, record.key_id)[1] == key
        assert second.verify().ok


def test_wrong_kek_is_refused_and_changes_nothing(backend: Backend, kek: KeyEncryptionKey) -> None:
    owner = tenant()
    with KeyStore.open(backend.url, kek) as first:
        record = create(first, owner)
        first.revoke_key(owner, record.key_id, actor=ACTOR)
        before = (all_keys(first, owner), first.audit_events())
    wrong = KeyEncryptionKey(bytes(reversed(KEK_BYTES)))
    with pytest.raises(WrongKeyEncryptionKeyError, match="does not open this key store") as caught:
        KeyStore.open(backend.url, wrong)
    assert KEK_BYTES.hex() not in str(caught.value)
    with KeyStore.open(backend.url, kek) as again:
        assert (all_keys(again, owner), again.audit_events()) == before
        assert again.verify().ok


def test_kek_from_env(tmp_path: Path) -> None:
    path = tmp_path / "kek.bin"
    path.write_bytes(KEK_BYTES)
    path.chmod(0o600)
    encoded = base64.b64encode(KEK_BYTES).decode()
    wrapped = KeyEncryptionKey(KEK_BYTES).wrap(b"m" * 32, tenant="t", key_id="k", version=1)
    for environ in [{"FACEANONYMIXER_KEK_FILE": str(path)}, {"FACEANONYMIXER_KEK": encoded}]:
        loaded = KeyEncryptionKey.from_env(environ)
        assert loaded.unwrap(wrapped, tenant="t", key_id="k", version=1) == b"m" * 32
        assert KEK_BYTES.hex() not in repr(loaded) and encoded not in repr(loaded)
    with pytest.raises(KeyStoreError, match="head -c 32 /dev/urandom") as caught:
        KeyEncryptionKey.from_env({})
    assert "\n" not in str(caught.value)
    bad_environs: list[dict[str, str]] = [
        {"FACEANONYMIXER_KEK_FILE": str(path), "FACEANONYMIXER_KEK": encoded},
        {"FACEANONYMIXER_KEK": "not base64!"},
        {"FACEANONYMIXER_KEK": base64.b64encode(KEK_BYTES[:31]).decode()},
        {"FACEANONYMIXER_KEK_FILE": str(tmp_path / "missing.bin")},
    ]
    short = tmp_path / "short.bin"
    short.write_bytes(KEK_BYTES + b"!")
    short.chmod(0o600)
    bad_environs.append({"FACEANONYMIXER_KEK_FILE": str(short)})
    for environ in bad_environs:
        with pytest.raises(KeyStoreError) as caught:
            KeyEncryptionKey.from_env(environ)
        assert KEK_BYTES.hex() not in str(caught.value) and encoded not in str(caught.value)


def test_wrapped_material_is_bound_to_tenant_id_and_version() -> None:
    kek = KeyEncryptionKey(KEK_BYTES)
    material = os.urandom(32)
    blob = kek.wrap(material, tenant="t", key_id="fk_a", version=2)
    assert len(blob) == 12 + 32 + 16 and material not in blob
    assert kek.wrap(material, tenant="t", key_id="fk_a", version=2) != blob  # fresh nonce
    assert kek.unwrap(blob, tenant="t", key_id="fk_a", version=2) == material
    for other in [("u", "fk_a", 2), ("t", "fk_b", 2), ("t", "fk_a", 3), ("tfk_", "a", 2)]:
        with pytest.raises(KeyStoreError, match="failed authentication"):
            kek.unwrap(blob, tenant=other[0], key_id=other[1], version=other[2])
    with pytest.raises(KeyStoreError, match="failed authentication"):
        KeyEncryptionKey(os.urandom(32)).unwrap(blob, tenant="t", key_id="fk_a", version=2)
    with pytest.raises(TypeError):
        pickle.dumps(kek)


def test_key_ids_carry_their_tenant() -> None:
    ids = KeyIds(KeyEncryptionKey(KEK_BYTES).key_id_tag_key())
    minted = {ids.mint("acme") for _ in range(50)}
    assert len(minted) == 50
    for key_id in minted:
        assert len(key_id) == key_ids_module.KEY_ID_LENGTH == 35
        assert key_id.startswith("fk_") and key_id[3:].isalnum() and key_id == key_id.lower()
        assert ids.classify("acme", key_id) == "own"
        assert ids.classify("acme2", key_id) == "foreign"
    other_kek = KeyIds(KeyEncryptionKey(os.urandom(32)).key_id_tag_key())
    assert other_kek.classify("acme", next(iter(minted))) == "foreign"
    for malformed in ["", "fk_", "fk_" + "1" * 32, "xx_" + "a" * 32, "fk_" + "a" * 31, "fk_" + "A" * 32]:
        assert ids.classify("acme", malformed) == "malformed"


def test_bad_urls_are_refused_in_one_line(tmp_path: Path, kek: KeyEncryptionKey) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    for url in [
        "not a url",
        "mysql://root@localhost/keys",
        "sqlite://",
        "sqlite:///:memory:",
        f"sqlite:///{blocker}/sub/keys.db",
        "postgresql://keeper:hunter2@127.0.0.1:1/keys",
    ]:
        with pytest.raises(KeyStoreError) as caught:
            KeyStore.open(url, kek)
        message = str(caught.value)
        assert "hunter2" not in message and "\n" not in message, message


# -- the audit log and verify() -------------------------------------------------------------------


def test_audit_log_refuses_update_and_delete(store: KeyStore, backend: Backend) -> None:
    create(store, tenant())
    for statement in ["UPDATE audit_events SET actor = 'mallory'", "DELETE FROM audit_events"]:
        with pytest.raises(sa.exc.DatabaseError, match="append-only"):
            backend.execute(statement)
    if backend.name == "postgresql":
        with pytest.raises(sa.exc.DatabaseError, match="append-only"):
            backend.execute("TRUNCATE audit_events")
    assert [e.actor for e in store.audit_events()] == [ACTOR]
    assert store.verify().ok


def test_verify_is_ok_on_a_good_store(store: KeyStore) -> None:
    owner = tenant()
    records = [create(store, owner) for _ in range(3)]
    store.revoke_key(owner, records[0].key_id, actor=ACTOR)
    store.revoke_key(owner, records[1].key_id, actor=ACTOR)
    report = store.verify()
    assert report.ok and report.problems == [] and (report.keys, report.events) == (5, 5)


def test_verify_reports_an_altered_event(store: KeyStore, backend: Backend) -> None:
    owner = tenant()
    record = create(store, owner)
    store.revoke_key(owner, record.key_id, actor=ACTOR)
    backend.drop_audit_triggers()
    backend.execute("UPDATE audit_events SET actor = 'mallory' WHERE seq = 1")
    report = store.verify()
    assert not report.ok and any("event 1" in problem for problem in report.problems), report.problems


def test_verify_reports_a_removed_event(store: KeyStore, backend: Backend) -> None:
    owner = tenant()
    record = create(store, owner)
    store.revoke_key(owner, record.key_id, actor=ACTOR)
    backend.drop_audit_triggers()
    backend.execute("DELETE FROM audit_events WHERE seq = 2")
    report = store.verify()
    assert not report.ok and any("audit_head" in problem for problem in report.problems), report.problems
    assert any("revoke event" in problem for problem in report.problems), report.problems


def test_verify_reports_swapped_key_material(store: KeyStore, backend: Backend) -> None:
    owner = tenant()
    first, second = create(store, owner), create(store, owner)
    blobs = dict(backend.execute("SELECT key_id, wrapped_material FROM keys"))
    for this, that in [(first, second), (second, first)]:
        backend.execute(
            "UPDATE keys SET wrapped_material = :blob WHERE key_id = :key_id",
            {"blob": blobs[that.key_id], "key_id": this.key_id},
        )
    report = store.verify()
    assert not report.ok
    assert sum("wrapped material" in problem for problem in report.problems) == 2, report.problems
    with pytest.raises(KeyStoreError, match="integrity check"):  # the row MAC covers the material
        store.key_for_use(owner, first.key_id)


def test_schema_matches_the_migrations(store: KeyStore, backend: Backend) -> None:
    with backend.raw.connect() as connection:
        context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
        assert compare_metadata(context, metadata) == []


def test_no_key_material_in_the_sqlite_file(tmp_path: Path, kek: KeyEncryptionKey) -> None:
    owner = tenant()
    materials = []
    with KeyStore.open(f"sqlite:///{tmp_path}/keys.db", kek) as opened:
        records = [create(opened, owner) for _ in range(4)]
        for record in records:
            materials.append(opened.key_for_use(owner, record.key_id)[1].material)
        for record in records[:2]:
            _, replacement = opened.revoke_key(owner, record.key_id, actor=ACTOR)
            materials.append(opened.key_for_use(owner, replacement.key_id)[1].material)
    files = [path for path in tmp_path.iterdir() if path.name.startswith("keys.db")]
    contents = b"".join(path.read_bytes() for path in files)
    assert len(contents) > 0
    for secret in [*materials, KEK_BYTES]:
        forms = [
            secret,
            secret.hex().encode(),
            secret.hex().upper().encode(),
            base64.b64encode(secret).rstrip(b"="),
            base64.urlsafe_b64encode(secret).rstrip(b"="),
        ]
        assert not any(form in contents for form in forms)


# -- concurrency ----------------------------------------------------------------------------------


def test_concurrent_revocations_give_one_replacement(store: KeyStore) -> None:
    owner = tenant()
    record = create(store, owner)
    threads_count = 8
    barrier = threading.Barrier(threads_count)
    results: list[tuple[KeyRecord, KeyRecord]] = []
    errors: list[BaseException] = []

    def revoke() -> None:
        barrier.wait()
        try:
            results.append(store.revoke_key(owner, record.key_id, actor=ACTOR))
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=revoke) for _ in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(results) == threads_count and len({pair[1].key_id for pair in results}) == 1
    assert len(all_keys(store, owner)) == 2
    assert [e.action for e in store.audit_events(owner)] == ["create", "revoke"]
    assert store.verify().ok


_WORKER = textwrap.dedent(
    """
    import sys
    from faceanonymixer.keystore import KeyEncryptionKey, KeyStore

    url, tenant, shared = sys.argv[1], sys.argv[2], sys.argv[3:]
    with KeyStore.open(url, KeyEncryptionKey.from_env()) as store:
        print("ready", flush=True)
        sys.stdin.readline()
        for round in range(6):
            record = store.create_key(tenant, f"s{round}", profile_id="embedded", actor="worker")
            store.revoke_key(tenant, record.key_id, actor="worker")
            for key_id in shared:
                store.revoke_key(tenant, key_id, actor="worker")
    print("done", flush=True)
    """
)


def test_two_processes_share_one_store(store: KeyStore, backend: Backend) -> None:
    owner = tenant()
    shared = [create(store, owner).key_id for _ in range(3)]
    environ = {**os.environ, "FACEANONYMIXER_KEK": base64.b64encode(KEK_BYTES).decode()}
    environ.pop("FACEANONYMIXER_KEK_FILE", None)
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, backend.url, owner, *shared],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environ,
        )
        for _ in range(2)
    ]
    try:
        for worker in workers:
            assert worker.stdout is not None and worker.stdout.readline().strip() == "ready"
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
        outcomes = [worker.communicate(timeout=60) for worker in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
    for worker, (out, err) in zip(workers, outcomes, strict=True):
        assert worker.returncode == 0 and out.strip() == "done", err
    report = store.verify()
    assert report.ok, report.problems
    # 3 shared keys revoked once each; 2 workers x 6 rounds of create + revoke
    assert (report.keys, report.events) == (3 + 3 + 2 * 6 * 2, 3 + 3 + 2 * 6 * 2)
    revokes = [e for e in store.audit_events(owner) if e.action == "revoke" and e.key_id in shared]
    assert sorted(e.key_id for e in revokes) == sorted(shared)


# -- tamper evidence (issue 39, defect 3) ------------------------------------------------------


def recompute_plain_chain(backend: Backend) -> None:
    """What an attacker without the key can do after editing an event: re-link every event with
    plain SHA-256 (as the chain was before it was keyed) and re-point the head at the end."""
    from faceanonymixer.keystore.audit import event_hash
    from faceanonymixer.keystore.schema import GENESIS_HASH

    rows = backend.execute("SELECT * FROM audit_events ORDER BY seq")
    prev = GENESIS_HASH
    for row in rows:
        digest = event_hash(
            prev_hash=prev,
            seq=row.seq,
            at=row.at,
            tenant=row.tenant,
            action=row.action,
            key_id=row.key_id,
            version=row.version,
            actor=row.actor,
            details=__import__("json").loads(row.details),
        )
        backend.execute(
            "UPDATE audit_events SET prev_hash = :prev, hash = :hash WHERE seq = :seq",
            {"prev": prev, "hash": digest, "seq": row.seq},
        )
        prev = digest
    backend.execute("UPDATE audit_head SET seq = :seq, hash = :hash", {"seq": len(rows), "hash": prev})


def test_un_revoking_a_key_in_the_database_is_refused_and_reported(store: KeyStore, backend: Backend) -> None:
    owner = tenant()
    record = create(store, owner)
    store.revoke_key(owner, record.key_id, actor=ACTOR)
    backend.execute("UPDATE keys SET state = 'active' WHERE key_id = :k", {"k": record.key_id})
    with pytest.raises(KeyIntegrityError, match="integrity check"):
        store.key_for_use(owner, record.key_id)
    with pytest.raises(KeyIntegrityError):
        store.check_usable(owner, record.key_id, 1)
    report = store.verify()
    assert not report.ok and any("fails its MAC" in p and record.key_id in p for p in report.problems), (
        report.problems
    )


def test_deleting_the_revoke_event_and_re_pointing_the_head_is_reported(
    store: KeyStore, backend: Backend
) -> None:
    """The whole un-revocation: the key made active again, its replacement and revoke event
    gone, the head pointed back at the event before: consistent, except for the MACs."""
    owner = tenant()
    record = create(store, owner)
    _, replacement = store.revoke_key(owner, record.key_id, actor=ACTOR)
    backend.drop_audit_triggers()
    [before] = backend.execute("SELECT seq, hash FROM audit_events WHERE action = 'create' ORDER BY seq DESC")
    backend.execute("DELETE FROM audit_events WHERE action = 'revoke'")
    backend.execute(
        "UPDATE audit_head SET seq = :seq, hash = :hash", {"seq": before.seq, "hash": before.hash}
    )
    backend.execute(
        "UPDATE keys SET state = 'active', revoked_at = NULL, replaced_by_key_id = NULL WHERE key_id = :k",
        {"k": record.key_id},
    )
    backend.execute("DELETE FROM keys WHERE key_id = :k", {"k": replacement.key_id})
    report = store.verify()
    assert not report.ok
    assert any("audit_head fails its MAC" in p for p in report.problems), report.problems
    assert any("fails its MAC" in p and record.key_id in p for p in report.problems), report.problems
    with pytest.raises(KeyIntegrityError):
        store.key_for_use(owner, record.key_id)


def test_an_edited_event_re_chained_with_sha256_is_reported(store: KeyStore, backend: Backend) -> None:
    owner = tenant()
    record = create(store, owner)
    store.revoke_key(owner, record.key_id, actor=ACTOR)
    backend.drop_audit_triggers()
    backend.execute("UPDATE audit_events SET actor = 'mallory' WHERE action = 'revoke'")
    recompute_plain_chain(backend)
    report = store.verify()
    assert not report.ok
    assert any("hash does not match its contents" in p for p in report.problems), report.problems
    assert any("audit_head fails its MAC" in p for p in report.problems), report.problems


def test_key_use_is_audited_per_key_without_image_data(store: KeyStore) -> None:
    from datetime import UTC, datetime

    from faceanonymixer.keystore.store import KeyUse

    owner = tenant()
    record = create(store, owner)
    now = datetime.now(UTC)
    use = KeyUse(owner, record.key_id, 1, {"OK": 3, "FAILED_PRECONDITION": 1}, 5, now, now)
    assert store.record_uses([use], actor="grpc") == 1
    [event] = [e for e in store.audit_events(owner) if e.action == "use"]
    assert (event.key_id, event.version, event.tenant, event.actor) == (record.key_id, 1, owner, "grpc")
    assert event.details["calls"] == {"FAILED_PRECONDITION": 1, "OK": 3} and event.details["photos"] == 5
    assert set(event.details) == {"calls", "photos", "first", "last"}
    assert store.verify().ok


def test_keys_db_is_created_readable_by_its_owner_only(tmp_path: Path, kek: KeyEncryptionKey) -> None:
    path = tmp_path / "fresh" / "keys.db"
    with KeyStore.open(f"sqlite:///{path}", kek) as opened:
        create(opened, tenant())
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    for sibling in path.parent.glob("keys.db-*"):  # WAL and shared memory: the database's mode
        assert sibling.stat().st_mode & 0o077 == 0, sibling


def test_a_kek_file_others_can_read_is_flagged_and_one_they_can_write_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "kek.bin"
    path.write_bytes(KEK_BYTES)
    for mode in (0o602, 0o606, 0o666):  # anyone could swap it
        path.chmod(mode)
        with pytest.raises(KeyStoreError, match="writable by other users"):
            KeyEncryptionKey.from_file(path)
    for mode, loud in [(0o644, True), (0o604, True), (0o600, False), (0o400, False), (0o440, False)]:
        path.chmod(mode)  # the owner, or a group (Kubernetes fsGroup): silent
        caplog.clear()
        with caplog.at_level("WARNING", logger="faceanonymixer.keystore"):
            assert KeyEncryptionKey.from_file(path).kek_id == KeyEncryptionKey(KEK_BYTES).kek_id
        assert any("readable by other users" in r.getMessage() for r in caplog.records) == loud, oct(mode)
        assert KEK_BYTES.hex() not in caplog.text


# -- KEK rotation (defect 4) -------------------------------------------------------------------


def test_rotating_the_kek_keeps_ids_material_and_history(backend: Backend, kek: KeyEncryptionKey) -> None:
    owner = tenant()
    new_kek = KeyEncryptionKey(os.urandom(32))
    with KeyStore.open(backend.url, kek) as first:
        records = [create(first, owner) for _ in range(3)]
        _, replacement = first.revoke_key(owner, records[0].key_id, actor=ACTOR)
        materials = {
            r.key_id: first.key_for_use(owner, r.key_id)[1].material for r in [*records[1:], replacement]
        }
        report = first.rotate_kek(new_kek, actor="admin")
        assert (report.from_kek, report.to_kek, report.keys) == (kek.kek_id, new_kek.kek_id, 4)
        assert first.verify().ok
    with pytest.raises(WrongKeyEncryptionKeyError, match="does not open"):
        KeyStore.open(backend.url, kek)  # the old KEK alone no longer opens it
    with KeyStore.open(backend.url, new_kek) as second:
        for key_id, material in materials.items():  # same ids (the tag key is stored), same material
            assert second.key_for_use(owner, key_id)[1].material == material
        assert second.key_ids.classify(owner, records[1].key_id) == "own"
        rotations = [e for e in second.audit_events() if e.action == "rotate-kek"]
        assert [e.details["to_kek"] for e in rotations] == [new_kek.kek_id]
        create(second, owner)
        report_after = second.verify()
        assert report_after.ok, report_after.problems
        assert (report_after.keys, report_after.events) == (5, 6)  # 4 creates, a revoke, a rotation
    wrapped = backend.execute("SELECT kek_id FROM keys")
    assert {row.kek_id for row in wrapped} == {new_kek.kek_id}


def test_a_keyring_reads_a_store_rotated_by_another_process(backend: Backend, kek: KeyEncryptionKey) -> None:
    owner = tenant()
    new_kek = KeyEncryptionKey(os.urandom(32))
    with (
        KeyStore.open(backend.url, KeyRing([kek, new_kek])) as replica,
        KeyStore.open(backend.url, kek) as admin,
    ):
        record = create(replica, owner)
        admin.rotate_kek(new_kek, actor="admin")
        # the replica opened before the rotation: it reads the re-wrapped key, and writes under
        # the store's new KEK, never the one it started with
        assert replica.key_for_use(owner, record.key_id)[0] == record
        later = create(replica, owner)
        [row] = backend.execute("SELECT kek_id FROM keys WHERE key_id = :k", {"k": later.key_id})
        assert row.kek_id == new_kek.kek_id
        replica.revoke_key(owner, record.key_id, actor=ACTOR)
        assert replica.verify().ok


def test_the_cli_rotates_the_kek(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from faceanonymixer.cli.main import app

    old_file, new_file = tmp_path / "old.bin", tmp_path / "new.bin"
    for path in (old_file, new_file):
        path.write_bytes(os.urandom(32))
        path.chmod(0o600)
    url = f"sqlite:///{tmp_path / 'keys.db'}"
    with KeyStore.open(url, KeyEncryptionKey.from_file(old_file)) as opened:
        record = create(opened, "default")
    env = {"FACEANONYMIXER_KEK_FILE": str(old_file)}
    result = CliRunner().invoke(
        app, ["keys", "rotate-kek", "--new-kek-file", str(new_file), "--keystore", url, "--json"], env=env
    )
    assert result.exit_code == 0, result.output
    payload = __import__("json").loads(result.stdout)
    assert payload["keys"] == 1 and payload["to_kek"] == KeyEncryptionKey.from_file(new_file).kek_id
    env = {"FACEANONYMIXER_KEK_FILE": str(new_file)}
    verified = CliRunner().invoke(app, ["keys", "audit", "--verify", "--keystore", url, "--json"], env=env)
    assert verified.exit_code == 0, verified.output
    shown = CliRunner().invoke(app, ["keys", "get", record.key_id, "--keystore", url, "--json"], env=env)
    assert shown.exit_code == 0 and __import__("json").loads(shown.stdout)["key_id"] == record.key_id
    assert __import__("json").loads(shown.stdout)["profile_revision"] == record.profile_revision
    refused = CliRunner().invoke(
        app, ["keys", "list", "--keystore", url], env={"FACEANONYMIXER_KEK_FILE": str(old_file)}
    )
    assert refused.exit_code != 0 and "does not open" in refused.stderr


def test_key_commands_give_errors_as_json_with_json(tmp_path: Path, kek_file: Path) -> None:
    import json

    from typer.testing import CliRunner

    from faceanonymixer.cli.main import app

    env = {"FACEANONYMIXER_KEK_FILE": str(kek_file)}
    url = f"sqlite:///{tmp_path / 'keys.db'}"
    for command in (["get", "fk_nobody"], ["revoke", "fk_nobody"]):
        text = CliRunner().invoke(app, ["keys", *command, "--keystore", url], env=env)
        as_json = CliRunner().invoke(app, ["keys", *command, "--keystore", url, "--json"], env=env)
        assert text.exit_code == as_json.exit_code != 0
        assert text.stdout == "" and text.stderr.startswith("error:")
        assert as_json.stderr == "" and json.loads(as_json.stdout)["error"]["code"] == "NOT_FOUND"


# -- profile revisions -------------------------------------------------------------------------


def test_keys_record_their_profile_revision(store: KeyStore) -> None:
    from faceanonymixer.engine.profiles import get_profile, profile_revision
    from faceanonymixer.utils.errors import ProfileMismatchError

    owner = tenant()
    record = create(store, owner)
    current = profile_revision(get_profile("embedded"))
    assert record.profile_revision == current
    old = store.create_key(
        owner, "bob", profile_id="embedded", profile_revision="0123456789abcdef", actor=ACTOR
    )
    _, replacement = store.revoke_key(owner, old.key_id, actor=ACTOR)
    assert replacement.profile_revision == "0123456789abcdef"  # the same models as the key it replaces
    store.key_for_use(owner, record.key_id, profile="embedded", revisions={current})
    # a server revokes into its current revision: the replacement's faces are enrolled anew
    _, moved = store.revoke_key(owner, replacement.key_id, actor=ACTOR, revisions={"embedded": current})
    assert moved.profile_revision == current
    store.key_for_use(owner, moved.key_id, profile="embedded", revisions={current})
    with pytest.raises(ProfileMismatchError) as caught:
        store.key_for_use(owner, other_revision(store, owner), profile="embedded", revisions={current})
    assert "0123456789abcdef" in str(caught.value) and current in str(caught.value)
    assert caught.value.metadata == {
        "key_profile": "embedded",
        "key_revision": "0123456789abcdef",
        "server_revisions": current,
    }
    # served side by side: the old revision is accepted where the server serves it
    store.key_for_use(
        owner, other_revision(store, owner), profile="embedded", revisions={current, "0123456789abcdef"}
    )


def other_revision(store: KeyStore, owner: str) -> str:
    """A new key of ``owner`` made under revision 0123456789abcdef."""
    return store.create_key(
        owner, "carol", profile_id="embedded", profile_revision="0123456789abcdef", actor=ACTOR
    ).key_id


def test_check_usable_follows_revocation(store: KeyStore) -> None:
    owner = tenant()
    record = create(store, owner)
    store.check_usable(owner, record.key_id, 1)
    store.revoke_key(owner, record.key_id, actor=ACTOR)
    with pytest.raises(KeyRevokedError):
        store.check_usable(owner, record.key_id, 1)


# -- a store made before migration 0002 --------------------------------------------------------


def test_a_store_made_before_0002_is_upgraded(backend: Backend, kek: KeyEncryptionKey) -> None:
    from keystore_0001 import make_store_0001

    from faceanonymixer.keystore.schema import keys as keys_table

    legacy = make_store_0001(backend.url, kek, tenant="acme")
    with KeyStore.open(backend.url, kek) as upgraded:
        report = upgraded.verify()
        assert report.ok, report.problems
        assert (report.keys, report.events) == (4, 4 + 1)  # three creates, a revoke, the anchor
        events = upgraded.audit_events()
        assert [e.mac_epoch for e in events] == [None] * 4 + [1] and events[-1].action == "upgrade"
        assert events[-1].details["legacy_head"] == events[-2].hash
        for key in legacy:  # ids and material unchanged
            record = upgraded.get_key("acme", key.key_id)
            assert record.state == key.state
            assert record.profile_revision == migration_0002().REVISIONS_2026_12_07["embedded"]
            if key.state == "active":
                assert upgraded.key_for_use("acme", key.key_id)[1].material == key.material
        # writes and rotation work on it, and it still verifies
        create(upgraded, "acme")
        upgraded.rotate_kek(KeyEncryptionKey(os.urandom(32)), actor="admin")
        assert upgraded.verify().ok
    with backend.raw.connect() as connection:
        assert (
            connection.execute(sa.select(sa.func.count()).where(keys_table.c.row_mac.is_(None))).scalar() == 0
        )
        context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
        assert compare_metadata(context, metadata) == []


def test_the_legacy_chain_is_anchored_by_the_upgrade(backend: Backend, kek: KeyEncryptionKey) -> None:
    """After the upgrade, rewriting the old plain-SHA-256 events (and re-linking them) breaks the
    keyed anchor, which names the old head."""
    from keystore_0001 import make_store_0001

    make_store_0001(backend.url, kek)
    with KeyStore.open(backend.url, kek) as upgraded:
        backend.drop_audit_triggers()
        backend.execute("UPDATE audit_events SET actor = 'mallory' WHERE seq = 1")
        recompute_plain_chain(backend)
        report = upgraded.verify()
        assert not report.ok and any("event 5" in p for p in report.problems), report.problems


def migration_0002() -> Any:
    import importlib.util

    from faceanonymixer.keystore.database import MIGRATIONS

    [path] = (MIGRATIONS / "versions").glob("0002_*.py")
    spec = importlib.util.spec_from_file_location("migration_0002", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
