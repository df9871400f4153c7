"""The centre of real faces in a recognizer's embedding space, committed with the weights.

The engine measures anonymity and builds key-derived target identities around this centre:
raw dlib descriptors share a large common component, so cosines and projections only mean
something about *identity* once it is removed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from faceanonymixer.alignment import FaceAligner
from faceanonymixer.datasets import list_identity_images
from faceanonymixer.embedding import embed_images
from faceanonymixer.errors import FaceAnonyMixerError
from faceanonymixer.models.base import Recognizer
from faceanonymixer.weights import check_sha256, file_sha256


def measure_identity_mean(root: Path, recognizer: Recognizer, *, limit: int) -> torch.Tensor:
    """Mean embedding of up to ``limit`` aligned photos under ``root`` (float32, (D,))."""
    items = tqdm(list_identity_images(root)[:limit], desc="embedding training faces", unit="photo")
    faces = embed_images(items, aligner=FaceAligner(), recognizer=recognizer)
    if not faces.labels:
        raise FaceAnonyMixerError(f"no face could be aligned under {root}")
    return torch.from_numpy(faces.embeddings.mean(axis=0)).float()


def save_identity_mean(mean: torch.Tensor, path: Path) -> str:
    np.save(path, mean.numpy().astype(np.float32))
    return file_sha256(path)


def load_identity_mean(path: Path, *, sha256: str | None = None) -> torch.Tensor:
    check_sha256(path, sha256)
    return torch.from_numpy(np.load(path, allow_pickle=False)).float()
