"""The two measurements of issue 39 that need full-size inputs or absolute times, on a real
``faceanonymixer serve`` (SQLite key store in a temporary folder, one worker):

* ``memory``: one ProtectFaces call of 16 blank 40 MP PNGs (about 1.8 MB on the wire, 1.9 GB
  decoded), repeated; prints the server's resident memory (VmRSS) after each response and its peak.
  The code before issue 39 went 430 MB -> 4.0, 6.1, 8.3 GB on this request.
* ``isolation``: RevokeKey latency (create a key, revoke it, repeat) of tenant B, alone and while
  tenant A uploads ProtectFaces calls of 16 blank 40 MP PNGs (or real photos) back to back;
  prints p50/p99 of each.
  Before issue 39, a 16-photo upload held another tenant's RevokeKey for 14 s (normally 3 ms).

    PYTHONPATH=server:client_sdk:export FACEANONYMIXER_THREADS=1 \\
        .venv/bin/python benchmarks/service_hardening.py memory --repeat 5
    PYTHONPATH=server:client_sdk:export FACEANONYMIXER_THREADS=1 \\
        .venv/bin/python benchmarks/service_hardening.py isolation --seconds 60

``--server-pythonpath`` runs the server from another checkout (for the before/after numbers).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from service_harness import ServerProcess, bearer, stubs

from faceanonymixer_proto.v1 import keys_pb2, protection_pb2

FACES = Path(__file__).resolve().parents[2] / "shared" / "faces" / "fr_examples"
TOKEN_A, TOKEN_B = "benchmark-token-tenant-a-0001", "benchmark-token-tenant-b-0002"


def _sides(megapixels: float) -> tuple[int, int]:
    """4:3 sides of a photo of ``megapixels``."""
    width = round((megapixels * 1e6 * 4 / 3) ** 0.5)
    return width, round(megapixels * 1e6 / width)


def blank_png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 200, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


def start(workdir: Path, settings: dict[str, Any], pythonpath: str | None) -> ServerProcess:
    kek_file = workdir / "kek.bin"
    kek_file.write_bytes(os.urandom(32))
    if pythonpath:
        os.environ["PYTHONPATH"] = pythonpath
    server = ServerProcess(workdir, kek_file, {"keystore": f"sqlite:///{workdir / 'keys.db'}", **settings})
    return server.start()


def memory(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        settings = {
            "workers": 1,
            "threads": 1,
            "max_message_bytes": 64 * 1024 * 1024,
            "max_request_megapixels": 700,
            "queue_megapixels": 1000,
        }
        server = start(Path(folder), settings, args.server_pythonpath)
        try:
            images = [blank_png(*_sides(args.megapixels))] * 16
            with stubs(server.address) as (protection, keys, _):
                key = keys.CreateKey(keys_pb2.CreateKeyRequest(subject="memory"), timeout=60).key
                request = protection_pb2.ProtectFacesRequest(images=images, key_id=key.key_id)
                print(f"request: {request.ByteSize() / 1e6:.2f} MB; RSS at start {server.rss_mib():.0f} MiB")
                after: list[float] = []
                for round_ in range(args.repeat):
                    started = time.perf_counter()
                    replies = list(protection.ProtectFaces(request, timeout=1800))
                    codes = sorted({reply.status.code for reply in replies})
                    after.append(server.rss_mib())
                    print(
                        f"call {round_ + 1}: {len(replies)} replies (codes {codes}) in "
                        f"{time.perf_counter() - started:.1f} s; RSS {after[-1]:.0f} MiB, "
                        f"peak {server.peak_rss_mib():.0f} MiB"
                    )
            return {"rss_after_each_mib": [round(v) for v in after], "peak_mib": round(server.peak_rss_mib())}
        finally:
            server.stop()


def isolation(args: argparse.Namespace) -> dict[str, Any]:
    if args.upload_megapixels:
        uploads = [blank_png(*_sides(args.upload_megapixels))] * 16
    else:
        photos = [path.read_bytes() for path in sorted(FACES.glob("*/*.jp*g"))]
        uploads = (photos * 4)[:16]
    with tempfile.TemporaryDirectory() as folder:
        settings = {
            "workers": 1,
            "threads": 1,
            "queue_size": 32,
            "max_request_megapixels": 700,
            "queue_megapixels": 1000,
            "tokens": {TOKEN_A: "tenant-a", TOKEN_B: "tenant-b"},
        }
        server = start(Path(folder), settings, args.server_pythonpath)
        try:
            idle = revoke_latencies(server.address, args.seconds / 4, stop=None)
            busy_flag = threading.Event()
            uploaded = [0]

            def upload() -> None:
                with stubs(server.address) as (protection, keys, _):
                    key = keys.CreateKey(
                        keys_pb2.CreateKeyRequest(subject="uploader"), metadata=bearer(TOKEN_A), timeout=60
                    ).key
                    request = protection_pb2.ProtectFacesRequest(images=uploads, key_id=key.key_id)
                    while not busy_flag.is_set():
                        try:
                            list(protection.ProtectFaces(request, metadata=bearer(TOKEN_A), timeout=1800))
                            uploaded[0] += 1
                        except grpc.RpcError:  # the queue is full: try again
                            time.sleep(0.5)

            uploaders = [threading.Thread(target=upload) for _ in range(args.uploaders)]
            for uploader in uploaders:
                uploader.start()
            time.sleep(2.0)  # the first uploads are being decoded and protected
            loaded = revoke_latencies(server.address, args.seconds, stop=None)
            busy_flag.set()
            for uploader in uploaders:
                uploader.join()
            result = {"idle": summary(idle), "under_upload": summary(loaded), "uploads_done": uploaded[0]}
            print(json.dumps(result, indent=2))
            return result
        finally:
            server.stop()


def revoke_latencies(address: str, seconds: float, stop: threading.Event | None) -> list[float]:
    latencies = []
    metadata = bearer(TOKEN_B)
    with stubs(address) as (_, keys, _):
        ends = time.monotonic() + seconds
        while time.monotonic() < ends:
            key = keys.CreateKey(keys_pb2.CreateKeyRequest(subject="b"), metadata=metadata, timeout=60).key
            started = time.perf_counter()
            keys.RevokeKey(keys_pb2.RevokeKeyRequest(key_id=key.key_id), metadata=metadata, timeout=60)
            latencies.append(time.perf_counter() - started)
            time.sleep(0.05)
    return latencies


def summary(seconds: list[float]) -> dict[str, float]:
    if not seconds:
        return {"calls": 0}
    p50, p99 = np.percentile(seconds, [50, 99])
    return {
        "calls": len(seconds),
        "p50_ms": round(float(p50) * 1000, 1),
        "p99_ms": round(float(p99) * 1000, 1),
        "max_ms": round(max(seconds) * 1000, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["memory", "isolation"])
    parser.add_argument("--repeat", type=int, default=5, help="memory: calls of 16 blank PNGs")
    parser.add_argument("--megapixels", type=float, default=40.0, help="memory: size of each blank PNG")
    parser.add_argument(
        "--seconds", type=float, default=60.0, help="isolation: seconds of RevokeKey under load"
    )
    parser.add_argument(
        "--upload-megapixels",
        type=float,
        default=40.0,
        help="isolation: tenant A uploads 16 blank PNGs of this size (0: 16 real photos)",
    )
    parser.add_argument("--uploaders", type=int, default=3, help="isolation: tenant A's concurrent uploads")
    parser.add_argument("--server-pythonpath", help="PYTHONPATH of the server process (another checkout)")
    args = parser.parse_args()
    result = memory(args) if args.what == "memory" else isolation(args)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
