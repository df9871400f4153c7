"""The generator code of an identity: a linear map from the loss recognizer's embedding space to
the generator's input code, fitted on real faces and committed with the weights.

With ``synthetic_identity_weight`` w > 0 part of the key's synthetic face is drawn from the
subject. Where the profile has a fitted map, that part is the code of the subject's key-derived
*target* identity (``identity_target.py``): the synthetic face the optimisation starts from already
leans toward where the loss pulls, so people sharing one key start from faces as different as
their targets, and photos of one person (close targets) from close faces.

The map is the least-squares slope of the generator encoder's codes of real photos on their
centred embeddings. Only the direction of ``slope @ offset`` is kept, at the mean length of those
codes: a real face's code, not an extrapolation far outside the generator's training range.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from faceanonymixer.models.weights import load_tagged_arrays, save_tagged_arrays
from faceanonymixer.utils.errors import ModelFormatError

_FORMAT = "faceanonymixer/identity-code-map/v1"


@dataclass(frozen=True)
class IdentityCodeMap:
    #: (z_dim, embedding_dim) least-squares slope of codes on centred embeddings
    slope: torch.Tensor
    #: mean length of the real photos' codes; every code this map gives has this length
    code_norm: float

    def __post_init__(self) -> None:
        if self.slope.ndim != 2 or not self.code_norm > 0:
            raise ModelFormatError("an identity code map is a 2-D slope and a positive code length")

    @property
    def z_dim(self) -> int:
        return int(self.slope.shape[0])

    @property
    def embedding_dim(self) -> int:
        return int(self.slope.shape[1])

    def code(self, offsets: torch.Tensor) -> torch.Tensor:
        """Generator codes (N, z_dim) for (N, embedding_dim) offsets from the real-face centre."""
        if offsets.ndim != 2 or offsets.shape[1] != self.embedding_dim:
            raise ValueError(f"offsets must be (N, {self.embedding_dim}), not {tuple(offsets.shape)}")
        slope = self.slope.to(device=offsets.device)
        return self.code_norm * F.normalize(offsets.float() @ slope.T, dim=1)


def save_identity_code_map(code_map: IdentityCodeMap, path: Path) -> str:
    """Write atomically (``utils.files.write_atomic``); returns the SHA-256."""
    return save_tagged_arrays(
        path,
        _FORMAT,
        slope=code_map.slope.numpy().astype(np.float32),
        code_norm=np.array(code_map.code_norm, dtype=np.float64),
    )


def load_identity_code_map(path: Path, *, sha256: str | None = None) -> IdentityCodeMap:
    arrays = load_tagged_arrays(path, _FORMAT, "an identity code map", sha256=sha256)
    try:
        return IdentityCodeMap(torch.from_numpy(arrays["slope"]).float(), float(arrays["code_norm"]))
    except KeyError as error:
        raise ModelFormatError(f"{path}: not an identity code map (no {error})") from error
