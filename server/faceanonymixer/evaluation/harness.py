"""``faceanonymixer eval``: protect a folder-per-identity dataset and let independent judges score it.

Protocol (what :func:`run_protection` and :func:`judge_embeddings` do)
--------------------------------------------------------------------
Data
    ``<dataset>/<identity>/<image>``; identities and files in sorted order, the first
    ``max_identities`` identities and ``max_images`` photos of each. Photos the engine cannot
    decode or align (no face, several faces, not an image) are counted and skipped.
Keys
    Derived from ``seed``: per identity a key A = sha256("<seed>:<identity>:A") and a second key
    B = sha256("<seed>:<identity>:B"); one key S = sha256("<seed>:shared:S") shared by everyone.
Protection
    Every photo is protected on its own (one subject per photo: the independent probe, as a
    deployed system protects each probe), under A, under B and under S, with the profile's
    optimisation; the ``naive_mix`` baseline does the same with no optimisation steps (the
    inverted latent mixed with the key's latent, decoded). Photos are batched ``batch_size`` at a
    time into one engine call (the faces of a batch optimise together but each with its own loss
    terms, so the result does not depend on the batching beyond float rounding). ``jobs`` worker
    processes share the work, each with ``cpu_count // jobs`` torch threads.
Judging
    Judges (independent recognizers, never in the loss) embed the unprotected photos and the
    protected photos (the face pasted back into the photo: what an off-the-shelf recognizer
    receives). A face a judge does not find is a NaN row: its pairs are left out and counted.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from faceanonymixer.datasets import list_identity_images
from faceanonymixer.protection_key import ProtectionKey

#: protected settings: own key A, second key B (cross-key), one key S shared by all identities
KEYS = ("A", "B", "S")
OPTIMISED = KEYS
NAIVE = tuple(f"naive_{key}" for key in KEYS)
SETTINGS = OPTIMISED + NAIVE

Progress = Callable[[int], object]


@dataclass(frozen=True)
class EvalConfig:
    dataset: Path
    max_identities: int | None = None
    max_images: int | None = None
    seed: int = 0
    profile: str = "embedded"
    judges: tuple[str, ...] = ("dlib", "facenet")
    jobs: int = 1
    batch_size: int = 4
    #: optimisation settings overriding the profile's (e.g. ``{"steps": 10}``)
    optimisation: dict[str, Any] = field(default_factory=dict)
    baselines: bool = True


def derive_key(seed: int, identity: str, tag: str) -> ProtectionKey:
    material = hashlib.sha256(f"{seed}:{identity}:{tag}".encode()).digest()
    return ProtectionKey(material, version=1, key_id=f"{identity}:{tag}")


def key_for(seed: int, identity: str, setting: str) -> ProtectionKey:
    tag = setting.removeprefix("naive_")
    return derive_key(seed, "shared" if tag == "S" else identity, tag)


@dataclass
class Photo:
    identity: str
    path: Path
    #: the decoded photo (uint8 RGB), the aligned original face on the generator's template
    original: np.ndarray
    original_face: np.ndarray
    #: setting -> protected photo / aligned protected face
    protected: dict[str, np.ndarray] = field(default_factory=dict)
    faces: dict[str, np.ndarray] = field(default_factory=dict)
    #: setting -> seconds of this photo's share of its engine call (align + invert + optimise + encode)
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class Failure:
    identity: str
    path: str
    error: str

    def as_dict(self) -> dict[str, str]:
        return {"identity": self.identity, "path": self.path, "error": self.error}


@dataclass
class ProtectionRun:
    photos: list[Photo]
    failures: list[Failure]
    settings: tuple[str, ...]
    threads_per_job: int
    seconds: float

    @property
    def labels(self) -> list[str]:
        return [photo.identity for photo in self.photos]


# ---- the worker side (one engine per process) -----------------------------------------------------

_ENGINE: Any = None


def _start_worker(profile: str, overrides: dict[str, Any], threads: int) -> None:
    global _ENGINE
    import torch

    from faceanonymixer.engine import ProtectionEngine
    from faceanonymixer.profiles import get_profile
    from faceanonymixer.recognizers import default_device

    torch.set_num_threads(threads)
    chosen = get_profile(profile)
    _ENGINE = ProtectionEngine(
        chosen, optimisation=chosen.optimisation.with_overrides(**overrides), device=default_device()
    )


@dataclass
class _Task:
    #: (photo index, identity, path) of one batch of photos
    items: list[tuple[int, str, str]]
    settings: tuple[str, ...]
    seed: int


#: photo index -> (protected photo, protected face, seconds) of one setting
_SettingResults = dict[int, tuple[np.ndarray, np.ndarray, float]]


@dataclass
class _Done:
    #: photo index -> (original photo, original face on the generator's template)
    originals: dict[int, tuple[np.ndarray, np.ndarray]]
    results: dict[str, _SettingResults]
    #: photo index -> error message (the photo could not be decoded or aligned)
    failures: dict[int, str]


def _protect(task: _Task) -> _Done:
    """Prepare (decode, align) a batch of photos once, then protect it in every setting, each photo
    its own subject."""
    from faceanonymixer.engine import Subject
    from faceanonymixer.errors import FaceAnonyMixerError

    engine = _ENGINE
    prepared, failures = [], {}
    for index, identity, path in task.items:
        try:
            prepared.append((index, identity, engine.prepare(path)))
        except FaceAnonyMixerError as error:
            failures[index] = f"{type(error).__name__}: {error}"
    done = _Done({}, {}, failures)
    if not prepared:
        return done
    naive = engine.config.with_overrides(steps=0)
    for setting in task.settings:
        subjects = [
            Subject(faces=[face], key=key_for(task.seed, identity, setting)) for _, identity, face in prepared
        ]
        protected = engine.protect(subjects, optimisation=naive if setting.startswith("naive_") else None)
        done.results[setting] = {}
        for (index, _, face), (result,) in zip(prepared, protected, strict=True):
            done.originals[index] = (face.photo, result.original_face)
            done.results[setting][index] = (result.photo, result.face, result.timings["total"])
    return done


# ---- the driver -----------------------------------------------------------------------------------


def list_photos(config: EvalConfig) -> list[tuple[str, Path]]:
    return list_identity_images(
        config.dataset, max_identities=config.max_identities, max_images=config.max_images
    )


def _tasks(config: EvalConfig, listed: Sequence[tuple[str, Path]], settings: tuple[str, ...]) -> list[_Task]:
    indexed = [(index, identity, str(path)) for index, (identity, path) in enumerate(listed)]
    size = config.batch_size
    return [
        _Task(indexed[start : start + size], settings, config.seed) for start in range(0, len(indexed), size)
    ]


def run_protection(config: EvalConfig, *, progress: Progress | None = None) -> ProtectionRun:
    """Protect every listed photo in every setting; ``progress`` gets the photos done per batch."""
    if config.jobs < 1 or config.batch_size < 1:
        raise ValueError("jobs and batch_size must be at least 1")
    listed = list_photos(config)
    if not listed:
        raise ValueError(f"no photos found in {config.dataset} (expected <identity>/<image> files)")
    settings = SETTINGS if config.baselines else OPTIMISED
    threads = max(1, (os.cpu_count() or 1) // config.jobs)
    started = time.perf_counter()
    done: list[_Done] = []
    tasks = _tasks(config, listed, settings)
    init = (config.profile, dict(config.optimisation), threads)
    if config.jobs == 1:
        _start_worker(*init)
        for task in tasks:
            done.append(_protect(task))
            if progress is not None:
                progress(len(task.items))
    else:
        # spawn: torch and dlib state must not be forked; each worker loads its own engine
        with ProcessPoolExecutor(
            config.jobs, mp_context=get_context("spawn"), initializer=_start_worker, initargs=init
        ) as pool:
            for finished, task in zip(pool.map(_protect, tasks), tasks, strict=True):
                done.append(finished)
                if progress is not None:
                    progress(len(task.items))
    return _assemble(listed, done, settings, threads, time.perf_counter() - started)


def _assemble(
    listed: Sequence[tuple[str, Path]],
    done: Sequence[_Done],
    settings: tuple[str, ...],
    threads: int,
    seconds: float,
) -> ProtectionRun:
    photos: list[Photo] = []
    failures: list[Failure] = []
    for batch in done:
        failures.extend(
            Failure(listed[i][0], str(listed[i][1]), error) for i, error in sorted(batch.failures.items())
        )
        for index, (original, original_face) in sorted(batch.originals.items()):
            identity, path = listed[index]
            photo = Photo(identity, path, original, original_face)
            for setting, results in batch.results.items():
                photo.protected[setting], photo.faces[setting], photo.seconds[setting] = results[index]
            photos.append(photo)
    return ProtectionRun(photos, failures, settings, threads, seconds)


def judge_embeddings(
    run: ProtectionRun, judge: Any, *, progress: Progress | None = None
) -> dict[str, np.ndarray]:
    """ "original" and each setting -> (n, d) embeddings of ``judge`` (NaN rows: no face found)."""
    from faceanonymixer.evaluation.pairs import stack_embeddings

    embeddings: dict[str, np.ndarray] = {}
    for setting in ("original", *run.settings):
        found = []
        for photo in run.photos:
            image = photo.original if setting == "original" else photo.protected.get(setting)
            found.append(judge.embed(image) if image is not None else None)
            if progress is not None:
                progress(1)
        embeddings[setting] = stack_embeddings(found)
    return embeddings
