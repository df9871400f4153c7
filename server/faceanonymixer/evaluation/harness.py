"""``faceanonymixer eval``: protect a folder-per-identity dataset and let independent judges score it.

Protocol (what :func:`run_protection` and :func:`judge_embeddings` do)
--------------------------------------------------------------------
Data
    One or several sets ``<set>/<identity>/<image>`` (the set is the folder's name); identities
    and files in sorted order. Per set: the identities with at least ``min_images`` photos (among
    the first ``max_images``); with ``per_cell``, at most that many of each labelled group
    (:mod:`faceanonymixer.evaluation.labels`; a draw fixed by the seed, since sorted names may run
    by age); past the first ``skip_identities``, the first ``max_identities`` identities and the
    first ``max_images`` photos of each. A folder may hold one photo (a one-photo set such as
    UTKFace: every photo its own identity). Labels are ``<set>/<identity>``. Photos the engine cannot
    decode or align (no face, several faces, not an image) are counted and skipped.
Keys
    Derived from ``seed``: per identity a key A = sha256("<seed>:<identity>:A") and a second key
    B = sha256("<seed>:<identity>:B"); one key S = sha256("<seed>:shared:S") shared by everyone.
Protection
    Every photo is protected on its own (one subject per photo: the independent probe, as a
    deployed system protects each probe), under A, under B and under S, with the profile's
    optimisation; the ``naive_mix`` baseline does the same with no optimisation steps (the
    inverted latent mixed with the key's latent, decoded), and the generator's reconstruction of
    the photo (no key, no optimisation: ``ProtectionEngine.reconstruct``) is kept as a reference
    for realism. Photos are batched ``batch_size`` at a
    time into one engine call (the faces of a batch optimise together but each with its own loss
    terms, so the result does not depend on the batching beyond float rounding). ``jobs`` worker
    processes share the work, each with the ``threads`` setting (``utils.threads``) over its share of
    the cores (``cores // jobs``).
Judging
    Judges (independent recognizers, never in the loss) embed the unprotected photos and the
    protected photos (the face pasted back into the photo: what an off-the-shelf recognizer
    receives). A face a judge does not find is a NaN row: its pairs are left out and counted.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from faceanonymixer.engine.protection_key import ProtectionKey
from faceanonymixer.evaluation.labels import PhotoLabels, label_photo
from faceanonymixer.faces.datasets import list_identity_images
from faceanonymixer.utils.threads import threads_setting, usable_cores

#: protected settings: own key A, second key B (cross-key), one key S shared by all identities
KEYS = ("A", "B", "S")
OPTIMISED = KEYS
NAIVE = tuple(f"naive_{key}" for key in KEYS)
SETTINGS = OPTIMISED + NAIVE

Progress = Callable[[int], object]


@dataclass(frozen=True)
class EvalConfig:
    #: one or several folders of <identity>/<image> photos, each a set named by its folder
    datasets: tuple[Path, ...]
    max_identities: int | None = None
    max_images: int | None = None
    #: at most this many identities per labelled group (cell) of each set
    per_cell: int | None = None
    #: identities of a set with fewer photos (after ``max_images``) are passed over
    min_images: int = 1
    #: the first identities of each set passed over (a slice held out from tuning)
    skip_identities: int = 0
    seed: int = 0
    profile: str = "embedded"
    judges: tuple[str, ...] = ("dlib", "facenet")
    jobs: int = 1
    batch_size: int = 4
    #: optimisation settings overriding the profile's (e.g. ``{"steps": 10}``)
    optimisation: dict[str, Any] = field(default_factory=dict)
    baselines: bool = True
    #: torch threads per job (``utils.threads``): N > 0 fixed, 0 per batch from the idle cores of the
    #: job's share (usable cores // jobs); None: ``FACEANONYMIXER_THREADS``, else 0
    threads: int | None = None


def derive_key(seed: int, identity: str, tag: str) -> ProtectionKey:
    material = hashlib.sha256(f"{seed}:{identity}:{tag}".encode()).digest()
    return ProtectionKey(material, version=1, key_id=f"{identity}:{tag}")


def key_for(seed: int, identity: str, setting: str) -> ProtectionKey:
    tag = setting.removeprefix("naive_")
    return derive_key(seed, "shared" if tag == "S" else identity, tag)


@dataclass(frozen=True)
class Listed:
    """One photo to protect: its set, identity folder, file and what is known of it."""

    set_name: str
    identity: str
    path: Path
    labels: PhotoLabels | None

    @property
    def label(self) -> str:
        return f"{self.set_name}/{self.identity}"


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
    set_name: str = ""
    labels: PhotoLabels | None = None
    #: the generator's reconstruction of the face (no key, no optimisation), on the template
    reconstruction: np.ndarray | None = None

    @property
    def label(self) -> str:
        return f"{self.set_name}/{self.identity}"


@dataclass
class Failure:
    identity: str
    path: str
    error: str
    set_name: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"set": self.set_name, "identity": self.identity, "path": self.path, "error": self.error}


@dataclass
class ProtectionRun:
    photos: list[Photo]
    failures: list[Failure]
    settings: tuple[str, ...]
    threads_per_job: int
    seconds: float

    @property
    def labels(self) -> list[str]:
        """``<set>/<identity>`` per photo: what pairs photos of one person."""
        return [photo.label for photo in self.photos]

    @property
    def set_names(self) -> list[str]:
        """The sets in the order they were given, those with a protected photo."""
        return list(dict.fromkeys(photo.set_name for photo in self.photos))


# ---- the worker side (one engine per process) -----------------------------------------------------

_ENGINE: Any = None
#: (threads setting, cores of this job's share) of the worker
_THREADS: tuple[int, int] = (0, 1)


def _start_worker(profile: str, overrides: dict[str, Any], threads: tuple[int, int]) -> None:
    global _ENGINE, _THREADS
    from faceanonymixer.engine.profiles import get_profile
    from faceanonymixer.engine.protection import ProtectionEngine
    from faceanonymixer.utils.devices import default_device

    _THREADS = threads
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
    #: photo index -> the generator's reconstruction of the face
    reconstructions: dict[int, np.ndarray] = field(default_factory=dict)


def _protect(task: _Task) -> _Done:
    """Prepare (decode, align) a batch of photos once, then protect it in every setting, each photo
    its own subject."""
    from faceanonymixer.utils.threads import torch_threads

    setting, share = _THREADS
    with torch_threads(setting, share=share):
        return _protect_batch(task)


def _protect_batch(task: _Task) -> _Done:
    from faceanonymixer.engine.batch import prepare_photos, protect_prepared

    engine = _ENGINE
    outcomes = prepare_photos(engine, [path for _, _, path in task.items])
    failures = {
        index: f"{type(outcome.error).__name__}: {outcome.error}"
        for (index, _, _), outcome in zip(task.items, outcomes, strict=True)
        if outcome.error is not None
    }
    prepared = [
        (index, identity, outcome.prepared, outcome)
        for (index, identity, _), outcome in zip(task.items, outcomes, strict=True)
        if outcome.prepared is not None
    ]
    done = _Done({}, {}, failures)
    if not prepared:
        return done
    naive = engine.config.with_overrides(steps=0)
    reconstructed = engine.reconstruct([face for _, _, face, _ in prepared])
    done.reconstructions = {
        index: image for (index, _, _, _), image in zip(prepared, reconstructed, strict=True)
    }
    for setting in task.settings:
        protect_prepared(
            engine,
            [(key_for(task.seed, identity, setting), [outcome]) for _, identity, _, outcome in prepared],
            optimisation=naive if setting.startswith("naive_") else None,
        )
        done.results[setting] = {}
        for index, _, face, outcome in prepared:
            result = outcome.result
            assert result is not None  # every prepared photo is protected
            done.originals[index] = (face.photo, result.original_face)
            done.results[setting][index] = (result.photo, result.face, result.timings["total"])
    return done


# ---- the driver -----------------------------------------------------------------------------------


def list_photos(config: EvalConfig) -> list[Listed]:
    """Every photo of every set, in order (see the module docstring's *Data*)."""
    names = [Path(dataset).name for dataset in config.datasets]
    if len(set(names)) != len(names):
        raise ValueError(f"the sets must have different folder names, got {', '.join(names)}")
    listed: list[Listed] = []
    for dataset in config.datasets:
        photos = list_identity_images(dataset)
        by_identity: dict[str, list[Path]] = {}
        for identity, path in photos:
            by_identity.setdefault(identity, []).append(path)
        labels = {
            identity: label_photo(dataset.name, identity, paths[0]) for identity, paths in by_identity.items()
        }
        usable = [
            identity
            for identity in sorted(by_identity)
            if len(by_identity[identity][: config.max_images]) >= config.min_images
        ]
        identities = _per_cell(usable, labels, config.per_cell, config.seed)[config.skip_identities :]
        for identity in identities[: config.max_identities]:
            listed.extend(
                Listed(dataset.name, identity, path, labels[identity])
                for path in by_identity[identity][: config.max_images]
            )
    return listed


def _per_cell(
    identities: list[str], labels: dict[str, PhotoLabels | None], per_cell: int | None, seed: int
) -> list[str]:
    """At most ``per_cell`` identities of each labelled group (a seeded draw), unlabelled ones all;
    in their sorted order."""
    if per_cell is None:
        return identities
    cells: dict[str, list[str]] = {}
    for identity in identities:
        known = labels[identity]
        cells.setdefault(known.cell if known is not None else "", []).append(identity)
    rng = np.random.default_rng(seed)
    kept = set(cells.pop("", []))
    for name in sorted(cells):
        members = cells[name]
        if len(members) > per_cell:
            members = [members[i] for i in rng.choice(len(members), per_cell, replace=False)]
        kept.update(members)
    return [identity for identity in identities if identity in kept]


def _tasks(config: EvalConfig, listed: Sequence[Listed], settings: tuple[str, ...]) -> list[_Task]:
    indexed = [(index, photo.identity, str(photo.path)) for index, photo in enumerate(listed)]
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
        shown = ", ".join(str(dataset) for dataset in config.datasets)
        raise ValueError(f"no photos found in {shown} (expected <identity>/<image> files)")
    settings = SETTINGS if config.baselines else OPTIMISED
    setting = threads_setting(config.threads)
    share = max(1, usable_cores() // config.jobs)
    # the report gives the fixed count, or the most a job takes when chosen per batch
    threads = setting or share
    started = time.perf_counter()
    done: list[_Done] = []
    tasks = _tasks(config, listed, settings)
    init = (config.profile, dict(config.optimisation), (setting, share))
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
    listed: Sequence[Listed],
    done: Sequence[_Done],
    settings: tuple[str, ...],
    threads: int,
    seconds: float,
) -> ProtectionRun:
    photos: list[Photo] = []
    failures: list[Failure] = []
    for batch in done:
        failures.extend(
            Failure(listed[i].identity, str(listed[i].path), error, listed[i].set_name)
            for i, error in sorted(batch.failures.items())
        )
        for index, (original, original_face) in sorted(batch.originals.items()):
            item = listed[index]
            photo = Photo(item.identity, item.path, original, original_face)
            photo.set_name, photo.labels = item.set_name, item.labels
            photo.reconstruction = batch.reconstructions.get(index)
            for setting, results in batch.results.items():
                photo.protected[setting], photo.faces[setting], photo.seconds[setting] = results[index]
            photos.append(photo)
    return ProtectionRun(photos, failures, settings, threads, seconds)


def judge_embeddings(
    run: ProtectionRun,
    judge: Any,
    *,
    progress: Progress | None = None,
    settings: Sequence[str] | None = None,
) -> dict[str, np.ndarray]:
    """ "original" and each setting (default: the run's) -> (n, d) embeddings of ``judge`` (NaN
    rows: no face found)."""
    from faceanonymixer.evaluation.pairs import stack_embeddings

    embeddings: dict[str, np.ndarray] = {}
    for setting in ("original", *(run.settings if settings is None else settings)):
        found = []
        for photo in run.photos:
            image = photo.original if setting == "original" else photo.protected.get(setting)
            found.append(judge.embed(image) if image is not None else None)
            if progress is not None:
                progress(1)
        embeddings[setting] = stack_embeddings(found)
    return embeddings
