"""The image-quality side of a protection run: realism (KID/FID) and the attributes kept.

Both are measured once per photo and then summarised over any group of photos (a set, all sets
pooled, one cell), so that every table of the report comes from the same numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from faceanonymixer.evaluation.attributes import (
    FaceAttributes,
    FaceReader,
    attribute_summary,
    classifier_accuracy,
    committed_classifiers,
    measure_faces,
)
from faceanonymixer.evaluation.harness import ProtectionRun
from faceanonymixer.evaluation.realism import (
    InceptionFeatures,
    InceptionUnavailableError,
    realism_report,
    split_identities,
)
from faceanonymixer.models.attribute_classifiers import AttributeClassifiers

Progress = Callable[[int], object]
#: protected settings whose attributes are measured: own key, shared key
ATTRIBUTE_SETTINGS = ("A", "S")
_SHARED_KEYS = (
    "gender_agreement",
    "age_group_agreement",
    "age_group_within_one",
    "ita_abs_diff_median",
    "pose_error_median_deg",
)


# ---- attributes ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class AttributeData:
    """Per-photo attributes of the originals and of each protected setting."""

    original: FaceAttributes
    protected: dict[str, FaceAttributes]
    run: ProtectionRun


def measure_attributes(
    run: ProtectionRun, *, classifiers: AttributeClassifiers | None = None, progress: Progress | None = None
) -> AttributeData:
    """Landmarks, pose, ITA and the classifiers on the originals and the A and S photos."""
    reader = FaceReader()
    chosen = classifiers or committed_classifiers()

    def measure(setting: str) -> FaceAttributes:
        images = [
            photo.original if setting == "original" else photo.protected.get(setting) for photo in run.photos
        ]
        measured = measure_faces(images, reader, chosen)
        if progress is not None:
            progress(len(images))
        return measured

    original = measure("original")
    return AttributeData(original, {setting: measure(setting) for setting in ATTRIBUTE_SETTINGS}, run)


def attribute_report(data: AttributeData, rows: np.ndarray) -> dict[str, Any]:
    """``quality.attributes`` over the photos ``rows``: own key A at the top, the shared key S
    under ``shared_key``, the classifiers against the labels (their ceiling) under
    ``classifier_accuracy``."""
    report = attribute_summary(data.original, data.protected["A"], rows)
    shared = attribute_summary(data.original, data.protected["S"], rows)
    report["shared_key"] = {key: shared[key] for key in _SHARED_KEYS}
    labels = [photo.labels for photo in data.run.photos]
    ceiling = classifier_accuracy(data.original, labels, rows)
    protected = classifier_accuracy(data.protected["A"], labels, rows)
    ceiling["protected"] = {key: protected[key] for key in ("gender", "age_group", "age_group_within_one")}
    ceiling["note"] = (
        "classifiers on the unprotected photos against the photos' labels (UTKFace file names; "
        "non-commercial research data): the most the agreement rates can be trusted; "
        "'protected': the same on the protected (A) photos"
    )
    report["classifier_accuracy"] = ceiling
    return report


# ---- realism -------------------------------------------------------------------------------------

#: kind of face -> how to read it from a photo
_FACES: dict[str, Callable[[Any], np.ndarray | None]] = {
    "real": lambda photo: photo.original_face,
    "protected": lambda photo: photo.faces.get("A"),
    "protected_shared": lambda photo: photo.faces.get("S"),
    "reconstruction": lambda photo: photo.reconstruction,
}


def realism_split(run: ProtectionRun, seed: int) -> np.ndarray:
    """Candidate photos (True) against reference photos: each set's identities split in halves."""
    labels = run.labels
    candidates = np.zeros(len(labels), dtype=bool)
    sets = np.array([photo.set_name for photo in run.photos], dtype=object)
    for name in run.set_names:
        rows = np.flatnonzero(sets == name)
        first, _ = split_identities([labels[i] for i in rows], seed=seed)
        candidates[rows[first]] = True
    return candidates


def realism_features(
    run: ProtectionRun, candidates: np.ndarray, *, progress: Progress | None = None
) -> dict[str, np.ndarray]:
    """Inception features of every kind of face (real: every photo; the others: candidates only,
    NaN elsewhere). Raises :class:`InceptionUnavailableError` without the network."""
    network = InceptionFeatures()
    features: dict[str, np.ndarray] = {}
    for kind, read in _FACES.items():
        rows = [
            i
            for i, photo in enumerate(run.photos)
            if (kind == "real" or candidates[i]) and read(photo) is not None
        ]
        values = np.full((len(run.photos), 2048), np.nan)
        if rows:
            values[rows] = network([read(run.photos[i]) for i in rows])  # type: ignore[misc]
        if progress is not None:
            progress(len(rows))
        features[kind] = values
    return features


def realism_for(
    features: dict[str, np.ndarray], candidates: np.ndarray, rows: np.ndarray, *, seed: int
) -> dict[str, Any]:
    """``quality.realism`` of the photos ``rows``: their candidates against their references."""
    return realism_report(features, candidates & rows, ~candidates & rows, seed=seed)


__all__ = [
    "AttributeData",
    "InceptionUnavailableError",
    "attribute_report",
    "measure_attributes",
    "realism_features",
    "realism_for",
    "realism_split",
]
