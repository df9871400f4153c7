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
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from faceanonymixer.models.dcgan import IMAGE_SIZE, Z_DIM, DigiFaceDCGAN, load_digiface_dcgan


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


#: dlib's five landmarks on DigiFace DCGAN samples: the mean over 56 of 64 seeded samples in which
#: dlib's detector found a face (per-point spread 1.4 px); tests/test_generators.py re-measures it.
DIGIFACE_LANDMARKS = np.array(
    [[45.17, 29.50], [37.31, 29.78], [18.18, 29.13], [25.85, 29.58], [31.05, 45.51]], dtype=np.float64
)


class DigiFaceGenerator(Generator):
    """The DigiFace-1M DCGAN (64 px), split like StyleGAN2 into mapping and synthesis.

    ``mapping`` is the first block (z -> 512 x 4 x 4 feature map after batch norm and ReLU);
    its 16 spatial cells (row 4y + x is cell (y, x)) are the latent's rows, coarse regions of the
    face. ``optimised_cells`` start from a blend of the real and the key latents and are
    optimised; the others stay the real face's. By default all 16 are optimised: the 100-d z
    alone got no closer than about 0.6 to its target in 50 steps, the feature map about 0.4, and
    the loss sees the face inside the real chip, which keeps it face-like.

    ``key_blend`` is the key's weight in every cell, unless ``centre_key_blend`` is given: then
    the four centre cells (:data:`CENTRE_CELLS`: eyes, nose, mouth) take that weight and the
    twelve border cells (forehead, hair, cheeks, chin, background) ``key_blend``.
    """

    def __init__(
        self,
        network: DigiFaceDCGAN,
        *,
        optimised_cells: tuple[int, ...] = tuple(range(16)),
        key_blend: float = 0.5,
        centre_key_blend: float | None = None,
    ) -> None:
        super().__init__()
        self.network = network
        roles = tuple(
            LatentRole.OPTIMISED if cell in optimised_cells else LatentRole.REAL for cell in range(_CELLS)
        )
        blend: float | tuple[float, ...] = key_blend
        if centre_key_blend is not None:
            blend = tuple(centre_key_blend if cell in CENTRE_CELLS else key_blend for cell in range(_CELLS))
        self.layout = LatentLayout(roles=roles, width=_FIRST_WIDTH, key_blend=blend)
        self.z_dim = Z_DIM
        self.image_size = IMAGE_SIZE
        self.landmark_template = DIGIFACE_LANDMARKS.copy()

    def mapping(self, z: torch.Tensor) -> torch.Tensor:
        features = self.network.main[:3](z.reshape(z.shape[0], Z_DIM, 1, 1))
        return features.flatten(2).transpose(1, 2)

    def synthesize(self, latent: torch.Tensor) -> torch.Tensor:
        side = math.isqrt(latent.shape[1])
        features = latent.transpose(1, 2).reshape(latent.shape[0], _FIRST_WIDTH, side, side)
        # the synthesis layers only ever saw post-ReLU features
        return self.network.main[3:](torch.relu(features))


_CELLS = 16
_FIRST_WIDTH = 512
#: the 2 x 2 centre of the 4 x 4 first feature map
CENTRE_CELLS = (5, 6, 9, 10)


GeneratorFactory = Callable[[], Generator]


def _stylegan2_ffhq() -> Generator:
    # imported here: the StyleGAN2 module builds on this one's LatentLayout
    from faceanonymixer.model_zoo import model_path
    from faceanonymixer.models.stylegan2 import StyleGAN2FaceGenerator, load_stylegan2

    return StyleGAN2FaceGenerator(load_stylegan2(model_path("stylegan2-ffhq")))


def _lfw_dcgan() -> Generator:
    # the DigiFace DCGAN fine-tuned on lfw_train (``models train-generator``), committed with the code
    from faceanonymixer.weights import weights_entry

    entry = weights_entry("lfw-dcgan")
    # The key's face enters the centre cells 0.7 and the border cells 0.2 (against 0.5 everywhere):
    # with a uniform blend, everyone sharing one key also shared its hair and outline, which kept
    # their protected faces alike to FaceNet (docs/decisions/2026-12-05-the-keys-face-in-the-centre-cells.md).
    return DigiFaceGenerator(
        load_digiface_dcgan(entry.path, sha256=entry.sha256), key_blend=0.2, centre_key_blend=0.7
    )


_REGISTRY: dict[str, GeneratorFactory] = {
    "digiface-dcgan": lambda: DigiFaceGenerator(load_digiface_dcgan()),
    "lfw-dcgan": _lfw_dcgan,
    "stylegan2-ffhq": _stylegan2_ffhq,
}


def register_generator(name: str, factory: GeneratorFactory) -> None:
    _REGISTRY[name] = factory


def available_generators() -> list[str]:
    return sorted(_REGISTRY)


def load_generator(name: str, *, device: str | torch.device = "cpu") -> Generator:
    """Build the named generator, frozen and in eval mode."""
    factory = _REGISTRY.get(name)
    if factory is None:
        raise ValueError(f"unknown generator {name!r}; available: {', '.join(available_generators())}")
    return factory().to(device).eval().requires_grad_(False)
