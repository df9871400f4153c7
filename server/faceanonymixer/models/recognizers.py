"""Face recognizers as differentiable PyTorch modules, looked up by name.

A recognizer maps float32 (N, 3, H, W) RGB images in [0, 255] (H, W = its ``input_size``) to
(N, D) embeddings, with gradients to the input; its ``match_threshold`` is the Euclidean
distance below which two embeddings are called the same person. ``dlib`` (the embedded profile)
and ``arcface-ir-se50`` (the ffhq profile, weights from the model zoo).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from faceanonymixer.models.base import Recognizer
from faceanonymixer.models.dlib_face_resnet import load_dlib_face_resnet
from faceanonymixer.utils.devices import default_device
from faceanonymixer.utils.registry import Registry

__all__ = ["RECOGNIZERS", "Recognizer", "load_recognizer"]

RecognizerFactory = Callable[[], Recognizer]


def _arcface_ir_se50() -> Recognizer:
    from faceanonymixer.models.ir_se50 import load_arcface_recognizer
    from faceanonymixer.models.zoo import model_path

    return load_arcface_recognizer(model_path("arcface-ir-se50"))


RECOGNIZERS: Registry[RecognizerFactory] = Registry(
    "recognizer", {"dlib": load_dlib_face_resnet, "arcface-ir-se50": _arcface_ir_se50}
)


def load_recognizer(name: str = "dlib", *, device: str | torch.device | None = None) -> Recognizer:
    """Build the named recognizer, frozen and in eval mode, on ``device`` (CUDA when present)."""
    return RECOGNIZERS.factory(name)().to(device if device is not None else default_device())
