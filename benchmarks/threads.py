"""One photo per call, quiet and beside a CPU-bound load, for each threads setting: one run.

    .venv/bin/python benchmarks/threads.py ../shared/faces/lfw [--calls 5] [--json out.json]

For each setting (torch's own default, the project's default ``threads=0``, and fixed counts), a
fresh process loads the embedded profile, protects one lfw photo once to warm up, then ``--calls``
times; the p50 of those calls is reported quiet, then again while ``--load`` busy processes (pure
Python loops, one core each) run beside it. The ratio loaded / quiet is what "does not collapse
under contention" means; docs/decisions/2026-12-07-threads.md records the numbers.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: setting name -> environment of the measuring process (None: leave FACEANONYMIXER_THREADS unset
#: and let torch use every core, as before the threads setting existed)
SETTINGS: dict[str, dict[str, str] | None] = {
    "torch default (all cores, before)": None,
    "threads=0 (default: per call)": {"FACEANONYMIXER_THREADS": "0"},
    "threads=1": {"FACEANONYMIXER_THREADS": "1"},
    "threads=2": {"FACEANONYMIXER_THREADS": "2"},
}

_MEASURE = """
import hashlib, json, sys, time
import torch
from faceanonymixer.engine.protector import Protector
photo, calls, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
threads = None if mode == "torch" else int(mode)
protector = Protector("embedded", threads=threads)
key = hashlib.sha256(b"benchmark:threads").digest()
if threads is None:  # torch's own default: every core, whatever else runs
    protector.threads = torch.get_num_threads()
protector.protect(photo, key)
seconds = []
for _ in range(calls):
    started = time.perf_counter()
    protector.protect(photo, key)
    seconds.append(time.perf_counter() - started)
print(json.dumps(seconds))
"""


def _busy() -> None:
    while True:
        pass


@contextmanager
def cpu_load(processes: int) -> Iterator[None]:
    """``processes`` busy loops, one core each, for the duration of the block."""
    workers = [multiprocessing.Process(target=_busy, daemon=True) for _ in range(processes)]
    for worker in workers:
        worker.start()
    try:
        time.sleep(1.0)  # let the scheduler see them
        yield
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.join()


def measure(photo: Path, calls: int, environment: dict[str, str] | None) -> list[float]:
    env = {key: value for key, value in os.environ.items() if key != "FACEANONYMIXER_THREADS"}
    mode = "torch"
    if environment is not None:
        env.update(environment)
        mode = environment["FACEANONYMIXER_THREADS"]
    result = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(photo), str(calls), mode],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return list(json.loads(result.stdout.strip().splitlines()[-1]))


def first_photo(folder: Path) -> Path:
    person = sorted(path for path in folder.iterdir() if path.is_dir())[0]
    return sorted(person.iterdir())[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("dataset", type=Path, help="a <person>/<photo> folder (the first photo is used)")
    parser.add_argument("--calls", type=int, default=5, help="timed calls per setting and condition")
    parser.add_argument("--load", type=int, default=2, help="busy processes beside the loaded runs")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    photo = first_photo(args.dataset)
    print(f"photo {photo}, {os.cpu_count()} cores, load average before {os.getloadavg()[0]:.2f}")
    rows = []
    for name, environment in SETTINGS.items():
        quiet = measure(photo, args.calls, environment)
        with cpu_load(args.load):
            loaded = measure(photo, args.calls, environment)
        row = {
            "setting": name,
            "quiet_p50": statistics.median(quiet),
            "loaded_p50": statistics.median(loaded),
            "quiet": quiet,
            "loaded": loaded,
        }
        row["ratio"] = row["loaded_p50"] / row["quiet_p50"]
        rows.append(row)
        print(
            f"{name:36s} quiet p50 {row['quiet_p50']:.2f} s  beside {args.load} busy processes "
            f"p50 {row['loaded_p50']:.2f} s  ratio {row['ratio']:.2f}"
        )
    if args.json:
        args.json.write_text(json.dumps({"photo": str(photo), "load": args.load, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
