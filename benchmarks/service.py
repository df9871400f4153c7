"""Service throughput and latency: ProtectFace requests/s and p50/p95/p99 at several concurrencies,
and the service's overhead over the in-process engine for the same work.

Starts a real ``faceanonymixer serve`` (SQLite key store in a temporary folder) and drives it
with client threads, each sending its requests back to back; refusals (RESOURCE_EXHAUSTED) are
counted, not retried, so size ``--queue-size`` to the concurrency to measure queueing instead.

    .venv/bin/python benchmarks/service.py --steps 50 --workers 2 --concurrency 1 4 16 --requests 32
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from service_harness import ServerProcess, stubs

from faceanonymixer_proto.v1 import keys_pb2, protection_pb2

DEFAULT_PHOTO = (
    Path(__file__).resolve().parents[2] / "shared" / "faces" / "fr_examples" / "biden" / "biden.jpg"
)


def percentiles(seconds: list[float]) -> dict[str, float]:
    if not seconds:
        return {}
    values = np.percentile(seconds, [50, 95, 99])
    return {f"p{q}": round(float(v), 3) for q, v in zip((50, 95, 99), values, strict=True)}


def drive(address: str, key_id: str, photo: bytes, concurrency: int, requests: int) -> dict[str, Any]:
    """``requests`` ProtectFace calls spread over ``concurrency`` threads."""
    latencies: list[float] = []
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()
    request = protection_pb2.ProtectFaceRequest(image=photo, key_id=key_id)

    def client(count: int) -> None:
        with stubs(address) as (protection, _, _):
            for _ in range(count):
                started = time.perf_counter()
                try:
                    protection.ProtectFace(request, timeout=600)
                    code = "OK"
                except grpc.RpcError as error:
                    assert isinstance(error, grpc.Call)
                    code = error.code().name
                with lock:
                    outcomes[code] += 1
                    if code == "OK":
                        latencies.append(time.perf_counter() - started)

    shares = [requests // concurrency + (i < requests % concurrency) for i in range(concurrency)]
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(client, [share for share in shares if share]))
    wall = time.perf_counter() - started
    return {
        "concurrency": concurrency,
        "requests": requests,
        "outcomes": dict(outcomes),
        "wall_seconds": round(wall, 2),
        "requests_per_second": round(outcomes["OK"] / wall, 3),
        "latency_seconds": percentiles(latencies),
    }


def in_process_seconds(photo: bytes, optimisation: dict[str, Any], repeats: int, workers: int) -> list[float]:
    """The same work without the service: decode, align, protect, encode, on one engine with the
    intra-op threads one of the server's workers gets."""
    import torch

    from faceanonymixer.engine.profiles import EMBEDDED
    from faceanonymixer.engine.protection import ProtectionEngine
    from faceanonymixer.engine.protection_key import ProtectionKey
    from faceanonymixer.faces.imageio import decode_image_bytes
    from faceanonymixer.service.protection import OutputOptions, protect_photos

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
    engine = ProtectionEngine(EMBEDDED, optimisation=EMBEDDED.optimisation.with_overrides(**optimisation))
    key = ProtectionKey.generate()
    seconds = []
    for _ in range(repeats + 1):  # the first call warms up
        started = time.perf_counter()
        [outcome] = protect_photos(engine, [decode_image_bytes(photo)], key, OutputOptions(), lambda: False)
        assert not isinstance(outcome, Exception), outcome
        seconds.append(time.perf_counter() - started)
    return seconds[1:]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--photo", type=Path, default=DEFAULT_PHOTO)
    parser.add_argument("--steps", type=int, default=50, help="optimisation steps (profile default 50)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--queue-size", type=int, default=64)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=16, help="requests per concurrency level")
    parser.add_argument("--baseline-repeats", type=int, default=4)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    photo = args.photo.read_bytes()
    optimisation = {"steps": args.steps}
    results: dict[str, Any] = {"steps": args.steps, "workers": args.workers, "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory() as folder:
        workdir = Path(folder)
        kek = workdir / "kek.bin"
        kek.write_bytes(os.urandom(32))
        settings = {
            "keystore": f"sqlite:///{workdir / 'keys.db'}",
            "workers": args.workers,
            "queue_size": args.queue_size,
            "optimisation": optimisation,
        }
        with ServerProcess(workdir, kek, settings).running() as server, stubs(server.address) as (_, keys, _):
            key_id = keys.CreateKey(keys_pb2.CreateKeyRequest(subject="bench")).key.key_id
            drive(server.address, key_id, photo, 1, 2)  # warm-up: first calls load lazily
            results["levels"] = [
                drive(server.address, key_id, photo, level, args.requests) for level in args.concurrency
            ]
            results["server_peak_rss_mib"] = round(server.peak_rss_mib(), 1)
    baseline = in_process_seconds(photo, optimisation, args.baseline_repeats, args.workers)
    results["in_process_seconds"] = {"mean": round(statistics.mean(baseline), 3), **percentiles(baseline)}
    single = next((level for level in results["levels"] if level["concurrency"] == 1), None)
    if single and single["latency_seconds"]:
        overhead = single["latency_seconds"]["p50"] - results["in_process_seconds"]["p50"]
        results["service_overhead_seconds_p50"] = round(overhead, 3)

    print(f"steps {args.steps}, {args.workers} workers, {os.cpu_count()} CPUs")
    print(f"{'clients':>8} {'req/s':>8} {'p50 s':>8} {'p95 s':>8} {'p99 s':>8}  outcomes")
    for level in results["levels"]:
        lat = level["latency_seconds"]
        print(
            f"{level['concurrency']:>8} {level['requests_per_second']:>8} {lat.get('p50', '-'):>8} "
            f"{lat.get('p95', '-'):>8} {lat.get('p99', '-'):>8}  {level['outcomes']}"
        )
    print(
        f"in-process p50 {results['in_process_seconds']['p50']} s; service overhead at 1 client (p50): "
        f"{results.get('service_overhead_seconds_p50')} s"
    )
    print(f"server peak RSS {results['server_peak_rss_mib']} MiB")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
