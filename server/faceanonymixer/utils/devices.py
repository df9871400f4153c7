"""Where tensors go by default."""

from __future__ import annotations

import torch


def default_device() -> torch.device:
    """CUDA when this torch build and machine have it, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
