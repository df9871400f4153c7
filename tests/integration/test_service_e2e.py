"""End to end: real ``faceanonymixer serve`` processes on loopback, real photos, real key stores
(SQLite, and PostgreSQL where one is reachable), called over gRPC and through the command line.

Covers the life of a key across a restart, the CLI's exit codes against a server, durability of
acknowledged revocations across SIGKILL, that no key material or KEK is ever written in clear,
the start-up refusals (wrong or missing KEK, no auth on a public address), health and graceful
shutdown, and the Prometheus metrics. Servers run one engine worker on one thread and one
optimisation step (``service_harness.FAST_OPTIMISATION``); processes are shared where tests allow.
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import sqlalchemy as sa
from google.rpc import code_pb2, error_details_pb2
from PIL import Image, ImageOps
from prometheus_client.parser import text_string_to_metric_families
from service_harness import (
    ServerProcess,
    error_reason,
    health_status,
    stubs,
    write_config,
)
from typer.testing import CliRunner

from faceanonymixer.cli.main import app
from faceanonymixer.engine.profiles import get_profile
from faceanonymixer.keystore import KeyEncryptionKey, KeyStore
from faceanonymixer.keystore.schema import keys as keys_table
from faceanonymixer_client.errors import error_from_status
from faceanonymixer_proto.v1 import keys_pb2, keys_pb2_grpc, protection_pb2

#: real server processes on SQLite and PostgreSQL: slow, not in the quick loop
pytestmark = pytest.mark.slow

BACKENDS = ["sqlite", "postgresql"]
#: seconds any one gRPC call may take (a protection on a busy 2-core machine included)
CALL_TIMEOUT = 120.0
#: seconds a server that must refuse to start may take to exit (Python and torch imports)
REFUSAL_TIMEOUT = 60.0
PROTECTION_SERVICE = "faceanonymixer.v1.ProtectionService"
KEY_SERVICE = "faceanonymixer.v1.KeyService"
PROFILE = get_profile("embedded")
#: keys created for the durability test, and the acknowledged revocations before SIGKILL
DURABILITY_KEYS = 30
KILL_AFTER = 10
REVOKERS = 3

Refusal = tuple[grpc.StatusCode, str]


# ---- helpers ---------------------------------------------------------------------------------


def server_settings(store_url: str, **extra: Any) -> dict[str, Any]:
    """One worker, one torch thread: the machine is shared."""
    return {
        "keystore": store_url,
        "workers": 1,
        "threads": 1,
        "shutdown_grace_seconds": 10,
        **extra,
    }


def refusal(call: Callable[[], object]) -> Refusal:
    """The status code and ErrorInfo reason of a call that must fail."""
    try:
        call()
    except grpc.RpcError as error:
        assert isinstance(error, grpc.Call)
        return error.code(), error_reason(error)
    raise AssertionError("the call succeeded; it should have been refused")


def list_all_keys(keys: keys_pb2_grpc.KeyServiceStub) -> list[keys_pb2.Key]:
    """Every key of the caller's tenant, one key per page (so paging runs too)."""
    found: list[keys_pb2.Key] = []
    request = keys_pb2.ListKeysRequest(page_size=1)
    while True:
        page = keys.ListKeys(request, timeout=CALL_TIMEOUT)
        found.extend(page.keys)
        if not page.next_page_token:
            return found
        request.page_token = page.next_page_token


def event_names(server: ServerProcess) -> list[str]:
    return [str(entry.get("event")) for entry in server.events()]


def exit_status(server: ServerProcess, timeout: float = REFUSAL_TIMEOUT) -> int:
    """The exit status of a server expected to exit by itself; killed (and failed) if it does not."""
    try:
        return server.wait_exit(timeout)
    except subprocess.TimeoutExpired:
        server.kill()
        raise AssertionError(f"the server did not exit within {timeout} s:\n{server.log_text()}") from None


def decoded(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def photo_size(path: Path) -> tuple[int, int]:
    """Width and height as the server decodes the photo (EXIF orientation applied)."""
    with Image.open(path) as image:
        return ImageOps.exif_transpose(image).size


def assert_protected(
    reply: protection_pb2.ProtectFaceResponse | protection_pb2.ProtectFacesResponse,
    key: keys_pb2.Key,
    size: tuple[int, int],
) -> None:
    """A PNG of ``size``, made with ``key``, with its timings and face box."""
    assert reply.image_format == protection_pb2.IMAGE_FORMAT_PNG
    image = decoded(reply.image)
    assert image.format == "PNG"
    assert image.size == size
    assert (reply.key_id, reply.key_version, reply.profile_id) == (key.key_id, key.version, key.profile_id)
    assert reply.HasField("timings")
    timings = reply.timings
    assert timings.total.ToNanoseconds() > 0 and timings.optimise.ToNanoseconds() > 0
    assert timings.total.ToNanoseconds() >= timings.optimise.ToNanoseconds()
    assert reply.HasField("face_box")
    box = reply.face_box
    assert box.right > box.left and box.bottom > box.top


def fresh_store_url(request: pytest.FixtureRequest, backend: str, label: str, folder: Path) -> str:
    """A new, empty key store: an SQLite file in ``folder``, or a new PostgreSQL database (dropped
    when ``request``'s scope ends) beside the module's ``postgres_database``."""
    if backend == "sqlite":
        return f"sqlite:///{folder / f'{label}.db'}"
    base: sa.URL = request.getfixturevalue("postgres_database")
    name = f"{base.database}_{label}"
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    request.addfinalizer(drop)
    # KeyStore.open takes postgresql+psycopg:// as well as postgresql:// (both run on psycopg 3)
    return base.set(database=name).render_as_string(hide_password=False)


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``faceanonymixer ARGS`` in a process of its own."""
    return subprocess.run(
        [sys.executable, "-m", "faceanonymixer.cli", *args],
        capture_output=True,
        text=True,
        timeout=REFUSAL_TIMEOUT,
        env={**os.environ, **(env or {})},
        check=False,
    )


# ---- fixtures --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Photos:
    main: Path
    #: another photo of the same person as ``main``
    same_person: Path
    #: the first bytes of ``main``: a truncated JPEG
    broken: bytes


@pytest.fixture(scope="module")
def photos(faces_root: Path) -> Photos:
    folder = faces_root / "fr_examples" / "kit_harington"
    main = folder / "john2.jpeg"
    return Photos(main=main, same_person=folder / "john1.jpeg", broken=main.read_bytes()[:300])


# ---- 1, 4 and 7: the life of a key across a restart ------------------------------------------


@dataclass
class Phase:
    """What one server process answered about the created key and its replacement, after
    the revocation, and how it stopped."""

    server: ServerProcess
    health: dict[str, str]
    old_refusal: Refusal
    protected_with_new: protection_pb2.ProtectFaceResponse
    old_key: keys_pb2.Key
    new_key: keys_pb2.Key
    listed: list[keys_pb2.Key]
    exit_status: int


@dataclass
class Lifecycle:
    backend: str
    store_url: str
    kek_file: Path
    created: keys_pb2.Key
    cropped: protection_pb2.ProtectFaceResponse
    pasted: protection_pb2.ProtectFaceResponse
    revoked: keys_pb2.RevokeKeyResponse
    batch: list[protection_pb2.ProtectFacesResponse]
    batch_code: grpc.StatusCode
    first: Phase
    restarted: Phase


def observe(server: ServerProcess, old: str, new: str, photo: bytes) -> Phase:
    """Health, the two keys and a protection with each on a serving server, then SIGTERM."""
    with stubs(server.address) as (protection, keys, channel):
        health = {name: health_status(channel, name) for name in ("", PROTECTION_SERVICE, KEY_SERVICE)}
        old_refusal = refusal(
            lambda: protection.ProtectFace(
                protection_pb2.ProtectFaceRequest(image=photo, key_id=old), timeout=CALL_TIMEOUT
            )
        )
        protected = protection.ProtectFace(
            protection_pb2.ProtectFaceRequest(image=photo, key_id=new), timeout=CALL_TIMEOUT
        )
        old_key = keys.GetKey(keys_pb2.GetKeyRequest(key_id=old), timeout=CALL_TIMEOUT).key
        new_key = keys.GetKey(keys_pb2.GetKeyRequest(key_id=new), timeout=CALL_TIMEOUT).key
        listed = list_all_keys(keys)
    return Phase(server, health, old_refusal, protected, old_key, new_key, listed, server.stop())


@pytest.fixture(scope="module", params=BACKENDS)
def lifecycle(
    request: pytest.FixtureRequest,
    weights: None,
    kek_file: Path,
    photos: Photos,
    tmp_path_factory: pytest.TempPathFactory,
) -> Lifecycle:
    """Create, protect, revoke, protect, stop; start again on the same store and look again.

    The calls run here once per backend; the tests below check what they answered.
    """
    backend: str = request.param
    workdir = tmp_path_factory.mktemp(f"lifecycle-{backend}")
    store_url = fresh_store_url(request, backend, "lifecycle", workdir)
    photo = photos.main.read_bytes()

    first = ServerProcess(workdir, kek_file, server_settings(store_url))
    with first.running():
        with stubs(first.address) as (protection, keys, _):
            created = keys.CreateKey(
                keys_pb2.CreateKeyRequest(subject="subject-1", labels={"team": "e2e"}), timeout=CALL_TIMEOUT
            ).key
            cropped = protection.ProtectFace(
                protection_pb2.ProtectFaceRequest(image=photo, key_id=created.key_id), timeout=CALL_TIMEOUT
            )
            pasted = protection.ProtectFace(
                protection_pb2.ProtectFaceRequest(image=photo, key_id=created.key_id, paste_back=True),
                timeout=CALL_TIMEOUT,
            )
            revoked = keys.RevokeKey(keys_pb2.RevokeKeyRequest(key_id=created.key_id), timeout=CALL_TIMEOUT)
            stream = protection.ProtectFaces(
                protection_pb2.ProtectFacesRequest(
                    images=[photo, photos.broken, photos.same_person.read_bytes()],
                    key_id=revoked.replacement_key.key_id,
                    paste_back=True,
                ),
                timeout=CALL_TIMEOUT,
            )
            batch = list(stream)
            batch_code = stream.code()
        first_phase = observe(first, created.key_id, revoked.replacement_key.key_id, photo)

    restarted = ServerProcess(workdir, kek_file, server_settings(store_url))
    with restarted.running():
        restarted_phase = observe(restarted, created.key_id, revoked.replacement_key.key_id, photo)
    return Lifecycle(
        backend=backend,
        store_url=store_url,
        kek_file=kek_file,
        created=created,
        cropped=cropped,
        pasted=pasted,
        revoked=revoked,
        batch=batch,
        batch_code=batch_code,
        first=first_phase,
        restarted=restarted_phase,
    )


def test_create_key_and_protect_face(lifecycle: Lifecycle, photos: Photos) -> None:
    created = lifecycle.created
    assert created.key_id
    assert (created.version, created.state) == (1, keys_pb2.KEY_STATE_ACTIVE)
    assert (created.subject, dict(created.labels), created.profile_id) == (
        "subject-1",
        {"team": "e2e"},
        PROFILE.profile_id,
    )
    assert not created.replaces_key_id and not created.replaced_by_key_id
    # the aligned protected face, at the profile's output size
    assert_protected(lifecycle.cropped, created, (PROFILE.output_size, PROFILE.output_size))
    # paste_back: the whole photo with the protected face in place, the face box inside it
    width, height = photo_size(photos.main)
    assert_protected(lifecycle.pasted, created, (width, height))
    box = lifecycle.pasted.face_box
    assert 0 <= (box.left + box.right) // 2 < width and 0 <= (box.top + box.bottom) // 2 < height
    with Image.open(photos.main) as original:
        unprotected = ImageOps.exif_transpose(original).convert("RGB").tobytes()
    assert decoded(lifecycle.pasted.image).convert("RGB").tobytes() != unprotected, (
        "the face was not replaced"
    )


def test_revoke_key_issues_a_new_key_and_retires_the_old_one(lifecycle: Lifecycle) -> None:
    old, reply = lifecycle.created, lifecycle.revoked
    assert reply.revoked_key.key_id == old.key_id
    assert reply.revoked_key.state == keys_pb2.KEY_STATE_REVOKED
    assert reply.revoked_key.HasField("revoke_time")
    replacement = reply.replacement_key
    assert replacement.key_id and replacement.key_id != old.key_id
    assert (replacement.version, replacement.state) == (2, keys_pb2.KEY_STATE_ACTIVE)
    assert replacement.replaces_key_id == old.key_id
    assert reply.revoked_key.replaced_by_key_id == replacement.key_id
    assert (replacement.subject, dict(replacement.labels)) == (old.subject, dict(old.labels))
    # the old key refuses use, the new one protects
    phase = lifecycle.first
    assert phase.old_refusal == (grpc.StatusCode.FAILED_PRECONDITION, "KEY_REVOKED")
    assert (phase.protected_with_new.key_id, phase.protected_with_new.key_version) == (
        replacement.key_id,
        2,
    )
    assert decoded(phase.protected_with_new.image).format == "PNG"


def test_protect_faces_reports_each_photo_on_its_own(lifecycle: Lifecycle, photos: Photos) -> None:
    assert lifecycle.batch_code == grpc.StatusCode.OK
    by_index = {item.index: item for item in lifecycle.batch}
    assert sorted(by_index) == [0, 1, 2] and len(lifecycle.batch) == 3
    broken = by_index[1]
    assert broken.status.code == code_pb2.INVALID_ARGUMENT
    assert error_from_status(broken.status).reason == "INVALID_IMAGE"
    violations = []
    for detail in broken.status.details:
        bad_request = error_details_pb2.BadRequest()
        if detail.Unpack(bad_request):
            violations.extend(violation.field for violation in bad_request.field_violations)
    assert violations == ["images[1]"]
    assert not broken.image and not broken.key_id
    replacement = lifecycle.revoked.replacement_key
    for index, path in ((0, photos.main), (2, photos.same_person)):
        item = by_index[index]
        assert item.status.code == code_pb2.OK, item.status.message
        assert_protected(item, replacement, photo_size(path))


@pytest.mark.parametrize("phase_name", ["first", "restarted"])
def test_key_states_hold_across_a_restart(lifecycle: Lifecycle, phase_name: str) -> None:
    phase: Phase = getattr(lifecycle, phase_name)
    old_id, new_id = lifecycle.created.key_id, lifecycle.revoked.replacement_key.key_id
    assert phase.old_refusal == (grpc.StatusCode.FAILED_PRECONDITION, "KEY_REVOKED")
    assert (phase.protected_with_new.key_id, phase.protected_with_new.key_version) == (new_id, 2)
    assert decoded(phase.protected_with_new.image).format == "PNG"
    assert (phase.old_key.key_id, phase.old_key.state, phase.old_key.version) == (
        old_id,
        keys_pb2.KEY_STATE_REVOKED,
        1,
    )
    assert phase.old_key.replaced_by_key_id == new_id
    assert (phase.new_key.key_id, phase.new_key.state, phase.new_key.version) == (
        new_id,
        keys_pb2.KEY_STATE_ACTIVE,
        2,
    )
    assert phase.new_key.replaces_key_id == old_id
    assert {key.key_id: key.state for key in phase.listed} == {
        old_id: keys_pb2.KEY_STATE_REVOKED,
        new_id: keys_pb2.KEY_STATE_ACTIVE,
    }
    assert len(phase.listed) == 2
    # the restarted server reads the same records the first one wrote
    assert phase.old_key == lifecycle.first.old_key and phase.new_key == lifecycle.first.new_key


@pytest.mark.parametrize("phase_name", ["first", "restarted"])
def test_health_serves_then_sigterm_stops_gracefully(lifecycle: Lifecycle, phase_name: str) -> None:
    phase: Phase = getattr(lifecycle, phase_name)
    assert phase.health == {"": "SERVING", PROTECTION_SERVICE: "SERVING", KEY_SERVICE: "SERVING"}
    assert phase.exit_status == 0, phase.server.log_text()
    names = event_names(phase.server)
    assert "raw" not in names, "every log line is JSON"
    assert names.index("listening") < names.index("serving") < names.index("shutting down")
    assert names.index("shutting down") < names.index("stopped")
    assert names[-1] == "stopped"


def encodings(secret: bytes) -> dict[str, bytes]:
    """Every spelling of ``secret`` that a careless log line or column could hold."""
    forms = {"raw": secret, "hex": secret.hex().encode(), "HEX": secret.hex().upper().encode()}
    for name, encoded in (
        ("base64", base64.b64encode(secret)),
        ("base64url", base64.urlsafe_b64encode(secret)),
    ):
        forms[name] = encoded
        forms[f"{name} unpadded"] = encoded.rstrip(b"=")
    return forms


def store_contents(store_url: str) -> dict[str, bytes]:
    """The store as bytes: the SQLite files, or every PostgreSQL row as text plus its raw blobs."""
    url = sa.make_url(store_url)
    if url.get_backend_name() == "sqlite":
        database = Path(url.database or "")
        files = sorted(database.parent.glob(f"{database.name}*"))  # the file, -wal and -shm if any
        assert database in files
        return {str(path): path.read_bytes() for path in files}
    engine = sa.create_engine(url)
    parts: list[bytes] = []
    try:
        with engine.connect() as connection:
            tables = connection.execute(
                sa.text("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
            ).scalars()
            for table in list(tables):
                rows = connection.execute(sa.text(f'SELECT t::text, t.* FROM "{table}" t')).all()
                for row in rows:
                    parts.append(str(row[0]).encode())
                    parts.extend(bytes(value) for value in row[1:] if isinstance(value, bytes | memoryview))
    finally:
        engine.dispose()
    return {"PostgreSQL rows": b"\n".join(parts)}


def key_materials(store_url: str, kek: bytes) -> tuple[list[Any], dict[str, bytes]]:
    """Every stored row and every key's material in clear (revoked keys included)."""
    wrapping = KeyEncryptionKey(kek)
    engine = sa.create_engine(sa.make_url(store_url))
    try:
        with engine.connect() as connection:
            rows = connection.execute(sa.select(keys_table)).all()
    finally:
        engine.dispose()
    materials = {
        row.key_id: wrapping.unwrap(
            bytes(row.wrapped_material), tenant=row.tenant, key_id=row.key_id, version=int(row.version)
        )
        for row in rows
    }
    # the store's own path agrees for the keys it still hands out
    with KeyStore.open(store_url, wrapping) as store:
        for row in rows:
            if row.state == "active":
                _, key = store.key_for_use(row.tenant, row.key_id)
                assert key.material == materials[row.key_id]
    return rows, materials


def test_no_key_material_or_kek_in_the_store_or_the_logs(lifecycle: Lifecycle) -> None:
    # both servers have stopped: read what they left behind before opening the store here
    haystacks = store_contents(lifecycle.store_url)
    for phase in (lifecycle.first, lifecycle.restarted):
        haystacks[str(phase.server.log_path)] = phase.server.log_path.read_bytes()
    kek = lifecycle.kek_file.read_bytes()
    rows, materials = key_materials(lifecycle.store_url, kek)
    assert set(materials) == {lifecycle.created.key_id, lifecycle.revoked.replacement_key.key_id}
    store_bytes = b"".join(data for name, data in haystacks.items() if not name.endswith(".log"))
    logs = b"".join(data for name, data in haystacks.items() if name.endswith(".log"))
    for row in rows:  # the search looks at the right bytes: wrapped blobs and key ids are there
        wrapped = bytes(row.wrapped_material)
        assert wrapped in store_bytes or wrapped.hex().encode() in store_bytes
        assert row.key_id.encode() in logs
    secrets = {"the KEK": kek, **{f"material of {key_id}": value for key_id, value in materials.items()}}
    assert len(set(secrets.values())) == len(secrets)
    for label, secret in secrets.items():
        for form, spelled in encodings(secret).items():
            for where, data in haystacks.items():
                assert spelled not in data, f"{label} ({form}) appears in {where}"


# ---- 3: acknowledged revocations survive SIGKILL ---------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_acknowledged_revocations_survive_sigkill(
    request: pytest.FixtureRequest,
    backend: str,
    weights: None,
    kek_file: Path,
    photos: Photos,
    tmp_path: Path,
) -> None:
    store_url = fresh_store_url(request, backend, "durability", tmp_path)
    photo = photos.main.read_bytes()
    server = ServerProcess(tmp_path, kek_file, server_settings(store_url))
    acknowledged: dict[str, keys_pb2.Key] = {}  # revoked key id -> replacement, as answered
    failures: list[grpc.StatusCode] = []
    lock, enough = threading.Lock(), threading.Event()
    with server.running(), stubs(server.address) as (_, keys, _):
        created = [
            keys.CreateKey(keys_pb2.CreateKeyRequest(subject=f"subject-{n}"), timeout=CALL_TIMEOUT).key
            for n in range(DURABILITY_KEYS)
        ]

        def revoke_one_by_one(key_ids: list[str]) -> None:
            for key_id in key_ids:
                try:
                    reply = keys.RevokeKey(keys_pb2.RevokeKeyRequest(key_id=key_id), timeout=CALL_TIMEOUT)
                except grpc.RpcError as error:  # the server is gone: this call was in flight
                    assert isinstance(error, grpc.Call)
                    with lock:
                        failures.append(error.code())
                    return
                with lock:
                    acknowledged[key_id] = reply.replacement_key
                    if len(acknowledged) >= KILL_AFTER:
                        enough.set()

        ids = [key.key_id for key in created]
        revokers = [
            threading.Thread(target=revoke_one_by_one, args=(ids[n::REVOKERS],)) for n in range(REVOKERS)
        ]
        for thread in revokers:
            thread.start()
        assert enough.wait(CALL_TIMEOUT), "no revocations were acknowledged"
        server.kill()  # SIGKILL while the revokers still have calls in flight
        for thread in revokers:
            thread.join(CALL_TIMEOUT)
            assert not thread.is_alive()
    assert server.process is not None and server.process.returncode == -9
    assert KILL_AFTER <= len(acknowledged) < DURABILITY_KEYS, "the kill did not land mid-stream"
    assert failures and set(failures) <= {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}

    restarted = ServerProcess(tmp_path, kek_file, server_settings(store_url))
    with restarted.running(), stubs(restarted.address) as (protection, keys, _):
        for old_id, replacement in acknowledged.items():
            assert refusal(
                lambda old_id=old_id: protection.ProtectFace(
                    protection_pb2.ProtectFaceRequest(image=photo, key_id=old_id), timeout=CALL_TIMEOUT
                )
            ) == (grpc.StatusCode.FAILED_PRECONDITION, "KEY_REVOKED"), old_id
            old = keys.GetKey(keys_pb2.GetKeyRequest(key_id=old_id), timeout=CALL_TIMEOUT).key
            assert (old.state, old.replaced_by_key_id) == (keys_pb2.KEY_STATE_REVOKED, replacement.key_id)
            new = keys.GetKey(keys_pb2.GetKeyRequest(key_id=replacement.key_id), timeout=CALL_TIMEOUT).key
            assert new == replacement
            assert (new.state, new.version, new.replaces_key_id) == (keys_pb2.KEY_STATE_ACTIVE, 2, old_id)
        listed = list_all_keys(keys)
        assert restarted.stop() == 0
    revoked_now = {key.key_id for key in listed if key.state == keys_pb2.KEY_STATE_REVOKED}
    assert set(acknowledged) <= revoked_now  # unacknowledged ones may or may not have committed
    assert len(listed) == DURABILITY_KEYS + len(revoked_now)

    audit = run_cli(
        "keys",
        "audit",
        "--verify",
        "--keystore",
        store_url,
        "--json",
        env={"FACEANONYMIXER_KEK_FILE": str(kek_file)},
    )
    assert audit.returncode == 0, audit.stdout + audit.stderr
    report = json.loads(audit.stdout)
    assert report["ok"] is True and report["problems"] == []
    assert report["keys"] == len(listed) and report["events"] == DURABILITY_KEYS + len(revoked_now)
    with KeyStore.open(store_url, KeyEncryptionKey(kek_file.read_bytes())) as store:
        verdict = store.verify()
    assert verdict.ok, verdict.problems


# ---- 2 and 8: the command line and the metrics against one shared server ----------------------


@pytest.fixture(scope="module")
def shared_server(
    weights: None, kek_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp("shared")
    store_url = f"sqlite:///{workdir / 'keys.db'}"
    server = ServerProcess(workdir, kek_file, server_settings(store_url, metrics_listen="127.0.0.1:0"))
    with server.running():
        yield server
        assert server.stop() == 0, server.log_text()


def test_cli_creates_and_revokes_keys_on_a_server(shared_server: ServerProcess) -> None:
    address = shared_server.address
    created = run_cli("keys", "create", "--subject", "cli-subject", "--server", address, "--json")
    assert created.returncode == 0, created.stderr
    key_id = json.loads(created.stdout)["key_id"]
    revoked = run_cli("keys", "revoke", key_id, "--server", address, "--json")
    assert revoked.returncode == 0, revoked.stderr
    payload = json.loads(revoked.stdout)
    with stubs(address) as (_, keys, _):
        old = keys.GetKey(keys_pb2.GetKeyRequest(key_id=key_id), timeout=CALL_TIMEOUT).key
        new = keys.GetKey(keys_pb2.GetKeyRequest(key_id=payload["key_id"]), timeout=CALL_TIMEOUT).key
    assert (old.subject, old.version, old.state) == ("cli-subject", 1, keys_pb2.KEY_STATE_REVOKED)
    assert payload["key_id"] != key_id and old.replaced_by_key_id == payload["key_id"]
    assert (payload["version"], payload["state"], payload["replaces_key_id"]) == (2, "active", key_id)
    assert payload["revoked_key"]["key_id"] == key_id and payload["revoked_key"]["state"] == "revoked"
    assert (new.version, new.state, new.subject) == (2, keys_pb2.KEY_STATE_ACTIVE, "cli-subject")


runner = CliRunner()


def protect_on(server: ServerProcess, key_id: str, out: Path, image: Path) -> Any:
    """``faceanonymixer protect --server`` in this process (its imports cost seconds per process)."""
    arguments = ["protect", "--server", server.address, "--key-id", key_id, "--out", str(out), "--json"]
    return runner.invoke(app, [*arguments, str(image)])


def assert_cli_error(result: Any, exit_code: int, label: str) -> None:
    """The exit code, and (``--json``) the error as JSON on stdout, its code or reason ``label``."""
    assert result.exit_code == exit_code, result.output
    error = json.loads(result.stdout)["error"]
    assert label in (error["code"], error["reason"]) and error["message"], error
    assert not result.stderr.strip(), result.stderr


def test_cli_protect_exit_codes_against_a_server(
    shared_server: ServerProcess, photos: Photos, tmp_path: Path
) -> None:
    with stubs(shared_server.address) as (_, keys, _):
        old = keys.CreateKey(keys_pb2.CreateKeyRequest(subject="cli-protect"), timeout=CALL_TIMEOUT).key
        new = keys.RevokeKey(
            keys_pb2.RevokeKeyRequest(key_id=old.key_id), timeout=CALL_TIMEOUT
        ).replacement_key
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("these are notes, not a photo\n")
    faceless = tmp_path / "wall.png"
    Image.new("RGB", (200, 200), (128, 128, 128)).save(faceless)

    refused = tmp_path / "refused"
    assert_cli_error(protect_on(shared_server, old.key_id, refused, photos.main), 4, "KEY_REVOKED")
    assert not refused.exists()

    out = tmp_path / "out"
    result = protect_on(shared_server, new.key_id, out, photos.main)
    assert result.exit_code == 0, result.output
    written = out / f"{photos.main.stem}.png"
    assert sorted(path.name for path in out.iterdir()) == [written.name]
    with Image.open(written) as image:
        assert image.format == "PNG" and image.size == photo_size(photos.main)
    report = json.loads(result.stdout)
    assert (report["key_id"], report["key_version"]) == (new.key_id, 2)
    assert report["outputs"][0]["output"] == str(written)

    for image, exit_code, label in ((not_an_image, 2, "INVALID_ARGUMENT"), (faceless, 3, "NO_FACE")):
        target = tmp_path / f"out-{exit_code}"
        assert_cli_error(protect_on(shared_server, new.key_id, target, image), exit_code, label)
        assert not target.exists()


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def calls(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], method: str, code: str) -> float:
    return samples.get(("faceanonymixer_calls_total", frozenset({("method", method), ("code", code)})), 0.0)


def test_metrics_count_calls_and_show_the_queue(shared_server: ServerProcess, photos: Photos) -> None:
    [port] = [entry["port"] for entry in shared_server.events() if entry.get("event") == "metrics"]
    assert isinstance(port, int) and port > 0
    before = scrape(port)
    photo = photos.main.read_bytes()
    with stubs(shared_server.address) as (protection, keys, _):
        old = keys.CreateKey(keys_pb2.CreateKeyRequest(subject="metrics"), timeout=CALL_TIMEOUT).key
        new = keys.RevokeKey(
            keys_pb2.RevokeKeyRequest(key_id=old.key_id), timeout=CALL_TIMEOUT
        ).replacement_key
        for _ in range(2):
            protection.ProtectFace(
                protection_pb2.ProtectFaceRequest(image=photo, key_id=new.key_id), timeout=CALL_TIMEOUT
            )
        refusal(
            lambda: protection.ProtectFace(
                protection_pb2.ProtectFaceRequest(image=photo, key_id=old.key_id), timeout=CALL_TIMEOUT
            )
        )
    after = scrape(port)
    assert calls(after, "ProtectFace", "OK") - calls(before, "ProtectFace", "OK") == 2
    assert (
        calls(after, "ProtectFace", "FAILED_PRECONDITION")
        - calls(before, "ProtectFace", "FAILED_PRECONDITION")
        == 1
    )
    assert calls(after, "CreateKey", "OK") - calls(before, "CreateKey", "OK") == 1
    assert calls(after, "RevokeKey", "OK") - calls(before, "RevokeKey", "OK") == 1
    assert after[("faceanonymixer_queue_depth", frozenset())] == 0
    assert after[("faceanonymixer_busy_workers", frozenset())] == 0
    latency = ("faceanonymixer_call_seconds_count", frozenset({("method", "ProtectFace")}))
    assert after[latency] - before.get(latency, 0.0) == 3


# ---- 5 and 6: start-up refusals --------------------------------------------------------------


def test_a_wrong_key_encryption_key_stops_start_up(tmp_path: Path) -> None:
    store_url = f"sqlite:///{tmp_path / 'keys.db'}"
    KeyStore.open(store_url, KeyEncryptionKey.generate()).close()  # created under KEK A
    other = tmp_path / "other-kek.bin"
    other.write_bytes(os.urandom(32))  # KEK B
    server = ServerProcess(tmp_path, other, server_settings(store_url)).start(wait=False)
    started = time.monotonic()
    status = exit_status(server)
    assert status != 0
    assert time.monotonic() - started < REFUSAL_TIMEOUT
    lines = server.log_text().splitlines()
    said = [line for line in lines if "key-encryption key does not open" in line]
    assert len(said) == 1 and said[0].startswith("error: "), lines
    assert "Traceback" not in server.log_text()
    assert not {"listening", "serving"} & set(event_names(server))


def test_a_missing_key_encryption_key_stops_start_up(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "server.toml",
        {"listen": "127.0.0.1:0", "keystore": f"sqlite:///{tmp_path / 'keys.db'}"},
    )
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in ("FACEANONYMIXER_KEK", "FACEANONYMIXER_KEK_FILE")
    }
    result = subprocess.run(
        [sys.executable, "-m", "faceanonymixer.cli", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        env=env,
        timeout=REFUSAL_TIMEOUT,
        check=False,
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no key-encryption key"), result.stderr
    assert "FACEANONYMIXER_KEK_FILE" in lines[0]
    assert "listening" not in result.stdout + result.stderr


def test_no_authentication_on_a_public_address_stops_start_up(tmp_path: Path, kek_file: Path) -> None:
    settings = server_settings(f"sqlite:///{tmp_path / 'keys.db'}", listen="0.0.0.0:0")
    server = ServerProcess(tmp_path, kek_file, settings).start(wait=False)
    assert exit_status(server) != 0
    lines = server.log_text().splitlines()
    said = [line for line in lines if "without authentication" in line]
    assert len(said) == 1 and said[0].startswith("error: refusing to serve on 0.0.0.0:0"), lines
    assert not {"listening", "serving"} & set(event_names(server))


def test_models_that_do_not_load_stop_start_up_in_one_line(tmp_path: Path, kek_file: Path) -> None:
    settings = server_settings(f"sqlite:///{tmp_path / 'keys.db'}", device="no-such-device")
    server = ServerProcess(tmp_path, kek_file, settings).start(wait=False)
    assert exit_status(server) == 1
    said = [line for line in server.log_text().splitlines() if line.startswith("error: ")]
    assert len(said) == 1 and "the embedded models did not load" in said[0], server.log_text()
    assert "serving" not in event_names(server)
