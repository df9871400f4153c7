"""Fit apparent-gender and age-group classifiers: ``faceanonymixer models fit-attributes``.

Training data: UTKFace photos whose file names carry the labels (``utk_train``: one folder per
photo; :func:`faceanonymixer.evaluation.labels.utk_labels`), adults only (16 and over, the age
groups' range). Each photo is read as the evaluation reads every photo
(:class:`~faceanonymixer.evaluation.attributes.FaceReader`: FaceNet on dlib's aligned chip);
photos where dlib finds no face are left out and counted. Those
classifiers are judges: nothing of them ever reaches a loss. The same fit over a registered
recognizer's embeddings (``--recognizer dlib``) gives the protection loop's attribute term its
classifiers (``engine/attribute_term.py``), separate from the judges. UTKFace's terms are
non-commercial research, and so are the fitted coefficients.
"""

from __future__ import annotations

import io
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from faceanonymixer.evaluation.attributes import fit_attribute_classifiers
from faceanonymixer.evaluation.labels import PhotoLabels, utk_labels
from faceanonymixer.faces.datasets import list_identity_images
from faceanonymixer.models.attribute_classifiers import GENDERS, AttributeClassifiers
from faceanonymixer.utils.errors import FaceAnonyMixerError
from faceanonymixer.utils.files import write_atomic

TRAINING_DATA = "utk_train: UTKFace photos labelled by their file names (age_gender_race), adults 16+"
#: the evaluation's reading of a face (FaceNet on dlib's chip, ``evaluation.attributes.FaceReader``)
JUDGE_READING = "facenet"
TERMS = "UTKFace: non-commercial research use only; these coefficients inherit that restriction"


@dataclass(frozen=True)
class LabelledPhoto:
    path: Path
    labels: PhotoLabels


def labelled_photos(root: Path, *, per_cell: int | None = None, seed: int = 0) -> list[LabelledPhoto]:
    """UTKFace-named adult photos under ``root`` (sorted by path); with ``per_cell``, a random draw
    (fixed by ``seed``) of at most that many per race x gender cell, since the sorted names run
    by age and their head would hold the youngest only."""
    cells: dict[str, list[LabelledPhoto]] = defaultdict(list)
    for identity, path in list_identity_images(root):
        labels = utk_labels(root.name, identity, path)
        if labels is not None and labels.age_group is not None:
            cells[labels.cell].append(LabelledPhoto(path, labels))
    if not cells:
        raise FaceAnonyMixerError(f"no UTKFace-named adult photos (age_gender_race_...) under {root}")
    rng = np.random.default_rng(seed)
    chosen: list[LabelledPhoto] = []
    for cell in sorted(cells):
        photos = cells[cell]
        if per_cell is not None and len(photos) > per_cell:
            photos = [photos[i] for i in sorted(rng.choice(len(photos), per_cell, replace=False))]
        chosen.extend(photos)
    return sorted(chosen, key=lambda photo: photo.path)


def embed_photos(
    photos: list[LabelledPhoto],
    *,
    recognizer: str = JUDGE_READING,
    cache: Path | None = None,
    progress: Callable[[int], object] | None = None,
) -> np.ndarray:
    """(n, d) embeddings, NaN rows where no face was found: FaceNet's as the evaluation reads each
    photo (``recognizer`` "facenet"), or a registered recognizer's on the chip the engine gives it
    (the loss recognizer's own view, for the protection loop's attribute term). ``cache`` (an .npz
    keyed by the photos' paths and the reading's method) is read when it matches and written
    otherwise, as embedding takes minutes."""
    from faceanonymixer.evaluation.attributes import FaceReader
    from faceanonymixer.evaluation.pairs import stack_embeddings
    from faceanonymixer.faces.imageio import load_image

    names = np.array([str(photo.path) for photo in photos])
    # a cache of another reading of the faces (another crop or network) must not be reused
    method = np.array(
        f"facenet-chip-{FaceReader.CHIP_SIZE}-{FaceReader.CHIP_PADDING}"
        if recognizer == JUDGE_READING
        else f"{recognizer}-engine-chip"
    )
    if cache is not None and cache.is_file():
        with np.load(cache, allow_pickle=False) as stored:
            if (
                "method" in stored.files
                and stored["method"] == method
                and np.array_equal(stored["paths"], names)
            ):
                return np.asarray(stored["embeddings"])
    if recognizer == JUDGE_READING:
        reader, found = FaceReader(), []
        for photo in photos:
            reading = reader(load_image(photo.path))
            found.append(reading.embedding if reading is not None else None)
            if progress is not None:
                progress(1)
        embeddings = stack_embeddings(found)
    else:
        embeddings = _engine_embeddings(photos, recognizer, progress)
    if cache is not None:
        buffer = io.BytesIO()
        np.savez(buffer, paths=names, embeddings=embeddings, method=method)
        write_atomic(cache, buffer.getvalue())
    return embeddings


def _engine_embeddings(
    photos: list[LabelledPhoto], recognizer: str, progress: Callable[[int], object] | None
) -> np.ndarray:
    """The recognizer's embeddings of the dlib chip at its input size, as the engine cuts it
    (``faces.embedding.embed_images``), NaN rows where no face was aligned."""
    from faceanonymixer.evaluation.pairs import stack_embeddings
    from faceanonymixer.faces.alignment import FaceAligner
    from faceanonymixer.faces.embedding import embed_images
    from faceanonymixer.models.recognizers import load_recognizer

    def items() -> Iterator[tuple[str, Path]]:
        for index, photo in enumerate(photos):
            yield str(index), photo.path
            if progress is not None:
                progress(1)  # asked for the next photo: this one is aligned

    faces = embed_images(items(), aligner=FaceAligner(), recognizer=load_recognizer(recognizer, device="cpu"))
    found: list[np.ndarray | None] = [None] * len(photos)
    for label, embedding in zip(faces.labels, faces.embeddings, strict=True):
        found[int(label)] = embedding
    return stack_embeddings(found)


def fit_from_photos(
    root: Path,
    *,
    recognizer: str = JUDGE_READING,
    per_cell: int | None = None,
    cache: Path | None = None,
    progress: Callable[[int], object] | None = None,
) -> tuple[AttributeClassifiers, dict[str, Any]]:
    """Embed the labelled photos under ``root`` (:func:`embed_photos`) and fit the classifiers;
    returns them and a summary."""
    photos = labelled_photos(root, per_cell=per_cell)
    embeddings = embed_photos(photos, recognizer=recognizer, cache=cache, progress=progress)
    found = np.all(np.isfinite(embeddings), axis=1)
    genders = np.array([GENDERS.index(p.labels.gender or "") for p in photos])
    ages = np.array([p.labels.age_group for p in photos])
    classifiers, accuracy = fit_attribute_classifiers(embeddings[found], genders[found], ages[found])
    return classifiers, {"photos": len(photos), "embedded": int(found.sum()), **accuracy}
