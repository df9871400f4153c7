"""Which weights an exported graph came from."""

from __future__ import annotations

import hashlib

import torch
from torch import nn


def module_fingerprint(module: nn.Module) -> str:
    """SHA-256 over the module's state (names and raw bytes): which weights a graph came from."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
