"""The face generators by name: ``load_generator("lfw-dcgan")``.

The interface and the latent layout are in :mod:`faceanonymixer.models.generator_base`; each
generator's adapter sits beside its network (``dcgan``, ``stylegan2``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from faceanonymixer.models.dcgan import DCGANGenerator, load_digiface_dcgan
from faceanonymixer.models.generator_base import Generator
from faceanonymixer.utils.registry import Registry

GeneratorFactory = Callable[[], Generator]


def _stylegan2_ffhq() -> Generator:
    # imported here: StyleGAN2 and the model zoo load only for the ffhq profile
    from faceanonymixer.models.stylegan2 import StyleGAN2FaceGenerator, load_stylegan2
    from faceanonymixer.models.zoo import model_path

    return StyleGAN2FaceGenerator(load_stylegan2(model_path("stylegan2-ffhq")))


def _lfw_dcgan() -> Generator:
    # the DigiFace DCGAN fine-tuned on lfw_train (``models train-generator``), committed with the code
    from faceanonymixer.models.weights import weights_entry

    entry = weights_entry("lfw-dcgan")
    # The key's face enters the centre cells 0.7 and the border cells 0.2 (against 0.5 everywhere):
    # with a uniform blend, everyone sharing one key also shared its hair and outline, which kept
    # their protected faces alike to FaceNet (docs/decisions/2026-12-05-the-keys-face-in-the-centre-cells.md).
    return DCGANGenerator(
        load_digiface_dcgan(entry.path, sha256=entry.sha256), key_blend=0.2, centre_key_blend=0.7
    )


GENERATORS: Registry[GeneratorFactory] = Registry(
    "generator",
    {
        "digiface-dcgan": lambda: DCGANGenerator(load_digiface_dcgan()),
        "lfw-dcgan": _lfw_dcgan,
        "stylegan2-ffhq": _stylegan2_ffhq,
    },
)


def load_generator(name: str, *, device: str | torch.device = "cpu") -> Generator:
    """Build the named generator, frozen and in eval mode."""
    return GENERATORS.factory(name)().to(device).eval().requires_grad_(False)
