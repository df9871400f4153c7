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

from faceanonymixer.errors import (
    InvalidRequestError,
    KeyAccessDeniedError,
    KeyNotFoundError,
    KeyRevokedError,
    KeyStoreError,
    WrongKeyEncryptionKeyError,
)
from faceanonymixer.keystore import AuditEvent, KeyEncryptionKey, KeyRecord, KeyStore
from faceanonymixer.keystore import key_ids as key_ids_module
from faceanonymixer.keystore.key_ids import KeyIds
from faceanonymixer.keystore.schema import VERSION_TABLE, metadata

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
    with pytest.raises(KeyStoreError, match="failed authentication"):
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
