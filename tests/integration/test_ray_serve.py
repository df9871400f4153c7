"""Scale-out on Ray Serve (``faceanonymixer.scaleout``).

* Without Ray: cross-call batching (:func:`protect_subjects`) gives each call its own outcomes in
  order, a failing photo fails alone, and one call alone is exactly ``protect_photos``; Ray's gRPC
  context adapter ends a call with the rich status in the trailers; the settings Ray refuses.
* With Ray (a local instance on the CPU, two fixed replicas, the PostgreSQL key store they share):
  twenty ``protect_many`` calls of the SDK through Ray's gRPC proxy, served by both replicas (each
  answer names its replica in the ``faceanonymixer-replica`` trailer, recorded by a client
  interceptor); a key revoked through one replica is refused by the other with
  ``KeyRevokedError``; the SDK's typed errors (field violations included) arrive through the proxy.

Skipped without Ray (``pip install -e '.[ray]'``), the committed weights, the shared photos, or
PostgreSQL (a failure with CI=true).
"""

from __future__ import annotations

import asyncio
import io
import os
import pickle
import socket
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import sqlalchemy as sa
from google.rpc import code_pb2
from grpc_status import rpc_status
from PIL import Image
from service_harness import FAST_OPTIMISATION, write_config

from faceanonymixer.engine.profiles import get_profile
from faceanonymixer.engine.protection import ProtectionEngine
from faceanonymixer.engine.protection_key import ProtectionKey
from faceanonymixer.faces.imageio import decode_image_bytes
from faceanonymixer.scaleout.batching import SubjectWork, protect_subjects
from faceanonymixer.scaleout.grpc_context import REPLICA_METADATA_KEY, CallAbortedError, ServeCallContext
from faceanonymixer.scaleout.ray_serve import BatchOptions, RayServeOptions, build_app, replica_settings
from faceanonymixer.service.protection import OutputOptions, ProtectedPhoto, protect_photos
from faceanonymixer.service.settings import SettingsError
from faceanonymixer.service.status import Reason, abort, rich_status
from faceanonymixer.utils.errors import NoFaceError
from faceanonymixer_client import (
    InvalidImageError,
    KeyRevokedError,
    ProtectionClient,
    UnauthenticatedError,
)
from faceanonymixer_client import client as client_module

#: a local Ray cluster with two replicas: slow, not in the quick loop
pytestmark = pytest.mark.slow

TOKEN = "ray-serve-test-token-of-acme"
#: seconds any one SDK call may take on a busy 2-core machine
CALL_TIMEOUT = 60.0
REPLICAS = 2


# ---- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def photos(faces_root: Path) -> list[Path]:
    """Five one-face photos of three people."""
    folder = faces_root / "fr_examples"
    return [
        folder / "kit_harington" / "john2.jpeg",
        folder / "rose_leslie" / "img1.jpg",
        folder / "kit_harington" / "john1.jpeg",
        folder / "rose_leslie" / "img2.jpg",
        folder / "alex_lacamoire" / "img1.jpg",
    ]


@pytest.fixture(scope="module")
def engine(weights: None) -> ProtectionEngine:
    profile = get_profile("embedded")
    return ProtectionEngine(profile, optimisation=profile.optimisation.with_overrides(**FAST_OPTIMISATION))


class ReplicaRecorder(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Which replica answered each call, from the ``faceanonymixer-replica`` trailer (answers
    and refusals alike)."""

    def __init__(self) -> None:
        self.answers: list[tuple[str, str]] = []  # (method, replica)

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        outcome = continuation(details, request)  # done: a response or an RpcError, both with trailers
        self._record(details.method, outcome.trailing_metadata() or ())
        return outcome

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(details, request)  # trailers only once the stream is read

    def _record(self, method: str, trailers: Any) -> None:
        replica = dict(trailers).get(REPLICA_METADATA_KEY, "")
        self.answers.append((method.rsplit("/", 1)[-1], replica))

    def replicas(self, method: str) -> Counter[str]:
        return Counter(replica for name, replica in self.answers if name == method)


@dataclass
class RayApp:
    port: int
    recorder: ReplicaRecorder
    #: seconds from ray.init to every replica serving
    start_seconds: float
    clients: list[ProtectionClient] = field(default_factory=list)

    def client(self, token: str | None = TOKEN) -> ProtectionClient:
        client = ProtectionClient(f"127.0.0.1:{self.port}", token=token, timeout=CALL_TIMEOUT)
        self.clients.append(client)
        return client


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def ray_app(
    weights: None, photos: list[Path], postgres_database: sa.URL, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RayApp]:
    """A local Ray instance on the CPU, the application with two fixed replicas, and SDK clients
    whose channels record the replica of every answer."""
    pytest.importorskip("ray.serve", reason="Ray Serve is not installed (pip install -e '.[ray]')")
    import ray
    from ray import serve

    from faceanonymixer.scaleout.ray_serve import running

    workdir = tmp_path_factory.mktemp("ray")
    kek_file = workdir / "kek.bin"
    kek_file.write_bytes(os.urandom(32))
    kek_file.chmod(0o600)  # a KEK file other users can read is refused
    config = write_config(
        workdir / "server.toml",
        {
            "keystore": postgres_database.render_as_string(hide_password=False),
            "workers": 1,
            "tokens": {TOKEN: "acme"},
            "optimisation": FAST_OPTIMISATION,
        },
    )
    recorder = ReplicaRecorder()
    real_connect = client_module.connect
    options = RayServeOptions(
        grpc_port=free_port(),
        http_port=free_port(),
        num_replicas=REPLICAS,
        num_cpus=1,
        batch=BatchOptions(max_batch_photos=4, batch_wait_seconds=0.02),
    )
    with pytest.MonkeyPatch.context() as patch:
        # the replicas are started by this process's Ray instance and inherit its environment
        patch.setenv("FACEANONYMIXER_KEK_FILE", str(kek_file))
        patch.delenv("FACEANONYMIXER_KEK", raising=False)
        patch.setattr(
            client_module,
            "connect",
            lambda address, **kw: grpc.intercept_channel(real_connect(address, **kw), recorder),
        )
        started = time.perf_counter()
        ray.init(
            num_cpus=REPLICAS,
            include_dashboard=False,
            log_to_driver=False,
            object_store_memory=100 * 1024 * 1024,
        )
        try:
            with running(config, {}, options) as port:
                app = RayApp(port, recorder, time.perf_counter() - started)
                try:
                    yield app
                finally:
                    for client in app.clients:
                        client.close()
        finally:
            serve.shutdown()
            ray.shutdown()


# ---- batching, without Ray --------------------------------------------------------------------


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(np.int16)


def test_one_call_alone_is_protect_photos(engine: ProtectionEngine, photos: list[Path]) -> None:
    photo = decode_image_bytes(photos[0].read_bytes())
    key = ProtectionKey(bytes(range(32)), version=1, key_id="fk_alone")
    options = OutputOptions("png", 0, False)
    [[batched]] = protect_subjects(engine, [SubjectWork([photo], key, options)], lambda: False)
    [alone] = protect_photos(engine, [photo], key, options, lambda: False)
    assert isinstance(batched, ProtectedPhoto) and isinstance(alone, ProtectedPhoto)
    assert batched.image == alone.image
    assert batched.face_box == alone.face_box


def test_calls_batched_together_keep_their_own_outcomes(engine: ProtectionEngine, photos: list[Path]) -> None:
    """Two calls, two keys: results in order, a faceless photo fails alone, and each face comes
    out as it does alone (up to float rounding, which Adam can amplify over many steps)."""
    faceless = np.full((128, 128, 3), 128, np.uint8)
    first, second = (decode_image_bytes(path.read_bytes()) for path in photos[:2])
    keys = [ProtectionKey(bytes([n]) * 32, version=1, key_id=f"fk_{n}") for n in (1, 2)]
    options = OutputOptions("png", 0, False)
    work = [SubjectWork([first], keys[0], options), SubjectWork([faceless, second], keys[1], options)]
    [[one], [refused, two]] = protect_subjects(engine, work, lambda: False)
    assert isinstance(refused, NoFaceError)
    assert isinstance(one, ProtectedPhoto) and isinstance(two, ProtectedPhoto)
    [alone_one] = protect_photos(engine, [first], keys[0], options, lambda: False)
    [alone_two] = protect_photos(engine, [second], keys[1], options, lambda: False)
    assert isinstance(alone_one, ProtectedPhoto) and isinstance(alone_two, ProtectedPhoto)
    for batched, alone in ((one, alone_one), (two, alone_two)):
        assert batched.face_box == alone.face_box
        assert np.abs(pixels(batched.image) - pixels(alone.image)).mean() < 2.0
    assert np.abs(pixels(one.image) - pixels(alone_two.image)).mean() > 10  # not each other's


# ---- Ray's gRPC context and settings, without Ray ---------------------------------------------


@dataclass
class FakeRayContext:
    """What ``RayServegRPCContext`` records, as Ray's proxy later copies it onto the call."""

    metadata: list[tuple[str, str]]
    code: grpc.StatusCode | None = None
    details: str = ""
    trailers: list[tuple[str, str | bytes]] = field(default_factory=list)

    def invocation_metadata(self) -> list[tuple[str, str]]:
        return self.metadata

    def set_code(self, code: grpc.StatusCode) -> None:
        self.code = code

    def set_details(self, details: str) -> None:
        self.details = details

    def set_trailing_metadata(self, trailing_metadata: list[tuple[str, str | bytes]]) -> None:
        self.trailers = trailing_metadata


def test_abort_leaves_the_rich_status_for_rays_proxy() -> None:
    ray_context = FakeRayContext([("authorization", "Bearer x")])
    context = ServeCallContext(ray_context, "replica-1")
    assert ray_context.trailers == [(REPLICA_METADATA_KEY, "replica-1")]  # answers name the replica
    assert context.invocation_metadata() == (("authorization", "Bearer x"),)
    assert context.time_remaining() is None
    status = rich_status(code_pb2.FAILED_PRECONDITION, "revoked", Reason.KEY_REVOKED)
    with pytest.raises(CallAbortedError) as aborted:
        asyncio.run(abort(context, status))  # the service's own abort, as the servicers call it
    assert aborted.value.status == status
    assert ray_context.code == grpc.StatusCode.FAILED_PRECONDITION and ray_context.details == "revoked"
    trailers = dict(ray_context.trailers)
    assert trailers[REPLICA_METADATA_KEY] == "replica-1"
    assert rpc_status.to_status(status).trailing_metadata[0][1] == trailers["grpc-status-details-bin"]
    assert pickle.loads(pickle.dumps(aborted.value)).status == status  # Ray pickles what replicas raise


def test_ray_settings_need_tokens_and_refuse_tls(tmp_path: Path) -> None:
    keystore = f"sqlite:///{tmp_path / 'keys.db'}"
    with pytest.raises(SettingsError, match="bearer tokens"):
        replica_settings(None, {"keystore": keystore, "tokens": {}})
    cert = tmp_path / "cert.pem"
    with pytest.raises(SettingsError, match="plaintext"):
        replica_settings(
            None,
            {"keystore": keystore, "tokens": {TOKEN: "acme"}, "tls_cert_file": cert, "tls_key_file": cert},
        )
    assert replica_settings(None, {"keystore": keystore, "tokens": {TOKEN: "acme"}}).tokens == {TOKEN: "acme"}
    with pytest.raises(SettingsError, match="unknown build_app arguments: replicas"):
        build_app({"replicas": 2})


# ---- through Ray ------------------------------------------------------------------------------


def test_twenty_protections_through_ray_are_served_by_both_replicas(
    ray_app: RayApp, photos: list[Path]
) -> None:
    client = ray_app.client()
    key = client.create_key("visitors")
    inputs = [photos[index % len(photos)] for index in range(20)]
    started = time.perf_counter()
    results = client.protect_many(inputs, key.key_id, max_in_flight=8)
    seconds = time.perf_counter() - started
    print(
        f"\nRay Serve, {REPLICAS} replicas on the CPU: started in {ray_app.start_seconds:.1f} s; "
        f"20 protections in {seconds:.2f} s ({20 / seconds:.2f}/s)"
    )
    for path, result in zip(inputs, results, strict=True):
        with Image.open(path) as original, Image.open(io.BytesIO(result)) as protected:
            assert protected.format == "JPEG" and protected.size == original.size
    assert results[0] != inputs[0].read_bytes()
    replicas = ray_app.recorder.replicas("ProtectFace")
    assert sum(replicas.values()) >= 20 and "" not in replicas
    assert len(replicas) == REPLICAS, replicas


def test_a_key_revoked_through_one_replica_is_refused_by_the_other(
    ray_app: RayApp, photos: list[Path]
) -> None:
    client = ray_app.client()
    key = client.create_key("alice")
    client.protect(photos[0], key.key_id)
    before = len(ray_app.recorder.answers)
    revocation = client.revoke_key(key.key_id)
    assert revocation.revoked.state == "revoked"
    [(method, revoker)] = ray_app.recorder.answers[before:]
    assert method == "RevokeKey"
    refused_by: set[str] = set()
    for _ in range(30):  # Ray picks the replica; stop once the other one has answered
        before = len(ray_app.recorder.answers)
        with pytest.raises(KeyRevokedError) as refused:
            client.protect(photos[1], key.key_id)
        assert refused.value.reason == Reason.KEY_REVOKED and refused.value.exit_code == 4
        refused_by.update(replica for _, replica in ray_app.recorder.answers[before:])
        if refused_by - {revoker}:
            break
    assert refused_by - {revoker}, f"every call went to the revoking replica {revoker}"
    assert client.protect(photos[1], revocation.replacement.key_id)


def test_typed_errors_arrive_through_rays_proxy(ray_app: RayApp, photos: list[Path]) -> None:
    client = ray_app.client()
    key = client.create_key("bob")
    with pytest.raises(InvalidImageError) as invalid:
        client.protect(b"not an image at all", key.key_id)
    assert invalid.value.reason == Reason.INVALID_IMAGE
    assert [violation.field for violation in invalid.value.field_violations] == ["image"]
    with pytest.raises(UnauthenticatedError):
        ray_app.client(token=None).protect(photos[0], key.key_id)
    client.revoke_key(key.key_id)
    # a ProtectFaces stream refused as a whole: the SDK raises the call's typed error
    with pytest.raises(KeyRevokedError):
        client.protect_subject(photos[:2], key.key_id)
