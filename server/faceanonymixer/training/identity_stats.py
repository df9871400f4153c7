"""Fitting the statistics of real faces (``models.identity_stats``): the centre and the principal
axes of real identities in a recognizer's embedding space."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from faceanonymixer.faces.alignment import FaceAligner
from faceanonymixer.faces.embedding import embed_images
from faceanonymixer.models.base import Recognizer
from faceanonymixer.models.identity_stats import IdentityBasis
from faceanonymixer.utils.errors import FaceAnonyMixerError


def embed_training_faces(photos: Sequence[Path], recognizer: Recognizer) -> np.ndarray:
    """Embeddings (N, D) of the ``photos`` that align (``datasets.training_photos`` picks them)."""
    items = tqdm([(path.parent.name, path) for path in photos], desc="embedding training faces", unit="photo")
    faces = embed_images(items, aligner=FaceAligner(), recognizer=recognizer)
    if not faces.labels:
        raise FaceAnonyMixerError("no face could be aligned in the training photos")
    return np.asarray(faces.embeddings)


def identity_mean(embeddings: np.ndarray) -> torch.Tensor:
    """Mean embedding (float32, (D,))."""
    return torch.from_numpy(embeddings.mean(axis=0)).float()


def identity_basis(embeddings: np.ndarray) -> IdentityBasis:
    """Principal axes of ``embeddings`` (N, D) around their mean."""
    if len(embeddings) <= embeddings.shape[1]:
        raise FaceAnonyMixerError(
            f"the axes need more photos than embedding dimensions ({embeddings.shape[1]}), "
            f"got {len(embeddings)}"
        )
    variances, axes = np.linalg.eigh(np.cov(embeddings.astype(np.float64), rowvar=False))
    order = np.argsort(variances)[::-1]
    return IdentityBasis(
        torch.from_numpy(axes[:, order]).float(), torch.from_numpy(variances[order].clip(min=0)).float()
    )
