"""What the TensorRT builder, runtime and command share: typed errors, the precision choices, the
lazy import and the GPU's identity. Light to import: no torch, no tensorrt at module level.

TensorRT and a CUDA GPU are optional: nothing here imports ``tensorrt`` (or touches CUDA) until a
function that needs it is called, and each absence becomes one typed, one-line error.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from faceanonymixer.utils.errors import FaceAnonyMixerError

#: the oldest TensorRT whose Python API this code uses (name-based I/O tensors, execute_async_v3)
MIN_TENSORRT_MAJOR = 10

#: the CLI's "unavailable" code (as for a server that is not serving): this machine cannot do it
#: (no TensorRT, no CUDA GPU); the input is fine
EXIT_UNAVAILABLE = 6


class Precision(StrEnum):
    """What an engine may compute in. ``auto`` is fp16 where TensorRT has the FP16 builder flag."""

    AUTO = "auto"
    FP16 = "fp16"
    BF16 = "bf16"
    FP32 = "fp32"


class TensorRTError(FaceAnonyMixerError):
    """A TensorRT engine could not be built, stored, loaded or run."""

    exit_code = 1


class TensorRTUnavailableError(TensorRTError):
    """TensorRT (10 or newer) is not installed, or there is no CUDA GPU to build or run on."""

    exit_code = EXIT_UNAVAILABLE


class TensorRTInputError(TensorRTError, ValueError):
    """Bad input to a build: a missing or malformed manifest, a changed ONNX file, batch sizes out of
    order, a model name the manifest does not list."""

    exit_code = 2


@dataclass(frozen=True)
class GpuIdentity:
    """What a TensorRT engine is specific to on the hardware side (engines do not move between GPU
    architectures; the name separates SKUs of one architecture, whose tactics can differ)."""

    name: str
    compute_capability: tuple[int, int]

    @property
    def sm(self) -> str:
        return f"sm{self.compute_capability[0]}{self.compute_capability[1]}"


def require_tensorrt() -> Any:
    """The ``tensorrt`` module, or :class:`TensorRTUnavailableError` saying how to get it."""
    try:
        # importlib rather than ``import tensorrt``: the module is untyped and optional, and a
        # module object keeps mypy quiet without a per-module override
        trt = importlib.import_module("tensorrt")
    except (ImportError, OSError) as exc:  # OSError: the wheel is there but libnvinfer is not
        raise TensorRTUnavailableError(
            f"TensorRT is not installed ({exc}): pip install 'tensorrt>={MIN_TENSORRT_MAJOR}' "
            "on a machine with an NVIDIA GPU"
        ) from None
    version = str(getattr(trt, "__version__", "0"))
    try:
        major = int(version.split(".")[0])
    except ValueError:
        major = 0
    if major < MIN_TENSORRT_MAJOR:
        raise TensorRTUnavailableError(
            f"TensorRT {version} is too old: {MIN_TENSORRT_MAJOR} or newer is needed "
            "(name-based I/O tensors and execute_async_v3)"
        )
    return trt


def require_cuda_gpu() -> GpuIdentity:
    """The current CUDA device's identity, or :class:`TensorRTUnavailableError` without one."""
    import torch

    if not torch.cuda.is_available():
        raise TensorRTUnavailableError(
            "no CUDA GPU: TensorRT engines are built and run on an NVIDIA GPU "
            f"(torch {torch.__version__} sees none)"
        )
    device = torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(device)
    return GpuIdentity(name=torch.cuda.get_device_name(device), compute_capability=(major, minor))
