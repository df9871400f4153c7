"""Judge protected faces with independent recognizers: the engine's acceptance protocol.

    python benchmarks/judge_protection.py SET_DIR [SET_DIR ...] --max-identities N --max-images M \\
        --min-images 2 --steps 50 --judges dlib,facenet --out report.json [--joint] [--seed 0] \\
        [--check-determinism] [--save-dir DIR] [--embeddings-out embeddings.npz]

e.g. ``python benchmarks/judge_protection.py /work/shared/faces/lfw --max-identities 40 --max-images 4
--min-images 2 --steps 50 --judges dlib,facenet --joint --check-determinism --out report.json``.

Protocol
--------
Data
    Each SET_DIR is a folder of ``<identity>/<image>`` files. Identities are taken in sorted order,
    set after set; an identity is used when it has at least ``--min-images`` photos, of which the
    first ``--max-images`` (sorted by name) are kept, until ``--max-identities`` identities are
    collected over all sets (after passing over the first ``--skip-identities`` usable ones: a
    slice held out from tuning). Labels are ``<set>/<identity>``. Photos the engine cannot decode or
    align (typed :class:`~faceanonymixer.utils.errors.FaceAnonyMixerError`) are counted and skipped.
Keys
    Derived from ``--seed``: for each identity a key A = sha256("<seed>:<label>:A") and a second
    key B = sha256("<seed>:<label>:B"); one shared key S = sha256("<seed>:shared:S") for everyone.
Protection
    One ``Protector`` (profile ``--profile``, ``--steps`` and ``--override`` settings) is built once.
    Every photo is protected in its own call (the independent probe) under A, under B and under
    S. With ``--joint``, each identity's photos are also protected together in one call under A
    (the enrollment setting; identities with at least two usable photos). A photo is decoded and
    aligned once and the prepared face is reused for all its calls: each call is exactly what
    ``Protector.protect`` does after its own preparation step.
Judges
    Independent recognizers (``faceanonymixer.evaluation.judges``; never in the loss) embed the
    unprotected photos and the protected ``.photo`` outputs (the face pasted back into the photo,
    what an off-the-shelf recognizer receives). Faces a judge does not find are counted (the
    detection rate per judge and setting) and the pairs they would form are left out of the
    rates (their number is reported as ``skipped``, which also counts photos not protected in
    that setting). Distances are Euclidean; a pair matches when its distance is strictly below
    the threshold: the judge's own (dlib 0.6) or, for a judge without one (FaceNet),
    ``threshold_at_fmr`` at ``--fmr`` (1e-2) over the unprotected impostor pairs of this same
    data (their number is reported).
Measures (per judge; each a share of pairs, with the number of pairs and the mean distance)
    ``unprotected``: genuine match rate and impostor non-match rate of the original photos.
    ``anonymity``: (photo i protected under A, unprotected photo j of the same identity) pairs
    that do NOT match; ``source`` is i == j, ``others`` is i != j, ``combined`` is both.
    ``same_key_genuine_match``: pairs of protected photos (A) of one identity that match.
    ``own_key_impostor_nonmatch``: pairs of protected photos of different identities, each under
    its own A, that do not match.
    ``shared_key_genuine_match`` / ``shared_key_impostor_nonmatch``: the same under the one key S.
    ``any_key_genuine_match``: the genuine pairs under A, B and S together (three times the
    pairs; each key is one draw, and on 10 people one key's rate moves with its luck).
    ``cross_key_nonmatch`` (unlinkability): (photo i under A, photo j under B) of one identity,
    any i and j including i == j, that do not match (also split into same photo / other photos).
    With ``--joint``: ``joint_same_key_genuine_match`` (pairs within one joint call),
    ``joint_anonymity`` (joint outputs vs the unprotected photos, as ``anonymity``) and
    ``joint_vs_probe_genuine_match`` (photo i protected alone under A vs the person's other photos
    j != i protected jointly under A: the deployment case of probe vs enrollment).
Also reported
    identities and photos used, failures, seconds per protect call (p50/p95), the engine's mean
    ``target_distance`` and ``original_distance`` per setting; with ``--check-determinism`` the
    first photo is protected twice more under A through ``Protector.protect`` and the PNG
    encodings are compared byte for byte (with each other and with the main run's output).
    ``--save-dir DIR`` writes ``grid_faces.png`` (aligned crops) and ``grid_photos.png`` (whole
    photos): per row one photo, columns original, A, B, S (and joint) for the first identities.
    ``--embeddings-out FILE.npz`` keeps every judge's embeddings, so that the rates can be
    re-scored at another threshold (``load_embeddings`` + ``judge_measures``; ``pool_judge.py``
    pools several runs at one threshold): FaceNet's threshold at FMR 1e-2 of 10 people's 405
    impostor pairs is one of their smallest distances, and moves with the slice.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import math
import shlex
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from faceanonymixer.engine.protection import PreparedFace, ProtectionResult, Subject
from faceanonymixer.engine.protection_key import ProtectionKey
from faceanonymixer.engine.protector import Protector
from faceanonymixer.evaluation.judges import Judge, load_judges, threshold_at_fmr
from faceanonymixer.evaluation.pairs import (
    pair_distances_between,
    same_identity_pairs,
    stack_embeddings,
    unordered_pairs,
)
from faceanonymixer.faces.datasets import list_identity_images
from faceanonymixer.utils.errors import FaceAnonyMixerError
from faceanonymixer.utils.files import write_atomic

#: protection settings: per-photo calls under A, B and the shared S; joint calls under A
PROBE_SETTINGS = ("A", "B", "S")
JOINT = "joint"

# ---- pure pair and rate functions ------------------------------------------------------------


def rate_entry(
    distances: np.ndarray, threshold: float | None, *, kind: Literal["match", "nonmatch"], skipped: int = 0
) -> dict[str, Any]:
    """Share of pairs that match (distance < threshold) or do not, with the pair count and mean distance."""
    pairs = len(distances)
    rate: float | None = None
    if pairs and threshold is not None:
        matched = float(np.mean(distances < threshold))
        rate = matched if kind == "match" else 1.0 - matched
    return {
        "rate": rate,
        "kind": kind,
        "pairs": pairs,
        "skipped": skipped,
        "mean_distance": float(np.mean(distances)) if pairs else None,
    }


def percentile_summary(values: Sequence[float]) -> dict[str, float | int | None]:
    array = np.asarray(values, dtype=np.float64)
    if array.size == 0:
        return {"count": 0, "p50": None, "p95": None, "mean": None}
    return {
        "count": int(array.size),
        "p50": float(np.percentile(array, 50)),
        "p95": float(np.percentile(array, 95)),
        "mean": float(np.mean(array)),
    }


def detection_entry(embeddings: np.ndarray, attempted: np.ndarray) -> dict[str, Any]:
    """Faces found among the ``attempted`` rows (a boolean mask of rows that had an image)."""
    total = int(np.count_nonzero(attempted))
    found = int(np.count_nonzero(np.all(np.isfinite(embeddings), axis=1) & attempted))
    return {"found": found, "total": total, "rate": found / total if total else None}


def judge_measures(
    labels: Sequence[str],
    embeddings: dict[str, np.ndarray],
    threshold: float | None,
) -> dict[str, Any]:
    """Every measure of the protocol for one judge.

    ``embeddings`` maps "original", "A", "B", "S" (and optionally "joint") to (n, d) arrays
    aligned with ``labels``; NaN rows are faces not found (or photos not protected).
    """

    def entry(
        left: str, right: str, pairs: tuple[np.ndarray, np.ndarray], kind: Literal["match", "nonmatch"]
    ) -> dict[str, Any]:
        distances, skipped = pair_distances_between(embeddings[left], embeddings[right], *pairs)
        return rate_entry(distances, threshold, kind=kind, skipped=skipped)

    def entry_over_keys(keys: Sequence[str], pairs: tuple[np.ndarray, np.ndarray]) -> dict[str, Any]:
        parts = [pair_distances_between(embeddings[key], embeddings[key], *pairs) for key in keys]
        distances = np.concatenate([distances for distances, _ in parts])
        return rate_entry(distances, threshold, kind="match", skipped=sum(skipped for _, skipped in parts))

    genuine = unordered_pairs(labels, same=True)
    impostor = unordered_pairs(labels, same=False)
    source = same_identity_pairs(labels, diagonal="only")
    others = same_identity_pairs(labels, diagonal="exclude")
    every = same_identity_pairs(labels, diagonal="include")

    def anonymity(protected: str) -> dict[str, Any]:
        return {
            "source": entry(protected, "original", source, "nonmatch"),
            "others": entry(protected, "original", others, "nonmatch"),
            "combined": entry(protected, "original", every, "nonmatch"),
        }

    measures: dict[str, Any] = {
        "unprotected": {
            "genuine_match": entry("original", "original", genuine, "match"),
            "impostor_nonmatch": entry("original", "original", impostor, "nonmatch"),
        },
        "anonymity": anonymity("A"),
        "same_key_genuine_match": entry("A", "A", genuine, "match"),
        "own_key_impostor_nonmatch": entry("A", "A", impostor, "nonmatch"),
        "shared_key_genuine_match": entry("S", "S", genuine, "match"),
        "shared_key_impostor_nonmatch": entry("S", "S", impostor, "nonmatch"),
        "any_key_genuine_match": entry_over_keys(PROBE_SETTINGS, genuine),
        "cross_key_nonmatch": {
            "combined": entry("A", "B", every, "nonmatch"),
            "same_photo": entry("A", "B", source, "nonmatch"),
            "other_photos": entry("A", "B", others, "nonmatch"),
        },
    }
    if JOINT in embeddings:
        measures["joint_same_key_genuine_match"] = entry(JOINT, JOINT, genuine, "match")
        measures["joint_anonymity"] = anonymity(JOINT)
        measures["joint_vs_probe_genuine_match"] = entry("A", JOINT, others, "match")
    return measures


def fmr_threshold(labels: Sequence[str], original: np.ndarray, fmr: float) -> tuple[float | None, int]:
    """(threshold at ``fmr`` from the unprotected impostor pairs, number of those pairs)."""
    distances, _ = pair_distances_between(original, original, *unordered_pairs(labels, same=False))
    if len(distances) == 0:
        return None, 0
    return threshold_at_fmr(distances, fmr), len(distances)


def derive_key(seed: int, label: str, tag: str) -> ProtectionKey:
    material = hashlib.sha256(f"{seed}:{label}:{tag}".encode()).digest()
    return ProtectionKey(material, version=1, key_id=f"{label}:{tag}")


def shared_key(seed: int) -> ProtectionKey:
    return ProtectionKey(hashlib.sha256(f"{seed}:shared:S".encode()).digest(), version=1, key_id="shared:S")


def png_bytes(image: np.ndarray) -> bytes:
    buffer = BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    return buffer.getvalue()


def save_embeddings(path: Path, labels: Sequence[str], embeddings: dict[str, dict[str, np.ndarray]]) -> None:
    """Labels and every judge's embeddings per setting (NaN rows: no face) as one .npz."""
    arrays = {
        f"{judge}/{setting}": array
        for judge, per_setting in embeddings.items()
        for setting, array in per_setting.items()
    }
    buffer = BytesIO()
    np.savez(buffer, labels=np.asarray(labels, dtype=str), **arrays)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, buffer.getvalue())  # a whole file or none


def load_embeddings(path: Path) -> tuple[list[str], dict[str, dict[str, np.ndarray]]]:
    """What :func:`save_embeddings` wrote: re-score with :func:`judge_measures` at another threshold."""
    embeddings: dict[str, dict[str, np.ndarray]] = {}
    with np.load(path) as arrays:
        labels = [str(label) for label in arrays["labels"]]
        for name in arrays.files:
            if name != "labels":
                judge, setting = name.split("/", 1)
                embeddings.setdefault(judge, {})[setting] = arrays[name]
    return labels, embeddings


# ---- data -----------------------------------------------------------------------------------


def collect_identities(
    roots: Sequence[Path],
    *,
    max_identities: int | None,
    max_images: int | None,
    min_images: int,
    skip_identities: int = 0,
) -> list[tuple[str, Path]]:
    """(``<set>/<identity>``, path) for identities with at least ``min_images`` photos, set after set;
    the first ``skip_identities`` such identities are passed over (a slice not tuned on)."""
    chosen: list[tuple[str, Path]] = []
    count, skipped = 0, 0
    for root in roots:
        grouped: dict[str, list[Path]] = {}
        for identity, path in list_identity_images(root, max_images=max_images):
            grouped.setdefault(identity, []).append(path)
        for identity in sorted(grouped):
            if max_identities is not None and count >= max_identities:
                return chosen
            paths = grouped[identity]
            if len(paths) < min_images:
                continue
            if skipped < skip_identities:
                skipped += 1
                continue
            chosen.extend((f"{root.name}/{identity}", path) for path in paths)
            count += 1
    return chosen


def add_selection_arguments(
    parser: argparse.ArgumentParser, *, max_identities: int | None = None, max_images: int | None = None
) -> None:
    """The data options of :func:`collect_identities`: scripts given the same ones select the same
    people with the same labels (and so, in this protocol, the same keys)."""
    parser.add_argument("sets", nargs="+", type=Path, metavar="SET_DIR", help="<identity>/<image> folders")
    parser.add_argument(
        "--max-identities", type=int, default=max_identities, help="identities in total (all sets)"
    )
    parser.add_argument(
        "--skip-identities", type=int, default=0, help="pass over the first N usable identities"
    )
    parser.add_argument(
        "--max-images", type=int, default=max_images, help="photos per identity (first by name)"
    )
    parser.add_argument("--min-images", type=int, default=2, help="skip identities with fewer photos")


def selected_identities(args: argparse.Namespace) -> list[tuple[str, Path]]:
    """:func:`collect_identities` for the options of :func:`add_selection_arguments`; exits with
    status 1 and a one-line message when no identity qualifies."""
    items = collect_identities(
        args.sets,
        max_identities=args.max_identities,
        max_images=args.max_images,
        min_images=args.min_images,
        skip_identities=args.skip_identities,
    )
    if not items:
        raise SystemExit("no identity has enough photos")
    return items


@dataclass
class Photo:
    label: str
    path: Path
    face: PreparedFace
    results: dict[str, ProtectionResult | None] = field(default_factory=dict)


@dataclass
class Failure:
    label: str
    path: str
    stage: str
    error: str

    def as_dict(self) -> dict[str, str]:
        return {"label": self.label, "path": self.path, "stage": self.stage, "error": self.error}


# ---- protection ----------------------------------------------------------------------------


@dataclass
class Timings:
    call_seconds: dict[str, list[float]] = field(default_factory=dict)
    photo_seconds: dict[str, list[float]] = field(default_factory=dict)

    def add(self, setting: str, call: float, results: Sequence[ProtectionResult]) -> None:
        self.call_seconds.setdefault(setting, []).append(call)
        self.photo_seconds.setdefault(setting, []).extend(r.timings.get("total", math.nan) for r in results)


def protect_call(
    protector: Protector, faces: list[PreparedFace], key: ProtectionKey
) -> tuple[list[ProtectionResult], float]:
    """What ``Protector.protect`` does after preparing the photos; seconds include their preparation."""
    started = time.perf_counter()
    results = protector.engine.protect([Subject(faces=faces, key=key)])[0]
    prepared = sum(face.decode_seconds + face.align_seconds for face in faces)
    return results, time.perf_counter() - started + prepared


def embed_all(
    judge: Judge, images: Iterable[np.ndarray | None], advance: Callable[[], object] | None = None
) -> np.ndarray:
    """The judge's embeddings of ``images`` (NaN rows for None or no face), calling ``advance`` per image."""
    embeddings: list[np.ndarray | None] = []
    for image in images:
        embeddings.append(judge.embed(image) if image is not None else None)
        if advance is not None:
            advance()
    return stack_embeddings(embeddings)


# ---- grids -----------------------------------------------------------------------------------


def _fit_height(image: np.ndarray, height: int) -> np.ndarray:
    if image.shape[0] == height:
        return image
    width = max(1, round(image.shape[1] * height / image.shape[0]))
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR))


def image_grid(rows: Sequence[Sequence[np.ndarray | None]], height: int = 256, gap: int = 4) -> np.ndarray:
    """Rows of RGB images, each scaled to ``height``, on a white canvas; None leaves a grey cell."""
    rendered: list[np.ndarray] = []
    for row in rows:
        cells = [
            _fit_height(cell, height) if cell is not None else np.full((height, height, 3), 128, np.uint8)
            for cell in row
        ]
        spaced: list[np.ndarray] = []
        for cell in cells:
            spaced.extend([cell, np.full((height, gap, 3), 255, np.uint8)])
        rendered.append(np.concatenate(spaced[:-1], axis=1))
    width = max(r.shape[1] for r in rendered)
    canvas_rows: list[np.ndarray] = []
    for r in rendered:
        padded = np.full((height, width, 3), 255, np.uint8)
        padded[:, : r.shape[1]] = r
        canvas_rows.extend([padded, np.full((gap, width, 3), 255, np.uint8)])
    return np.concatenate(canvas_rows[:-1], axis=0)


def save_grids(photos: Sequence[Photo], settings: Sequence[str], folder: Path, identities: int) -> list[str]:
    chosen_labels = list(dict.fromkeys(p.label for p in photos))[:identities]
    chosen = [p for p in photos if p.label in chosen_labels]
    if not chosen:
        return []
    folder.mkdir(parents=True, exist_ok=True)
    face_rows: list[list[np.ndarray | None]] = []
    photo_rows: list[list[np.ndarray | None]] = []
    for photo in chosen:
        results = [photo.results.get(s) for s in settings]
        original: np.ndarray | None = next((r.original_face for r in results if r is not None), None)
        face_rows.append([original, *(r.face if r is not None else None for r in results)])
        photo_rows.append([photo.face.photo, *(r.photo if r is not None else None for r in results)])
    written = []
    for name, rows in (("grid_faces.png", face_rows), ("grid_photos.png", photo_rows)):
        path = folder / name
        Image.fromarray(image_grid(rows)).save(path)
        written.append(str(path))
    return written


# ---- report ----------------------------------------------------------------------------------

TABLE_ROWS: list[tuple[str, tuple[str, ...]]] = [
    ("unprotected genuine match", ("unprotected", "genuine_match")),
    ("unprotected impostor non-match", ("unprotected", "impostor_nonmatch")),
    ("anonymity: source photo", ("anonymity", "source")),
    ("anonymity: other photos", ("anonymity", "others")),
    ("anonymity: combined", ("anonymity", "combined")),
    ("same key genuine match", ("same_key_genuine_match",)),
    ("own key impostor non-match", ("own_key_impostor_nonmatch",)),
    ("shared key genuine match", ("shared_key_genuine_match",)),
    ("shared key impostor non-match", ("shared_key_impostor_nonmatch",)),
    ("genuine match, keys A+B+S", ("any_key_genuine_match",)),
    ("cross key non-match", ("cross_key_nonmatch", "combined")),
    ("cross key non-match: same photo", ("cross_key_nonmatch", "same_photo")),
    ("joint same key genuine match", ("joint_same_key_genuine_match",)),
    ("joint anonymity: combined", ("joint_anonymity", "combined")),
    ("joint vs probe genuine match", ("joint_vs_probe_genuine_match",)),
]


def _cell(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return "-"
    rate = "n/a" if entry["rate"] is None else f"{entry['rate']:.3f}"
    distance = "" if entry["mean_distance"] is None else f" d={entry['mean_distance']:.3f}"
    return f"{rate} n={entry['pairs']}{distance}"


def format_table(judges: dict[str, dict[str, Any]]) -> str:
    names = list(judges)
    rows: list[list[str]] = [["measure", *names]]
    rows.append(
        ["threshold"]
        + [
            "n/a"
            if judges[n]["threshold"] is None
            else f"{judges[n]['threshold']:.4f} ({judges[n]['threshold_source']})"
            for n in names
        ]
    )
    settings = ["original", *PROBE_SETTINGS]
    if any(JOINT in judges[n]["detection"] for n in names):
        settings.append(JOINT)
    for setting in settings:
        cells = []
        for n in names:
            d = judges[n]["detection"].get(setting)
            cells.append(
                "-" if d is None or d["rate"] is None else f"{d['rate']:.3f} ({d['found']}/{d['total']})"
            )
        rows.append([f"detection rate: {setting}", *cells])
    for title, path in TABLE_ROWS:
        cells = []
        for n in names:
            entry: Any = judges[n]["measures"]
            for part in path:
                entry = entry.get(part) if isinstance(entry, dict) else None
            cells.append(_cell(entry))
        if all(c == "-" for c in cells):
            continue
        rows.append([title, *cells])
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def parse_override(text: str) -> tuple[str, Any]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        parsed = value
    return name.strip(), parsed


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if values else None


# ---- main ------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_selection_arguments(parser)
    parser.add_argument(
        "--steps", type=int, default=None, help="optimisation steps (profile default if unset)"
    )
    parser.add_argument(
        "--override",
        action="append",
        type=parse_override,
        default=[],
        metavar="NAME=VALUE",
        help="other optimisation settings, e.g. --override lambda_anon=10 (repeatable)",
    )
    parser.add_argument("--profile", default="embedded")
    parser.add_argument("--device", default=None, help="torch device for the engine (CUDA when present)")
    parser.add_argument("--torch-threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--judges", default="dlib,facenet", help="comma-separated judge names")
    parser.add_argument("--fmr", type=float, default=1e-2, help="FMR for judges without a threshold")
    parser.add_argument("--seed", type=int, default=0, help="derives every key")
    parser.add_argument("--joint", action="store_true", help="also protect each identity's photos jointly")
    parser.add_argument("--check-determinism", action="store_true")
    parser.add_argument("--save-dir", type=Path, default=None, help="write image grids here")
    parser.add_argument("--grid-identities", type=int, default=4, help="identities in the grids")
    parser.add_argument("--out", type=Path, default=None, help="JSON report")
    parser.add_argument(
        "--embeddings-out",
        type=Path,
        default=None,
        help="every judge embedding (NaN: no face) and the labels, .npz, to re-score at other thresholds",
    )
    args = parser.parse_args(argv)

    started = time.perf_counter()
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    overrides: dict[str, Any] = dict(args.override)
    if args.steps is not None:
        overrides["steps"] = args.steps

    items = selected_identities(args)
    judge_names = [name.strip() for name in args.judges.split(",") if name.strip()]
    judges = load_judges(judge_names)
    protector = Protector(args.profile, device=args.device, **overrides)
    shared = shared_key(args.seed)

    failures: list[Failure] = []
    photos: list[Photo] = []
    for label, path in tqdm(items, desc="align", unit="photo"):
        try:
            photos.append(Photo(label, path, protector.engine.prepare(path)))
        except FaceAnonyMixerError as error:
            failures.append(Failure(label, str(path), "prepare", f"{type(error).__name__}: {error}"))
    labels = [p.label for p in photos]
    identities = list(dict.fromkeys(labels))
    joint_groups = [[p for p in photos if p.label == label] for label in identities] if args.joint else []
    joint_groups = [group for group in joint_groups if len(group) >= 2]
    settings = [*PROBE_SETTINGS, *([JOINT] if args.joint else [])]

    timings = Timings()
    total_calls = len(photos) * len(PROBE_SETTINGS) + len(joint_groups)
    with tqdm(total=total_calls, desc="protect", unit="call") as progress:
        for photo in photos:
            for setting in PROBE_SETTINGS:
                key = shared if setting == "S" else derive_key(args.seed, photo.label, setting)
                try:
                    results, seconds = protect_call(protector, [photo.face], key)
                    photo.results[setting] = results[0]
                    timings.add(setting, seconds, results)
                except FaceAnonyMixerError as error:
                    photo.results[setting] = None
                    failures.append(
                        Failure(photo.label, str(photo.path), setting, f"{type(error).__name__}: {error}")
                    )
                progress.update()
        for group in joint_groups:
            key = derive_key(args.seed, group[0].label, "A")
            try:
                results, seconds = protect_call(protector, [p.face for p in group], key)
                for photo, result in zip(group, results, strict=True):
                    photo.results[JOINT] = result
                timings.add(JOINT, seconds, results)
            except FaceAnonyMixerError as error:
                failures.append(Failure(group[0].label, "", JOINT, f"{type(error).__name__}: {error}"))
            progress.update()

    determinism: dict[str, Any] | None = None
    if args.check_determinism and photos:
        first = photos[0]
        key = derive_key(args.seed, first.label, "A")
        encodings = [png_bytes(protector.protect([first.path], key)[0].photo) for _ in range(2)]
        main_result = first.results.get("A")
        main_png = png_bytes(main_result.photo) if main_result is not None else None
        determinism = {
            "photo": str(first.path),
            "identical": encodings[0] == encodings[1],
            "matches_main_run": main_png == encodings[0] if main_png is not None else None,
            "sha256": [hashlib.sha256(e).hexdigest() for e in encodings],
        }

    report_judges: dict[str, dict[str, Any]] = {}
    all_embeddings: dict[str, dict[str, np.ndarray]] = {}
    for judge in judges:
        images: dict[str, list[np.ndarray | None]] = {"original": [p.face.photo for p in photos]}
        for setting in settings:
            outputs = [p.results.get(setting) for p in photos]
            images[setting] = [r.photo if r is not None else None for r in outputs]
        total = sum(len(pictures) for pictures in images.values())
        with tqdm(total=total, desc=f"judge {judge.name}", unit="photo") as progress:
            embeddings = {
                setting: embed_all(judge, pictures, progress.update) for setting, pictures in images.items()
            }
        all_embeddings[judge.name] = embeddings
        threshold, source, impostor_pairs = judge.threshold, "judge", None
        if threshold is None:
            threshold, impostor_pairs = fmr_threshold(labels, embeddings["original"], args.fmr)
            source = f"fmr {args.fmr:g}, {impostor_pairs} impostor pairs"
        detection = {
            setting: detection_entry(
                embeddings[setting], np.array([img is not None for img in images[setting]])
            )
            for setting in images
        }
        report_judges[judge.name] = {
            "threshold": threshold,
            "threshold_source": source,
            "fmr": args.fmr if judge.threshold is None else None,
            "impostor_pairs_for_threshold": impostor_pairs,
            "detection": detection,
            "measures": judge_measures(labels, embeddings, threshold),
        }

    engine_distances = {
        setting: {
            "target_distance": _mean(
                [r.target_distance for p in photos if (r := p.results.get(setting)) is not None]
            ),
            "original_distance": _mean(
                [r.original_distance for p in photos if (r := p.results.get(setting)) is not None]
            ),
        }
        for setting in settings
    }
    grids = save_grids(photos, settings, args.save_dir, args.grid_identities) if args.save_dir else []
    probe_calls = [s for setting in PROBE_SETTINGS for s in timings.call_seconds.get(setting, [])]
    report: dict[str, Any] = {
        "command": shlex.join(["python", sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "protocol": {
            "sets": [str(s) for s in args.sets],
            "max_identities": args.max_identities,
            "skip_identities": args.skip_identities,
            "max_images": args.max_images,
            "min_images": args.min_images,
            "profile": args.profile,
            "overrides": overrides,
            "seed": args.seed,
            "joint": args.joint,
            "judges": judge_names,
            "fmr": args.fmr,
            "device": str(protector.engine.device),
            "torch_threads": torch.get_num_threads(),
        },
        "data": {
            "identities_selected": len(dict.fromkeys(label for label, _ in items)),
            "photos_selected": len(items),
            "identities_used": len(identities),
            "photos_used": len(photos),
            "joint_identities": len(joint_groups),
            "failures": len(failures),
            "failures_by_stage": dict(Counter(f.stage for f in failures)),
            "failure_list": [f.as_dict() for f in failures],
        },
        "engine": {
            "seconds_per_probe_call": percentile_summary(probe_calls),
            "seconds_per_call": {s: percentile_summary(v) for s, v in timings.call_seconds.items()},
            "seconds_per_photo_total": {s: percentile_summary(v) for s, v in timings.photo_seconds.items()},
            "distances": engine_distances,
        },
        "determinism": determinism,
        "judges": report_judges,
        "grids": grids,
        "seconds": time.perf_counter() - started,
    }

    data = report["data"]
    print(
        f"\n{data['identities_used']} identities, {data['photos_used']} photos "
        f"({data['failures']} failures), profile {args.profile}, overrides {overrides}, seed {args.seed}"
    )
    probe = report["engine"]["seconds_per_probe_call"]
    if probe["count"]:
        print(
            f"seconds per probe call: p50 {probe['p50']:.2f}  p95 {probe['p95']:.2f} ({probe['count']} calls)"
        )
    joint_calls = report["engine"]["seconds_per_call"].get(JOINT)
    if joint_calls and joint_calls["count"]:
        print(f"seconds per joint call: p50 {joint_calls['p50']:.2f}  p95 {joint_calls['p95']:.2f}")
    for setting, values in engine_distances.items():
        if values["target_distance"] is not None:
            print(
                f"engine {setting}: mean target_distance {values['target_distance']:.4f}, "
                f"original_distance {values['original_distance']:.4f}"
            )
    if determinism is not None:
        same, main_run = determinism["identical"], determinism["matches_main_run"]
        print(f"determinism: identical={same} matches_main_run={main_run}")
    print()
    print(format_table(report_judges))
    print(f"\n{report['seconds']:.1f} s in all")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"report written to {args.out}")
    if args.embeddings_out:
        save_embeddings(args.embeddings_out, labels, all_embeddings)
        print(f"embeddings written to {args.embeddings_out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
