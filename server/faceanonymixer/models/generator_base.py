"""Face generators behind one interface, with a declared latent layout.

A :class:`LatentLayout` says, row by row, where each part of the mixed latent comes from:

* ``KEY``: the key's synthetic latent, frozen (identity-carrying rows in the published method);
* ``OPTIMISED``: optimised by the engine, initialised from the real latent, or from a blend of the
  real and the key latents when ``key_blend`` > 0 (one weight for every row, or one per row);
* ``REAL``: the real face's latent, frozen (attributes: pose, lighting, texture).

StyleGAN2's W+ (18 x 512: rows 0-2 KEY, 3-7 OPTIMISED, 8-17 REAL) and the embedded DCGAN's first
feature map (16 cells x 512, OPTIMISED from a real/key blend: a DCGAN has no layer-wise
disentanglement to mix by) are two instances of the same description, so the engine never
special-cases a profile.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch import nn


class LatentRole(enum.Enum):
    KEY = "key"
    OPTIMISED = "optimised"
    REAL = "real"


@dataclass(frozen=True)
class LatentLayout:
    """Roles of the rows of a (rows, width) latent; see the module docstring."""

    roles: tuple[LatentRole, ...]
    width: int
    #: weight of the key latent in the initial value of OPTIMISED rows (0: the real latent, as
    #: published): one for every row, or a tuple with one per row
    key_blend: float | tuple[float, ...] = 0.0

    def __post_init__(self) -> None:
        if not self.roles or self.width <= 0:
            raise ValueError("a latent layout needs at least one row and a positive width")
        weights = self.key_blend if isinstance(self.key_blend, tuple) else (self.key_blend,)
        if isinstance(self.key_blend, tuple) and len(weights) != len(self.roles):
            raise ValueError(f"key_blend has {len(weights)} weights for {len(self.roles)} rows")
        if not all(0.0 <= weight <= 1.0 for weight in weights):
            raise ValueError(f"key_blend must be between 0 and 1, not {self.key_blend}")

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.roles), self.width)

    def rows(self, role: LatentRole) -> list[int]:
        return [index for index, row_role in enumerate(self.roles) if row_role is role]

    def key_blend_of(self, rows: Sequence[int]) -> tuple[float, ...]:
        """The key's weight in the initial value of each of ``rows``."""
        if isinstance(self.key_blend, tuple):
            return tuple(self.key_blend[row] for row in rows)
        return (self.key_blend,) * len(rows)

    @classmethod
    def from_counts(
        cls, width: int, *, key: int, optimised: int, real: int, key_blend: float = 0.0
    ) -> LatentLayout:
        roles = (LatentRole.KEY,) * key + (LatentRole.OPTIMISED,) * optimised + (LatentRole.REAL,) * real
        return cls(roles=roles, width=width, key_blend=key_blend)


#: the published FaceAnonyMixer mixing of StyleGAN2's W+
STYLEGAN2_WPLUS_LAYOUT = LatentLayout.from_counts(512, key=3, optimised=5, real=10)


class Generator(nn.Module):
    """A pretrained face generator.

    ``mapping`` turns (N, z_dim) Gaussian codes into (N, rows, width) latents of ``layout``;
    ``synthesize`` turns latents into RGB images (N, 3, size, size) in [-1, 1], differentiably.
    ``landmark_template`` gives dlib's five landmarks (outer/inner right eye, outer/inner left eye,
    nose base; x then y) in output pixels: where real photos must be aligned to for the encoder,
    and how an output is pasted back into a photo. None for a generator trained on a fixed crop
    recipe instead (StyleGAN2 on FFHQ: its profile aligns with that recipe).
    """

    layout: LatentLayout
    z_dim: int
    image_size: int
    landmark_template: npt.NDArray[np.float64] | None

    def require_landmark_template(self) -> npt.NDArray[np.float64]:
        if self.landmark_template is None:
            raise ValueError(f"{type(self).__name__} has no landmark template: align with its crop recipe")
        return self.landmark_template

    def mapping(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def synthesize(self, latent: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def blend(self, real: torch.Tensor, key: torch.Tensor, weight: float | Sequence[float]) -> torch.Tensor:
        """(N, rows, width) latent rows between the real face's (weight 0) and the key's (weight 1):
        one weight for every row or one per row."""
        if isinstance(weight, float | int):
            return torch.lerp(real, key, float(weight))
        weights = torch.tensor(weight, dtype=real.dtype, device=real.device)
        if weights.shape != (real.shape[1],):
            raise ValueError(f"{len(weights)} blend weights for {real.shape[1]} rows")
        return torch.lerp(real, key, weights[:, None])
