"""Aligned face chips to identity embeddings, in batches."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from faceanonymixer.models.base import Recognizer
from faceanonymixer.utils.errors import FaceAnonyMixerError

if TYPE_CHECKING:
    from faceanonymixer.faces.alignment import FaceAligner


def chips_to_tensor(chips: Sequence[np.ndarray], device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 HxWx3 RGB chips -> float32 (N, 3, H, W) in [0, 255], the recognizers' input."""
    batch = np.stack(chips).astype(np.float32)
    return torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous().to(device)


@torch.no_grad()
def embed_chips(recognizer: Recognizer, chips: Sequence[np.ndarray], *, batch_size: int = 32) -> np.ndarray:
    device = next(recognizer.parameters()).device
    parts = [
        recognizer(chips_to_tensor(chips[start : start + batch_size], device)).cpu().numpy()
        for start in range(0, len(chips), batch_size)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


@dataclass
class EmbeddedFaces:
    embeddings: np.ndarray
    labels: list[str]
    paths: list[Path]
    #: images that could not be aligned, with the one-line reason
    failures: list[tuple[Path, str]] = field(default_factory=list)


def embed_images(
    items: Iterable[tuple[str, Path]],
    *,
    aligner: FaceAligner,
    recognizer: Recognizer,
    batch_size: int = 32,
) -> EmbeddedFaces:
    """Align each (label, path) image at the recognizer's input size and embed it."""
    size = recognizer.input_size[0]
    chips, labels, paths, failures = [], [], [], []
    for label, path in items:
        try:
            chips.append(aligner.align(path, size=size).image)
        except FaceAnonyMixerError as exc:
            failures.append((path, str(exc)))
            continue
        labels.append(label)
        paths.append(path)
    return EmbeddedFaces(embed_chips(recognizer, chips, batch_size=batch_size), labels, paths, failures)
