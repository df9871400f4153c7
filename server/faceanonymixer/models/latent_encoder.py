"""A small CNN that maps an aligned face (generator geometry) to the generator's Gaussian code z."""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from torch import nn

from faceanonymixer.models.weights import check_sha256
from faceanonymixer.utils.errors import ModelFormatError
from faceanonymixer.utils.files import file_sha256

__all__ = ["LatentEncoder", "load_latent_encoder", "save_latent_encoder"]


class LatentEncoder(nn.Module):
    """RGB (N, 3, S, S) in [-1, 1], S = 64 -> latent (N, rows, width)."""

    def __init__(self, rows: int = 1, width: int = 100, image_size: int = 64) -> None:
        super().__init__()
        self.rows, self.width, self.image_size = rows, width, image_size
        layers: list[nn.Module] = []
        channels, size = 3, image_size
        for out_channels in (32, 64, 128, 256):
            layers += [nn.Conv2d(channels, out_channels, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
            channels, size = out_channels, size // 2
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels * size * size, rows * width)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(image).flatten(1)).reshape(-1, self.rows, self.width)


def save_latent_encoder(encoder: LatentEncoder, path: str | Path) -> str:
    """Write the weights (with their shape) and return the file's SHA-256."""
    config = {"rows": encoder.rows, "width": encoder.width, "image_size": encoder.image_size}
    torch.save({"config": config, "state_dict": encoder.state_dict()}, path)
    return file_sha256(path)


def load_latent_encoder(path: str | Path, *, sha256: str | None = None) -> LatentEncoder:
    """Load weights written by :func:`save_latent_encoder`, checking the SHA-256 when given."""
    check_sha256(path, sha256)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        encoder = LatentEncoder(**checkpoint["config"])
        encoder.load_state_dict(checkpoint["state_dict"], strict=True)
    except (KeyError, TypeError, RuntimeError, EOFError, OSError, pickle.UnpicklingError) as error:
        raise ModelFormatError(f"{path}: not a latent-encoder checkpoint ({error})") from error
    return encoder.eval().requires_grad_(False)
