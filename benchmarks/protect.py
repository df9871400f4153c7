"""Protection speed on this machine: seconds per face, FLOPs per step, achieved GFLOP/s.

    .venv/bin/python benchmarks/protect.py ../shared/faces/lfw --repeats 5 [--json out.json]
    .venv/bin/python benchmarks/protect.py ../shared/faces/lfw --revision R   # an archived revision

* the reference loop (``benchmarks/reference_loop.py``: one face at a time, float32 eager, every
  input recomputed each step) against the engine (one face per call, then all faces in one batch;
  its defaults), on the same N prepared faces (default 10 people x 3 lfw photos) at the same
  settings: seconds per face,
  faces/s, FLOPs per face (counted), achieved GFLOP/s, and the dlib judge's (threshold 0.6)
  same-key genuine match, original-vs-protected non-match and own-key impostor non-match rates
  of the protected photos (each photo protected on its own under its person's key);

* one photo per call (the independent probe), and one subject with 4 photos: batched in one call
  (joint enrollment) vs the same 4 photos one call at a time;
* forward+backward FLOPs of one optimisation step, counted by ``torch.utils.flop_counter``
  (the difference between a 2-step and a 1-step run, so inversion and set-up cancel out);
* achieved GFLOP/s of the optimisation loop, next to a float32 matmul measured in the same run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from reference_loop import reference_protect
from torch.utils.flop_counter import FlopCounterMode

from faceanonymixer.cli.common import parsed_settings
from faceanonymixer.engine.profiles import (
    OptimisationConfig,
    get_profile,
    profile_revision,
    served_revision,
    with_optimisation_overrides,
)
from faceanonymixer.engine.protection import PreparedFace, ProtectionEngine, Subject
from faceanonymixer.engine.protection_key import ProtectionKey
from faceanonymixer.evaluation.judges import DlibJudge
from faceanonymixer.evaluation.operating import operating_measures
from faceanonymixer.evaluation.pairs import faces_found, stack_embeddings
from faceanonymixer.faces.datasets import list_identity_images
from faceanonymixer.faces.imageio import RGBImage
from faceanonymixer.utils.errors import FaceAnonyMixerError

#: the rates of :func:`judge_rates`, in the order printed
QUALITY_RATES = ("same_key_genuine_match", "original_vs_protected_nonmatch", "own_key_impostor_nonmatch")


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


def person_key(person: str) -> ProtectionKey:
    return ProtectionKey(hashlib.sha256(f"benchmark:{person}".encode()).digest())


def pick_faces(
    engine: ProtectionEngine, folder: Path, people: int, per_person: int
) -> list[tuple[str, PreparedFace]]:
    """The first ``people`` identities (sorted) with ``per_person`` photos that align."""
    by_identity: dict[str, list[Path]] = {}
    for identity, path in list_identity_images(folder):
        by_identity.setdefault(identity, []).append(path)
    chosen: list[tuple[str, PreparedFace]] = []
    for identity in sorted(by_identity):
        prepared = []
        for path in sorted(by_identity[identity]):
            try:
                prepared.append(engine.prepare(path))
            except FaceAnonyMixerError:
                continue
            if len(prepared) == per_person:
                break
        if len(prepared) == per_person:
            chosen.extend((identity, face) for face in prepared)
        if len(chosen) == people * per_person:
            break
    return chosen


def protection_flops(run: Callable[[OptimisationConfig], object], config: OptimisationConfig) -> int:
    """FLOPs of a whole protection at ``config``, from three short counted runs.

    cost(steps, inversion) = fixed + inversion * I + steps * S, so (1, 0), (2, 0) and (1, 1) give
    S, I and fixed without counting 70 slow steps.
    """
    counts = {}
    for steps, inversion in ((1, 0), (2, 0), (1, 1)):
        with FlopCounterMode(display=False) as counter:
            run(config.with_overrides(steps=steps, inversion_steps=inversion))
        counts[steps, inversion] = counter.get_total_flops()
    step = counts[2, 0] - counts[1, 0]
    inversion = counts[1, 1] - counts[1, 0]
    fixed = counts[1, 0] - step
    return fixed + config.inversion_steps * inversion + config.steps * step


def judge_rates(
    judge: DlibJudge, labels: list[str], originals: list[RGBImage], protected: list[RGBImage]
) -> dict[str, Any]:
    """The engine issue's three rates over the protected photos (each under its person's key), at
    the judge's threshold: the judge protocol's (:mod:`faceanonymixer.evaluation.operating`)."""
    original = stack_embeddings([judge.embed(photo) for photo in originals])
    mine = stack_embeddings([judge.embed(photo) for photo in protected])
    measures = operating_measures(labels, {"original": original, "A": mine}, judge.threshold)
    return {
        "same_key_genuine_match": measures["same_key_genuine_match"],
        "original_vs_protected_nonmatch": measures["anonymity"]["combined"],
        "own_key_impostor_nonmatch": measures["own_key_impostor_nonmatch"],
        "faces_found": faces_found(mine)["found"],
    }


def compare(
    engine: ProtectionEngine, chosen: list[tuple[str, PreparedFace]], repeats: int, judge: DlibJudge
) -> dict[str, Any]:
    """Reference loop vs engine (one face per call, then all faces in one batch) on the same faces,
    keys and settings. The middle row separates the engine's per-step savings from batching, and
    its quality next to the batch's shows how far float rounding alone moves the rates."""
    config = engine.config
    labels = [label for label, _ in chosen]
    subjects = [Subject([face], person_key(label)) for label, face in chosen]
    originals = [face.photo for _, face in chosen]

    reference_protect(engine, chosen[0][1], person_key(labels[0]), config.with_overrides(steps=1))  # warm-up
    engine.protect(subjects[:1])  # warm-up (first-call allocations)
    reference_seconds, reference_photos = [], []
    single_seconds, single_photos = [], []
    for label, face in chosen:
        started = time.perf_counter()
        reference_photos.append(reference_protect(engine, face, person_key(label), config).photo)
        reference_seconds.append(time.perf_counter() - started)
        started = time.perf_counter()
        single_photos.append(engine.protect([Subject([face], person_key(label))])[0][0].photo)
        single_seconds.append(time.perf_counter() - started)
    batch_seconds: list[float] = []
    batch_photos: list[RGBImage] = []
    for _ in range(repeats):
        started = time.perf_counter()
        results = engine.protect(subjects)
        batch_seconds.append((time.perf_counter() - started) / len(subjects))
        batch_photos = [r.photo for rs in results for r in rs]

    label, face = chosen[0]
    reference_flops = protection_flops(
        lambda c: reference_protect(engine, face, person_key(label), c), config
    )
    single_flops = protection_flops(lambda c: engine.protect(subjects[:1], optimisation=c), config)
    batch_flops = protection_flops(lambda c: engine.protect(subjects, optimisation=c), config) / len(subjects)

    def row(seconds: list[float], flops: float, photos: list[RGBImage]) -> dict[str, Any]:
        p50 = statistics.median(seconds)
        return {
            "seconds_per_face_p50": p50,
            "seconds_per_face_all": seconds,
            "faces_per_second": 1.0 / p50,
            "gflop_per_face": flops / 1e9,
            "achieved_gflops": flops / p50 / 1e9,
            "quality": judge_rates(judge, labels, originals, photos),
        }

    return {
        "faces": len(chosen),
        "people": len(set(labels)),
        "reference": row(reference_seconds, reference_flops, reference_photos),
        "engine_one_per_call": row(single_seconds, single_flops, single_photos),
        "engine": row(batch_seconds, batch_flops, batch_photos),
    }


def print_comparison(result: dict[str, Any], matmul: float) -> None:
    print(f"\nreference loop vs engine, {result['faces']} faces of {result['people']} people")
    print(
        f"{'':20}{'s/face p50':>11}{'faces/s':>9}{'GFLOP/face':>11}{'GFLOP/s':>9}{'% mm':>6}"
        f"{'genuine':>9}{'anonym.':>9}{'impostor':>9}{'found':>7}"
    )
    for name in ("reference", "engine_one_per_call", "engine"):
        entry = result[name]
        quality = entry["quality"]
        print(
            f"{name:20}{entry['seconds_per_face_p50']:11.2f}{entry['faces_per_second']:9.3f}"
            f"{entry['gflop_per_face']:11.1f}{entry['achieved_gflops']:9.1f}"
            f"{100 * entry['achieved_gflops'] / matmul:6.0f}"
            + "".join(
                f"{math.nan if rate is None else rate:9.2f}"
                for rate in (quality[rate_name]["rate"] for rate_name in QUALITY_RATES)
            )
            + f"{quality['faces_found']:>5}/{result['faces']}"
        )
    reference = result["reference"]["seconds_per_face_p50"]
    single = reference / result["engine_one_per_call"]["seconds_per_face_p50"]
    batch = reference / result["engine"]["seconds_per_face_p50"]
    print(f"engine speed-up over the reference: {single:.2f}x one face per call, {batch:.2f}x in one batch")
    q = result["engine"]["quality"]
    print(
        "pairs: genuine {}, anonymity {}, impostor {} (dlib judge, threshold 0.6; found: protected"
        " photos in which the judge found a face)".format(
            q["same_key_genuine_match"]["pairs"],
            q["original_vs_protected_nonmatch"]["pairs"],
            q["own_key_impostor_nonmatch"]["pairs"],
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("faces", type=Path, nargs="?", help="folder of <identity>/<image> photos")
    parser.add_argument("--faces-dir", type=Path, default=Path("../shared/faces/lfw"))
    parser.add_argument("--profile", default="embedded")
    parser.add_argument("--revision", help="an archived revision of the profile (default: its current one)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per setting")
    parser.add_argument("--people", type=int, default=10, help="people in the reference/engine comparison")
    parser.add_argument("--per-person", type=int, default=3, help="photos per person in the comparison")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="OptimisationConfig setting for both loops, e.g. steps=20 (repeatable)",
    )
    parser.add_argument("--skip-call-modes", action="store_true", help="only the reference/engine comparison")
    parser.add_argument("--json", type=Path, default=None, help="write every number here ('-': stdout)")
    args = parser.parse_args()
    folder = args.faces or args.faces_dir
    if args.threads:
        torch.set_num_threads(args.threads)

    profile = get_profile(args.profile)
    if args.revision is not None:
        profile = served_revision(profile, args.revision)
    overrides = parsed_settings(args.override)
    # the profile as it runs with the overrides: its revision is the one measured
    profile = with_optimisation_overrides(profile, overrides)
    engine = ProtectionEngine(profile)
    config = engine.config
    report: dict[str, Any] = {
        "profile": profile.profile_id,
        "revision": profile_revision(profile),
        "config": {name: getattr(config, name) for name in config.__dataclass_fields__},
        "threads": torch.get_num_threads(),
        "load_average": list(os.getloadavg()),
    }
    in_turn = f" ({config.views_per_step} a step)" if config.views_per_step else ""
    print(
        f"profile {profile.profile_id}: {config.steps} steps, {config.inversion_steps} inversion steps, "
        f"{config.views} views{in_turn}, {torch.get_num_threads()} threads, load {os.getloadavg()[0]:.2f}"
    )
    chosen = pick_faces(engine, folder, args.people, args.per_person)
    comparison = compare(engine, chosen, args.repeats, DlibJudge())
    matmul = matmul_gflops()
    report["matmul_gflops"] = matmul
    report["comparison"] = comparison
    print_comparison(comparison, matmul)
    if not args.skip_call_modes:
        report["call_modes"] = call_modes(engine, folder, args.repeats)
    print(f"float32 matmul 2048^3     {matmul:.1f} GFLOP/s")
    report["load_average_end"] = list(os.getloadavg())
    if args.json is not None:
        text = json.dumps(report, indent=2)
        if str(args.json) == "-":
            print(text)
        else:
            args.json.write_text(text + "\n")


def call_modes(engine: ProtectionEngine, folder: Path, repeats: int) -> dict[str, Any]:
    """One photo per call, 4 photos in one batch, the same 4 one at a time (one subject)."""
    config = engine.config
    key = ProtectionKey(hashlib.sha256(b"benchmark").digest())
    by_identity: dict[str, list[Path]] = {}
    for identity, path in list_identity_images(folder):
        by_identity.setdefault(identity, []).append(path)
    four = next(paths[:4] for paths in by_identity.values() if len(paths) >= 4)
    faces = [engine.prepare(path) for path in four]
    engine.protect([Subject(faces[:1], key)])  # warm-up

    single, optimise_single = [], []
    for repeat in range(repeats):
        face = faces[repeat % len(faces)]
        started = time.perf_counter()
        result = engine.protect([Subject([face], key)])[0][0]
        single.append(time.perf_counter() - started)
        optimise_single.append(result.timings["optimise"])
    batched, sequential = [], []
    for _ in range(max(1, repeats // 2)):
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

    def spread(label: str, values: list[float], unit: str) -> None:
        p50, p95 = percentile(values, 0.5), percentile(values, 0.95)
        print(f"{label:26}p50 {p50:6.2f} {unit}  p95 {p95:6.2f} {unit}")

    print()
    spread("one photo per call", single, "s")
    spread("4 photos, one batch", batched, "s/face")
    spread("4 photos, one at a time", sequential, "s/face")
    print(f"FLOPs per step (fwd+bwd)  batch 1: {flops_one / 1e9:.2f} GFLOP, batch 4: {flops_four / 1e9:.2f}")
    print(f"achieved in the loop      {achieved:.1f} GFLOP/s (batch 1)")
    return {
        "one_photo_per_call_s": single,
        "four_one_batch_s_per_face": batched,
        "four_one_at_a_time_s_per_face": sequential,
        "step_gflop_batch1": flops_one / 1e9,
        "step_gflop_batch4": flops_four / 1e9,
        "loop_gflops_batch1": achieved,
    }


if __name__ == "__main__":
    main()
