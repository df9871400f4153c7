"""SHA-256 of protected outputs: 10 lfw photos under 2 fixed keys, each photo in its own call, one
thread. Run it before and after a change that must not change what the engine makes (a refactor)
and compare; ``--compare`` also gives the largest difference in grey levels.

    export FACEANONYMIXER_THREADS=1
    .venv/bin/python benchmarks/output_digests.py ../shared/faces/lfw before
    ... (the change) ...
    .venv/bin/python benchmarks/output_digests.py ../shared/faces/lfw after --compare before

``--revision R`` runs an archived revision of ``embedded`` instead of the current one: a change
that adds to the current revision must leave the archived ones' faces as they were.

Writes ``NAME.json`` (digests) and ``NAME.npz`` (the protected photos, for the pixel comparison).
Digests depend on the machine's floating point (CPU kind, torch build): compare on one machine.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np

from faceanonymixer import Protector
from faceanonymixer.engine.profiles import get_profile, served_revision

KEYS = {"A": hashlib.sha256(b"refactor-key-a").digest(), "B": hashlib.sha256(b"refactor-key-b").digest()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("faces", type=Path, help="an <identity>/<photo> folder (lfw)")
    parser.add_argument("name", help="output name: NAME.json and NAME.npz")
    parser.add_argument("--compare", help="an earlier NAME to compare with")
    parser.add_argument(
        "--revision", help="an archived revision of the embedded profile (default: its current one)"
    )
    arguments = parser.parse_args()

    photos = sorted(arguments.faces.glob("*/*"))[:50:5]  # 10 photos of 10 people
    profile = get_profile("embedded")
    if arguments.revision is not None:
        profile = served_revision(profile, arguments.revision)
    protector = Protector(profile=profile, threads=1)
    digests, pixels = {}, {}
    for key_name, key in KEYS.items():
        for photo in photos:
            [result] = protector.protect(str(photo), key)
            name = f"{key_name}:{photo.parent.name}/{photo.name}"
            digests[name] = {
                "photo": hashlib.sha256(np.ascontiguousarray(result.photo).tobytes()).hexdigest(),
                "face": hashlib.sha256(np.ascontiguousarray(result.face).tobytes()).hexdigest(),
            }
            pixels[name] = result.photo
    Path(f"{arguments.name}.json").write_text(json.dumps(digests, indent=1) + "\n")
    np.savez_compressed(f"{arguments.name}.npz", **pixels)
    print(f"{len(digests)} outputs: {arguments.name}.json")
    if arguments.compare:
        earlier = json.loads(Path(f"{arguments.compare}.json").read_text())
        with np.load(f"{arguments.compare}.npz") as before:
            worst = max(int(np.abs(before[n].astype(int) - pixels[n].astype(int)).max()) for n in pixels)
        same = sum(earlier.get(name) == digest for name, digest in digests.items())
        print(f"same digests: {same} of {len(digests)}; largest difference: {worst} grey levels")


if __name__ == "__main__":
    main()
