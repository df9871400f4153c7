"""The DigiFace-1M DCGAN of ``gan-face-generate`` (64x64 RGB faces from a 100-d z).

Our own module with the package's layer shapes and names (``main.<i>``), so that the package's
``weights.tar`` (a torch zip holding ``netG_state_dict``) loads strictly, without importing the
package (it needs torchvision, which we do not depend on).
"""

from __future__ import annotations

import math
import pickle
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import torch
from torch import nn

from faceanonymixer.models.generator_base import Generator, LatentLayout, LatentRole
from faceanonymixer.models.weights import check_sha256
from faceanonymixer.utils.errors import ModelFormatError
from faceanonymixer.utils.files import file_sha256

Z_DIM = 100
IMAGE_SIZE = 64
_WIDTHS = (512, 256, 128, 64)


class DigiFaceDCGAN(nn.Module):
    """z (N, 100) -> RGB (N, 3, 64, 64) in [-1, 1]; batch norm frozen in eval mode."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = Z_DIM
        for index, width in enumerate(_WIDTHS):
            stride, padding = (1, 0) if index == 0 else (2, 1)
            layers += [
                nn.ConvTranspose2d(channels, width, 4, stride, padding, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(True),
            ]
            channels = width
        layers += [nn.ConvTranspose2d(channels, 3, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.main(z.reshape(z.shape[0], Z_DIM, 1, 1))


def default_weights_path() -> Path:
    spec = find_spec("gan_face_generate")
    if spec is None or not spec.submodule_search_locations:
        raise ModelFormatError(
            "the DigiFace DCGAN weights come with gan-face-generate: "
            "pip install --no-deps gan-face-generate==1.1.1"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "weights.tar"


def load_digiface_dcgan(path: str | Path | None = None, *, sha256: str | None = None) -> DigiFaceDCGAN:
    """The generator with the package's weights (or a checkpoint of the same format at ``path``,
    its SHA-256 checked when given), frozen and in eval mode."""
    path = Path(path) if path is not None else default_weights_path()
    check_sha256(path, sha256)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        state = checkpoint["netG_state_dict"]
    except FileNotFoundError:
        raise
    except (KeyError, TypeError, RuntimeError, EOFError, OSError, pickle.UnpicklingError) as error:
        raise ModelFormatError(f"{path}: not a DCGAN checkpoint with 'netG_state_dict' ({error})") from error
    model = DigiFaceDCGAN()
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ModelFormatError(f"{path}: layer shapes differ from the DigiFace DCGAN ({error})") from error
    return model.eval().requires_grad_(False)


def save_dcgan(model: DigiFaceDCGAN, path: str | Path) -> str:
    """Write ``model`` in the package's checkpoint format (``netG_state_dict``); returns the SHA-256."""
    torch.save({"netG_state_dict": model.state_dict()}, path)
    return file_sha256(path)


#: dlib's five landmarks on DigiFace DCGAN samples: the mean over 56 of 64 seeded samples in which
#: dlib's detector found a face (per-point spread 1.4 px); tests/unit/test_generators.py re-measures it.
DIGIFACE_LANDMARKS = np.array(
    [[45.17, 29.50], [37.31, 29.78], [18.18, 29.13], [25.85, 29.58], [31.05, 45.51]], dtype=np.float64
)


class DCGANGenerator(Generator):
    """A DCGAN of :class:`DigiFaceDCGAN`'s shape (the DigiFace-1M weights or the LFW fine-tune), split
    like StyleGAN2 into mapping and synthesis.

    ``mapping`` is the first ``blocks`` blocks (z -> the 512 x 4 x 4 feature map after batch norm
    and ReLU for one block; the 256 x 8 x 8 one for two); the map's spatial cells (row ``side * y
    + x`` is cell (y, x)) are the latent's rows, regions of the face. ``optimised_cells`` start
    from a blend of the real and the key latents and are optimised; the others stay the real
    face's. By default all are optimised: the 100-d z alone got no closer than about 0.6 to its
    target in 50 steps, the feature map about 0.4, and the loss sees the face inside the real
    chip, which keeps it face-like. The 8 x 8 map (``blocks`` 2) gives the loop more room: screened,
    it kept people further apart for dlib (the loss recognizer) and brought them closer together
    for FaceNet, with fewer faces found (docs/decisions/2026-12-07-where-shared-key-faces-become-alike.md).

    ``key_blend`` is the key's weight in every cell, unless ``centre_key_blend`` is given: then
    the cells of the map's centre half (:func:`centre_cells`; for 4 x 4 :data:`CENTRE_CELLS`:
    eyes, nose, mouth) take that weight and the border cells (forehead, hair, cheeks, chin,
    background) ``key_blend``.
    """

    def __init__(
        self,
        network: DigiFaceDCGAN,
        *,
        blocks: int = 1,
        optimised_cells: tuple[int, ...] | None = None,
        key_blend: float = 0.5,
        centre_key_blend: float | None = None,
    ) -> None:
        super().__init__()
        if blocks not in (1, 2):
            raise ValueError(f"the latent is the feature map after 1 or 2 blocks, not {blocks}")
        self.network = network
        self.blocks = blocks
        side = 4 * 2 ** (blocks - 1)
        cells = side * side
        chosen = range(cells) if optimised_cells is None else optimised_cells
        roles = tuple(LatentRole.OPTIMISED if cell in chosen else LatentRole.REAL for cell in range(cells))
        blend: float | tuple[float, ...] = key_blend
        if centre_key_blend is not None:
            centre = centre_cells(side)
            blend = tuple(centre_key_blend if cell in centre else key_blend for cell in range(cells))
        self.layout = LatentLayout(roles=roles, width=_WIDTHS[blocks - 1], key_blend=blend)
        self.z_dim = Z_DIM
        self.image_size = IMAGE_SIZE
        self.landmark_template = DIGIFACE_LANDMARKS.copy()

    def mapping(self, z: torch.Tensor) -> torch.Tensor:
        features = self.network.main[: 3 * self.blocks](z.reshape(z.shape[0], Z_DIM, 1, 1))
        return features.flatten(2).transpose(1, 2)

    def synthesize(self, latent: torch.Tensor) -> torch.Tensor:
        side = math.isqrt(latent.shape[1])
        features = latent.transpose(1, 2).reshape(latent.shape[0], latent.shape[2], side, side)
        # the synthesis layers only ever saw post-ReLU features
        return self.network.main[3 * self.blocks :](torch.relu(features))


def centre_cells(side: int) -> tuple[int, ...]:
    """The cells of a ``side`` x ``side`` map's centre half (rows and columns side/4 to 3 side/4)."""
    inner = range(side // 4, 3 * side // 4)
    return tuple(side * y + x for y in inner for x in inner)


#: the 2 x 2 centre of the 4 x 4 first feature map
CENTRE_CELLS = centre_cells(4)
