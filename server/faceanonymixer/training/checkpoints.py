"""Training checkpoints that appear whole or not at all: an interrupted run keeps its last one."""

from __future__ import annotations

from pathlib import Path

import torch

from faceanonymixer.utils.files import write_atomic_with


def save_checkpoint(payload: dict[str, object], path: Path) -> None:
    """``torch.save`` of ``payload`` at ``path`` through one atomic, fsynced write."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic_with(path, lambda stream: torch.save(payload, stream))
