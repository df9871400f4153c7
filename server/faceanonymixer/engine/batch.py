"""The one batch path: photos of one or several subjects, each under its key -> one outcome per photo.

``Protector``, the service, Ray Serve's cross-request batching and the evaluation all protect
through here: each photo is decoded and aligned on its own (a photo that fails keeps its typed
error and fails alone), then the faces of every subject are optimised in one engine call, and each
outcome carries its result and its share of the time. What callers do around it (naming the
input at fault, encoding replies, keeping photos out of memory) stays theirs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from faceanonymixer.engine.profiles import OptimisationConfig
from faceanonymixer.engine.protection import (
    PreparedFace,
    ProtectionEngine,
    ProtectionResult,
    StepCallback,
    StopCheck,
    Subject,
)
from faceanonymixer.engine.protection_key import ProtectionKey
from faceanonymixer.faces.imageio import ImageInput
from faceanonymixer.utils.errors import FaceAnonyMixerError, ProtectionCancelledError

#: decodes and aligns one photo (``ProtectionEngine.prepare``, or a caller's variant of it)
Prepare = Callable[[ImageInput], PreparedFace]
#: hears of each photo prepared: (done, all)
PhotoCallback = Callable[[int, int], object]


@dataclass
class SubjectPhotos:
    """The photos of one subject under one key, protected together."""

    photos: Sequence[ImageInput]
    key: ProtectionKey


@dataclass
class PhotoOutcome:
    """What became of one photo: prepared, then protected, or the typed error it failed with."""

    prepared: PreparedFace | None = None
    result: ProtectionResult | None = None
    error: FaceAnonyMixerError | None = None
    #: decoding and alignment of this photo
    align_seconds: float = 0.0
    #: this photo's share of its batch's optimisation
    optimise_seconds: float = 0.0


def prepare_photos(
    engine: ProtectionEngine,
    photos: Sequence[ImageInput],
    *,
    prepare: Prepare | None = None,
    should_stop: StopCheck | None = None,
    stop_at_first_error: bool = False,
    on_photo: PhotoCallback | None = None,
) -> list[PhotoOutcome]:
    """Decode and align each photo in turn; ``should_stop`` is checked before each one (a large
    photo takes a while). With ``stop_at_first_error`` the outcomes end at the first failure."""
    prepare = prepare or engine.prepare
    outcomes: list[PhotoOutcome] = []
    for photo in photos:
        if should_stop is not None and should_stop():
            raise ProtectionCancelledError("protection cancelled")
        started = time.perf_counter()
        try:
            outcome = PhotoOutcome(prepared=prepare(photo))
        except FaceAnonyMixerError as error:
            outcome = PhotoOutcome(error=error)
        outcome.align_seconds = time.perf_counter() - started
        outcomes.append(outcome)
        if on_photo is not None:
            on_photo(len(outcomes), len(photos))
        if stop_at_first_error and outcome.error is not None:
            break
    return outcomes


def protect_prepared(
    engine: ProtectionEngine,
    subjects: Sequence[tuple[ProtectionKey, Sequence[PhotoOutcome]]],
    *,
    should_stop: StopCheck | None = None,
    on_step: StepCallback | None = None,
    keep_latents: bool = False,
    optimisation: OptimisationConfig | None = None,
) -> None:
    """Protect the prepared photos of every subject in one engine call, filling each outcome's
    ``result`` and ``optimise_seconds``; outcomes with an error are left as they are. The same
    prepared outcomes may be protected again under other keys (the result is replaced)."""
    batch = [(key, [o for o in outcomes if o.prepared is not None]) for key, outcomes in subjects]
    batch = [(key, ready) for key, ready in batch if ready]
    if not batch:
        return
    started = time.perf_counter()
    results = engine.protect(
        [Subject(faces=[o.prepared for o in ready if o.prepared], key=key) for key, ready in batch],
        should_stop=should_stop,
        keep_latents=keep_latents,
        optimisation=optimisation,
        on_step=on_step,
    )
    share = (time.perf_counter() - started) / sum(len(ready) for _, ready in batch)
    for (_, ready), per_subject in zip(batch, results, strict=True):
        for outcome, result in zip(ready, per_subject, strict=True):
            outcome.result, outcome.optimise_seconds = result, share


def protect_batch(
    engine: ProtectionEngine,
    subjects: Sequence[SubjectPhotos],
    *,
    prepare: Prepare | None = None,
    should_stop: StopCheck | None = None,
    stop_at_first_error: bool = False,
    on_photo: PhotoCallback | None = None,
    on_step: StepCallback | None = None,
    keep_latents: bool = False,
    optimisation: OptimisationConfig | None = None,
) -> list[list[PhotoOutcome]]:
    """Every subject's photos prepared, then protected in one optimisation batch; one list of
    outcomes per subject, in input order. With ``stop_at_first_error`` nothing is protected once a
    photo fails (the outcomes end at that photo): a caller that protects all photos or none."""
    total = sum(len(subject.photos) for subject in subjects)
    done = 0

    def heard(count: int, _: int) -> None:
        if on_photo is not None:
            on_photo(done + count, total)

    rows: list[list[PhotoOutcome]] = []
    for subject in subjects:
        row = prepare_photos(
            engine,
            subject.photos,
            prepare=prepare,
            should_stop=should_stop,
            stop_at_first_error=stop_at_first_error,
            on_photo=heard,
        )
        rows.append(row)
        done += len(row)
        if stop_at_first_error and any(outcome.error is not None for outcome in row):
            return rows
    protect_prepared(
        engine,
        [(subject.key, row) for subject, row in zip(subjects, rows, strict=True)],
        should_stop=should_stop,
        on_step=on_step,
        keep_latents=keep_latents,
        optimisation=optimisation,
    )
    return rows
