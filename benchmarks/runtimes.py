"""torch against ``--runtime onnx`` on this machine: start-up, one photo per call, a batch, threads.

    .venv/bin/python benchmarks/runtimes.py ../shared/faces/lfw [--calls 3] [--json out.json]

Exports the embedded profile once (``faceanonymixer export onnx``) into a temporary folder, then,
for each runtime, thread count and batch size, a fresh process builds the engine (timed: the
ONNX sessions are opened and checked there) and protects the same prepared photos ``--calls``
times (one subject per photo, one engine call per batch). onnxruntime runs only the
gradient-free passes (the encoder's start, the photos' embeddings, the final embedding); the 50
optimisation steps stay PyTorch whatever the runtime, so this measures what those passes are
worth against the cost of a second runtime beside torch. docs/performance.md states the result.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

_MEASURE = """
import hashlib, json, sys, time
from pathlib import Path
import torch
runtime, onnx_dir = sys.argv[1], sys.argv[2]
threads, batch, calls = (int(value) for value in sys.argv[3:6])
photos = sys.argv[6:]
torch.set_num_threads(threads)
from faceanonymixer.engine.protection import ProtectionEngine, Subject
from faceanonymixer.engine.protection_key import ProtectionKey
started = time.perf_counter()
engine = ProtectionEngine("embedded", runtime=runtime, onnx_dir=onnx_dir if runtime == "onnx" else None)
load = time.perf_counter() - started
faces = [engine.prepare(path) for path in photos[:batch]]
key = ProtectionKey(hashlib.sha256(b"benchmark:runtimes").digest())
subjects = [Subject(faces=[face], key=key) for face in faces]
engine.protect(subjects)
seconds = []
for _ in range(calls):
    started = time.perf_counter()
    engine.protect(subjects)
    seconds.append((time.perf_counter() - started) / len(subjects))
print(json.dumps({"load": load, "per_photo": seconds}))
"""


def photos_of(folder: Path, count: int) -> list[Path]:
    people = sorted(path for path in folder.iterdir() if path.is_dir())
    return [sorted(person.iterdir())[0] for person in people[:count]]


def export(out: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "faceanonymixer.cli", "export", "onnx", "--out", str(out)],
        check=True,
        capture_output=True,
        text=True,
    )


def measure(runtime: str, onnx_dir: Path, threads: int, batch: int, calls: int, photos: list[Path]) -> dict:
    env = {key: value for key, value in os.environ.items() if key not in ("OMP_NUM_THREADS",)}
    result = subprocess.run(
        [sys.executable, "-c", _MEASURE, runtime, str(onnx_dir), str(threads), str(batch), str(calls)]
        + [str(photo) for photo in photos],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("dataset", type=Path, help="a <person>/<photo> folder")
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--threads", default="1,2", help="comma-separated torch thread counts")
    parser.add_argument("--batches", default="1,4", help="comma-separated photos per engine call")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    batches = [int(value) for value in args.batches.split(",")]
    photos = photos_of(args.dataset, max(batches))
    print(f"{os.cpu_count()} cores, load average before {os.getloadavg()[0]:.2f}")
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        onnx_dir = Path(scratch) / "onnx"
        export(onnx_dir)
        for threads in (int(value) for value in args.threads.split(",")):
            for batch in batches:
                for runtime in ("torch", "onnx"):
                    measured = measure(runtime, onnx_dir, threads, batch, args.calls, photos)
                    row = {
                        "runtime": runtime,
                        "threads": threads,
                        "batch": batch,
                        "load_seconds": measured["load"],
                        "per_photo_p50": statistics.median(measured["per_photo"]),
                        "per_photo": measured["per_photo"],
                    }
                    rows.append(row)
                    print(
                        f"{runtime:5s} threads {threads} batch {batch}: engine built in "
                        f"{row['load_seconds']:.2f} s, {row['per_photo_p50']:.2f} s per photo (p50)"
                    )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
