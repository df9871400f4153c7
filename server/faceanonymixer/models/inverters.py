"""Encoders that invert aligned faces into a generator's latent space, looked up by name.

An inverter maps the generator-aligned crops (N, 3, S, S) in [-1, 1], S = the generator's
``image_size``, to latents (N, rows, width) of the generator's layout: the engine's starting
point, refined afterwards where the profile has ``inversion_steps``. Three exist:

``digiface-dcgan-encoder``
    the project's own encoder (``models train-encoder``) predicts the DigiFace DCGAN's Gaussian
    code z, which the generator's ``mapping`` turns into its latent (the ``embedded-digiface``
    profile's; named ``embedded-encoder`` until 2026-12-07).
``lfw-dcgan-encoder``
    the same kind of encoder, trained with the DCGAN fine-tuned on real faces
    (``models train-generator``), for that generator.
``e4e-ffhq``
    encoder4editing predicts StyleGAN2's W+ directly from a 256-pixel crop (the published
    FaceAnonyMixer inversion), from the model zoo's ``e4e_ffhq_encode.pt``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from faceanonymixer.models.generator_base import Generator
from faceanonymixer.utils.registry import Registry


def _resized(crops: torch.Tensor, size: int) -> torch.Tensor:
    if crops.shape[-1] == size:
        return crops
    return F.interpolate(crops, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


class MappedCodeInverter(nn.Module):
    """An encoder that predicts the generator's input code, mapped by the generator."""

    def __init__(self, encoder: nn.Module, generator: Generator, image_size: int) -> None:
        super().__init__()
        self.encoder, self.generator, self.image_size = encoder, generator, image_size

    def code(self, crops: torch.Tensor) -> torch.Tensor:
        """The generator's input codes (N, z_dim) for crops in [-1, 1]."""
        return self.encoder(_resized(crops, self.image_size)).flatten(1)

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        return self.generator.mapping(self.code(crops))


class WPlusInverter(nn.Module):
    """An encoder that predicts the generator's latent rows (W+) itself."""

    def __init__(self, encoder: nn.Module, image_size: int) -> None:
        super().__init__()
        self.encoder, self.image_size = encoder, image_size

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        return self.encoder(_resized(crops, self.image_size))


InverterFactory = Callable[[Generator], nn.Module]


def _committed_encoder(name: str) -> InverterFactory:
    def factory(generator: Generator) -> nn.Module:
        from faceanonymixer.models.latent_encoder import load_latent_encoder
        from faceanonymixer.models.weights import weights_entry

        entry = weights_entry(name)
        encoder = load_latent_encoder(entry.path, sha256=entry.sha256)
        return MappedCodeInverter(encoder, generator, encoder.image_size)

    return factory


def _e4e_ffhq(generator: Generator) -> nn.Module:
    from faceanonymixer.models.e4e import load_e4e
    from faceanonymixer.models.zoo import model_path

    encoder = load_e4e(model_path("e4e-ffhq"))
    return WPlusInverter(encoder, encoder.image_size)


INVERTERS: Registry[InverterFactory] = Registry(
    "inverter",
    {
        "digiface-dcgan-encoder": _committed_encoder("digiface-dcgan-encoder"),
        "lfw-dcgan-encoder": _committed_encoder("lfw-dcgan-encoder"),
        "e4e-ffhq": _e4e_ffhq,
    },
)


def load_inverter(name: str, generator: Generator, *, device: str | torch.device = "cpu") -> nn.Module:
    """Build the named inverter for ``generator``, frozen and in eval mode, on ``device``."""
    return INVERTERS.factory(name)(generator).to(device).eval().requires_grad_(False)
