"""The service under attack (issue 39): real ``faceanonymixer serve`` processes.

* Repeating a ProtectFaces call of 16 blank photos (each a NO_FACE) leaves the server's memory
  flat; a call over the pixel budget, or whose reply could not be sent, is refused before any work
  with RESOURCE_EXHAUSTED and an ErrorInfo, and logged and counted as such.
* A key made under a profile revision the server does not serve is FAILED_PRECONDITION
  PROFILE_MISMATCH naming both revisions.
* Key use is audited (per key and outcome, no image data) in the keyed audit log.
* Two servers on one PostgreSQL store: work queued on one under a key revoked on the other ends
  with FAILED_PRECONDITION KEY_REVOKED.

The full-size memory reproduction (16 blank 40 MP PNGs, five times) is
``benchmarks/service_hardening.py``; here the photos are 8 MP, the mechanism the same.
"""

from __future__ import annotations

import io
import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import sqlalchemy as sa
from PIL import Image
from service_harness import FAST_OPTIMISATION, ServerProcess, error_reason, stubs

from faceanonymixer.engine.profiles import (
    get_profile,
    profile_revision,
    served_profiles,
    with_optimisation_overrides,
)
from faceanonymixer.keystore import KeyEncryptionKey, KeyStore
from faceanonymixer_client.errors import error_from_rpc
from faceanonymixer_proto.v1 import keys_pb2, protection_pb2

CALL_TIMEOUT = 180.0
#: the hardened server's limits
MAX_MESSAGE_BYTES = 2_000_000
MAX_REQUEST_MEGAPIXELS = 130.0
#: 16 photos of 3266 x 2449 (8.0 MP, 24 MB decoded each): 128 MP, inside the budget
BLANK_SIDES = (3266, 2449)
REPETITIONS = 5
RSS_BOUND_MIB = 300.0


def blank_png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 200, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


def metric_calls(port: int, method: str, code: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "faceanonymixer_calls_total" and sample.labels == {
                "method": method,
                "code": code,
            }:
                return sample.value
    return 0.0


def calls_logged(server: ServerProcess, **fields: Any) -> list[dict[str, Any]]:
    return [
        entry
        for entry in server.events()
        if entry.get("event") == "call" and all(entry.get(name) == value for name, value in fields.items())
    ]


def refusal(call: Any) -> grpc.Call:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    assert isinstance(caught.value, grpc.Call)
    return caught.value


@dataclass
class Hardened:
    server: ServerProcess
    store_url: str
    kek_file: Path
    key_id: str
    metrics_port: int
    photo: bytes
    big_photo: bytes


@pytest.fixture(scope="module")
def hardened(
    weights: None, faces_root: Path, kek_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Hardened]:
    workdir = tmp_path_factory.mktemp("hardened")
    store_url = f"sqlite:///{workdir / 'keys.db'}"
    server = ServerProcess(
        workdir,
        kek_file,
        {
            "keystore": store_url,
            "workers": 1,
            "threads": 1,
            "max_message_bytes": MAX_MESSAGE_BYTES,
            "max_request_megapixels": MAX_REQUEST_MEGAPIXELS,
            "metrics_listen": "127.0.0.1:0",
            "audit_use_interval_seconds": 3600,  # flushed at shutdown
            "shutdown_grace_seconds": 10,
        },
    )
    with server.running(), stubs(server.address) as (_, keys, _):
        key = keys.CreateKey(keys_pb2.CreateKeyRequest(subject="hardened"), timeout=CALL_TIMEOUT).key
        [port] = [entry["port"] for entry in server.events() if entry.get("event") == "metrics"]
        yield Hardened(
            server,
            store_url,
            kek_file,
            key.key_id,
            port,
            (faces_root / "fr_examples" / "kit_harington" / "john2.jpeg").read_bytes(),
            (faces_root / "fr_examples" / "biden" / "biden2.jpg").read_bytes(),  # 1200 x 1200
        )


# ---- 1: memory --------------------------------------------------------------------------------


@pytest.mark.slow
def test_repeated_faceless_batches_leave_memory_flat(hardened: Hardened) -> None:
    images = [blank_png(*BLANK_SIDES)] * 16
    request = protection_pb2.ProtectFacesRequest(images=images, key_id=hardened.key_id)
    sizes = []
    with stubs(hardened.server.address) as (protection, _, _):
        for _ in range(REPETITIONS):
            replies = list(protection.ProtectFaces(request, timeout=CALL_TIMEOUT))
            assert len(replies) == 16
            assert {error_from_status_reason(reply.status) for reply in replies} == {"NO_FACE"}
            sizes.append(hardened.server.rss_mib())
    print(f"\nRSS after each of {REPETITIONS} calls of 16 blank 8 MP PNGs: {[round(s) for s in sizes]} MiB")
    assert max(sizes) - sizes[0] < RSS_BOUND_MIB, sizes


def error_from_status_reason(status: Any) -> str:
    from faceanonymixer_client.errors import error_from_status

    return error_from_status(status).reason


def test_a_call_over_the_pixel_budget_is_refused_before_any_decoding(hardened: Hardened) -> None:
    images = [blank_png(3300, 2600)] * 16  # 8.58 MP each: 137 MP
    request = protection_pb2.ProtectFacesRequest(images=images, key_id=hardened.key_id)
    before = metric_calls(hardened.metrics_port, "ProtectFaces", "RESOURCE_EXHAUSTED")
    with stubs(hardened.server.address) as (protection, _, _):
        error = refusal(lambda: list(protection.ProtectFaces(request, timeout=CALL_TIMEOUT)))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    typed = error_from_rpc(error)
    assert typed.reason == "PIXEL_BUDGET" and typed.retry_after is None
    assert typed.metadata == {"megapixels": "137.3", "budget_megapixels": "130"}
    assert metric_calls(hardened.metrics_port, "ProtectFaces", "RESOURCE_EXHAUSTED") - before == 1
    assert calls_logged(hardened.server, method="ProtectFaces", reason="PIXEL_BUDGET")


# ---- 8: a reply too large to send -------------------------------------------------------------


def test_a_reply_over_the_message_limit_is_refused_before_the_work(hardened: Hardened) -> None:
    """A 1200 x 1200 photo pasted back as PNG could take 4.4 MB, over the 2 MB limit: refused
    before it is queued, logged and counted as RESOURCE_EXHAUSTED; the face crop is served."""
    before = metric_calls(hardened.metrics_port, "ProtectFace", "RESOURCE_EXHAUSTED")
    pasted = protection_pb2.ProtectFaceRequest(
        image=hardened.big_photo, key_id=hardened.key_id, paste_back=True
    )
    with stubs(hardened.server.address) as (protection, _, _):
        error = refusal(lambda: protection.ProtectFace(pasted, timeout=CALL_TIMEOUT))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        typed = error_from_rpc(error)
        assert typed.reason == "REPLY_TOO_LARGE" and int(typed.metadata["reply_bytes"]) > MAX_MESSAGE_BYTES
        cropped = protection.ProtectFace(
            protection_pb2.ProtectFaceRequest(image=hardened.big_photo, key_id=hardened.key_id),
            timeout=CALL_TIMEOUT,
        )
        assert cropped.image
    assert metric_calls(hardened.metrics_port, "ProtectFace", "RESOURCE_EXHAUSTED") - before == 1
    [logged] = calls_logged(hardened.server, method="ProtectFace", reason="REPLY_TOO_LARGE")
    assert logged["code"] == "RESOURCE_EXHAUSTED"


# ---- profile revisions ------------------------------------------------------------------------


def test_a_key_of_another_profile_revision_is_refused_naming_both(hardened: Hardened) -> None:
    kek = KeyEncryptionKey.from_file(hardened.kek_file)
    with KeyStore.open(hardened.store_url, kek) as store:
        old = store.create_key(
            "default",
            "enrolled-before",
            profile_id="embedded",
            profile_revision="00000000deadbeef",
            actor="test",
        )
    current = with_optimisation_overrides(get_profile("embedded"), FAST_OPTIMISATION)
    served = profile_revision(current)
    # the server's revision and the archived ones of its profile (profiles.ARCHIVED_PROFILES)
    every = ", ".join(sorted(served_profiles(current)))
    with stubs(hardened.server.address) as (protection, _, _):
        error = refusal(
            lambda: protection.ProtectFace(
                protection_pb2.ProtectFaceRequest(image=hardened.photo, key_id=old.key_id),
                timeout=CALL_TIMEOUT,
            )
        )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    typed = error_from_rpc(error)
    assert typed.reason == "PROFILE_MISMATCH"
    assert (typed.metadata["key_revision"], typed.metadata["server_revisions"]) == (
        "00000000deadbeef",
        every,
    )
    assert "00000000deadbeef" in typed.message and served in typed.message


# ---- 3: key use is audited (runs last: it stops the server) -----------------------------------


def test_key_use_is_audited_without_image_data(hardened: Hardened) -> None:
    with stubs(hardened.server.address) as (protection, _, _):
        for _ in range(2):
            protection.ProtectFace(
                protection_pb2.ProtectFaceRequest(image=hardened.photo, key_id=hardened.key_id),
                timeout=CALL_TIMEOUT,
            )
    assert hardened.server.stop() == 0, hardened.server.log_text()  # SIGTERM flushes the counts
    with KeyStore.open(hardened.store_url, KeyEncryptionKey.from_file(hardened.kek_file)) as store:
        uses = [event for event in store.audit_events("default") if event.action == "use"]
        assert store.verify().ok
    [use] = [event for event in uses if event.key_id == hardened.key_id]
    assert use.version == 1 and use.actor == "service"
    assert use.details["calls"]["OK"] >= 3  # the crop of the reply test, and these two
    assert use.details["photos"] >= 3
    text = json.dumps(use.details)
    assert set(use.details) == {"calls", "photos", "first", "last"} and len(text) < 300


# ---- 2: revocation stops admitted work, across servers ----------------------------------------


@pytest.mark.slow
def test_work_queued_under_a_key_revoked_on_another_server_is_refused(
    weights: None,
    faces_root: Path,
    kek_file: Path,
    postgres_database: sa.URL,
    tmp_path: Path,
) -> None:
    store_url = postgres_database.render_as_string(hide_password=False)
    slow = {"steps": 120, "inversion_steps": 1}  # a few seconds a call on one thread
    common = {"keystore": store_url, "workers": 1, "threads": 1, "queue_size": 8, "optimisation": slow}
    photo = (faces_root / "fr_examples" / "kit_harington" / "john2.jpeg").read_bytes()
    server_x = ServerProcess(tmp_path, kek_file, {**common, "metrics_listen": "127.0.0.1:0"})
    server_y = ServerProcess(tmp_path, kek_file, common)
    with (
        server_x.running(),
        server_y.running(),
        stubs(server_y.address) as (_, keys_y, _),
        stubs(server_x.address) as (protection_x, _, _),
    ):
        key = keys_y.CreateKey(keys_pb2.CreateKeyRequest(subject="revoked-while-queued"), timeout=60).key
        request = protection_pb2.ProtectFaceRequest(image=photo, key_id=key.key_id)
        calls = [protection_x.ProtectFace.future(request, timeout=CALL_TIMEOUT) for _ in range(5)]
        [port] = [entry["port"] for entry in server_x.events() if entry.get("event") == "metrics"]
        assert wait_busy(port), "no protection started on server X"
        revoked_at = time.monotonic()
        keys_y.RevokeKey(keys_pb2.RevokeKeyRequest(key_id=key.key_id), timeout=60)
        outcomes = []
        for call in calls:
            try:
                call.result()
                outcomes.append(("OK", 0.0))
            except grpc.RpcError as error:
                assert isinstance(error, grpc.Call)
                outcomes.append((f"{error.code().name} {error_reason(error)}", time.monotonic() - revoked_at))
    print(f"\nafter the revocation on Y, the 5 calls on X: {outcomes}")
    assert [outcome for outcome, _ in outcomes] == ["FAILED_PRECONDITION KEY_REVOKED"] * 5


def wait_busy(port: int, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            for line in reply.read().decode().splitlines():
                if line.startswith("faceanonymixer_busy_workers ") and float(line.split()[1]) >= 1:
                    return True
        threading.Event().wait(0.1)
    return False
