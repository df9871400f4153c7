"""Fitting the identity-to-code map (``models.identity_code``): the least-squares slope of the
generator encoder's codes of real photos on their centred embeddings."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from faceanonymixer.engine.protection import PreparedFace, ProtectionEngine
from faceanonymixer.faces.embedding import chips_to_tensor
from faceanonymixer.models.identity_code import IdentityCodeMap
from faceanonymixer.models.inverters import MappedCodeInverter
from faceanonymixer.training.encoder import TrainingFaces
from faceanonymixer.utils.errors import FaceAnonyMixerError


def fit_identity_code_map(offsets: np.ndarray, codes: np.ndarray) -> IdentityCodeMap:
    """Least squares (with an intercept, which the map then drops) of ``codes`` (N, z_dim) on
    ``offsets`` (N, embedding_dim), the centred embeddings of the same photos. A small ridge
    (alpha 1e-3): dlib embeddings barely vary along some directions, and plain least squares
    multiplies their noise by thousands."""
    from sklearn.linear_model import Ridge  # the [eval] extra

    if len(offsets) != len(codes) or len(offsets) <= offsets.shape[1]:
        raise FaceAnonyMixerError(
            f"fitting needs more photos than embedding dimensions ({offsets.shape[1]}), got {len(offsets)}"
        )
    regression = Ridge(alpha=1e-3).fit(offsets.astype(np.float64), codes.astype(np.float64))
    norm = float(np.linalg.norm(codes, axis=1).mean())
    return IdentityCodeMap(torch.from_numpy(regression.coef_).float(), norm)


def prepared_training_faces(
    engine: ProtectionEngine, photos: Sequence[Path], description: str
) -> Iterator[tuple[Path, PreparedFace, torch.Tensor, torch.Tensor]]:
    """(photo, its prepared face, recognizer chip [0, 255], generator crop [-1, 1]) for each photo
    with exactly one face, with a progress bar; raises when no photo had one."""
    found = 0
    for path in tqdm(photos, desc=description, unit="photo", disable=None):
        try:
            face = engine.prepare(path)
        except FaceAnonyMixerError:
            continue
        found += 1
        chip = chips_to_tensor([face.chip.image], engine.device)
        crop = chips_to_tensor([face.crop.image], engine.device) / 127.5 - 1.0
        yield path, face, chip, crop
    if not found:
        raise FaceAnonyMixerError("no face could be aligned in the training photos")


@dataclass(frozen=True)
class IdentityFaces:
    """Real training faces as the protection engine prepares them: each generator crop with its
    recognizer chip, the map between the two and the photo's own identity."""

    #: (N, 3, S, S) generator crops in [-1, 1]
    pixels: torch.Tensor
    #: (N, C, C, 3) uint8 recognizer chips of the same photos
    chips: torch.Tensor
    #: (N, C, C, 2) float16 chip-to-crop grids (``PreparedFace.grid``)
    grids: torch.Tensor
    #: (N, dim) the photos' own identities (``ProtectionEngine.original_embeddings``)
    originals: torch.Tensor
    #: the photo each face was cut from (photos without exactly one face are left out)
    paths: list[Path]

    def crops(self) -> TrainingFaces:
        return TrainingFaces(self.pixels, self.paths)


def prepare_identity_faces(
    engine: ProtectionEngine, photos: Sequence[Path], description: str = "aligning and embedding faces"
) -> IdentityFaces:
    """The engine's view of every photo with one face: crop, chip, grid and own identity (the
    generator's identity term and the identity-code network train on it)."""
    pixels, chips, grids, originals, used = [], [], [], [], []
    with torch.no_grad():
        for path, face, chip, crop in prepared_training_faces(engine, photos, description):
            pixels.append(crop[0].cpu())
            chips.append(torch.from_numpy(face.chip.image.copy()))
            grids.append(face.grid.half())
            originals.append(engine.original_embeddings(chip, engine.config)[0].cpu())
            used.append(path)
    return IdentityFaces(
        torch.stack(pixels), torch.stack(chips), torch.stack(grids), torch.stack(originals), used
    )


def measure_code_pairs(
    engine: ProtectionEngine, photos: Sequence[Path]
) -> tuple[np.ndarray, np.ndarray, list[Path]]:
    """(centred embeddings, encoder codes, photos used) over ``photos`` with the engine's models;
    photos without exactly one face are skipped."""
    inverter = engine.inverter
    if not isinstance(inverter, MappedCodeInverter):
        raise FaceAnonyMixerError(
            f"profile {engine.profile.profile_id!r}: its encoder predicts no generator code"
        )
    offsets, codes, used = [], [], []
    with torch.no_grad():
        for path, _, chip, crop in prepared_training_faces(engine, photos, "embedding and encoding faces"):
            offsets.append((engine.passes.embed(chip) - engine.identities.centre)[0].cpu().numpy())
            codes.append(inverter.code(crop)[0].cpu().numpy())
            used.append(path)
    return np.stack(offsets), np.stack(codes), used
