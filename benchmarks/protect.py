"""Protection speed on this machine: seconds per face, FLOPs per step, achieved GFLOP/s.

    .venv/bin/python benchmarks/protect.py ../shared/faces/lfw --repeats 5

* one photo per call (the independent probe), and one subject with 4 photos: batched in one call
  (joint enrollment) vs the same 4 photos one call at a time;
* forward+backward FLOPs of one optimisation step, counted by ``torch.utils.flop_counter``
  (the difference between a 2-step and a 1-step run, so inversion and set-up cancel out);
* achieved GFLOP/s of the optimisation loop, next to a float32 matmul measured in the same run.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from faceanonymixer.datasets import list_identity_images
from faceanonymixer.engine import ProtectionEngine, Subject
from faceanonymixer.profiles import get_profile
from faceanonymixer.protection_key import ProtectionKey


def percentile(values: list[float], share: float) -> float:
    return float(np.percentile(values, 100 * share, method="nearest"))


def matmul_gflops(size: int = 2048, seconds: float = 2.0) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    runs, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        a @ b
        runs += 1
    return 2 * size**3 * runs / (time.perf_counter() - started) / 1e9


def step_flops(engine: ProtectionEngine, subject: Subject) -> int:
    """Forward+backward FLOPs of one optimisation step for ``subject``'s batch."""
    base = engine.config
    counts = []
    for steps in (1, 2):
        engine.config = base.with_overrides(steps=steps, inversion_steps=0)
        with FlopCounterMode(display=False) as counter:
            engine.protect([subject])
        counts.append(counter.get_total_flops())
    engine.config = base
    return counts[1] - counts[0]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("faces", type=Path, help="folder of <identity>/<image> photos")
    parser.add_argument("--profile", default="embedded")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per setting")
    args = parser.parse_args()

    profile = get_profile(args.profile)
    engine = ProtectionEngine(profile)
    config = engine.config
    key = ProtectionKey(hashlib.sha256(b"benchmark").digest())
    by_identity: dict[str, list[Path]] = {}
    for identity, path in list_identity_images(args.faces):
        by_identity.setdefault(identity, []).append(path)
    four = next(paths[:4] for paths in by_identity.values() if len(paths) >= 4)
    faces = [engine.prepare(path) for path in four]
    engine.protect([Subject(faces[:1], key)])  # warm-up

    single, optimise_single = [], []
    for repeat in range(args.repeats):
        face = faces[repeat % len(faces)]
        started = time.perf_counter()
        result = engine.protect([Subject([face], key)])[0][0]
        single.append(time.perf_counter() - started)
        optimise_single.append(result.timings["optimise"])
    batched, sequential = [], []
    for _ in range(max(1, args.repeats // 2)):
        started = time.perf_counter()
        engine.protect([Subject(faces, key)])
        batched.append((time.perf_counter() - started) / len(faces))
        started = time.perf_counter()
        for face in faces:
            engine.protect([Subject([face], key)])
        sequential.append((time.perf_counter() - started) / len(faces))

    flops_one = step_flops(engine, Subject(faces[:1], key))
    flops_four = step_flops(engine, Subject(faces, key))
    achieved = flops_one * config.steps / statistics.median(optimise_single) / 1e9
    matmul = matmul_gflops()

    def spread(label: str, values: list[float], unit: str) -> None:
        p50, p95 = percentile(values, 0.5), percentile(values, 0.95)
        print(f"{label:26}p50 {p50:6.2f} {unit}  p95 {p95:6.2f} {unit}")

    print(
        f"profile {profile.profile_id}: {config.steps} steps, {config.inversion_steps} inversion steps, "
        f"{config.views} views, {torch.get_num_threads()} threads"
    )
    spread("one photo per call", single, "s")
    spread("4 photos, one batch", batched, "s/face")
    spread("4 photos, one at a time", sequential, "s/face")
    print(f"FLOPs per step (fwd+bwd)  batch 1: {flops_one / 1e9:.2f} GFLOP, batch 4: {flops_four / 1e9:.2f}")
    print(f"achieved in the loop      {achieved:.1f} GFLOP/s (batch 1)")
    print(f"float32 matmul 2048^3     {matmul:.1f} GFLOP/s")


if __name__ == "__main__":
    main()
