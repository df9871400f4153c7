"""Training checkpoints that appear whole or not at all: an interrupted run keeps its last one."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from faceanonymixer.utils.errors import FaceAnonyMixerError
from faceanonymixer.utils.files import write_atomic_with


def save_checkpoint(payload: dict[str, object], path: Path) -> None:
    """``torch.save`` of ``payload`` at ``path`` through one atomic, fsynced write."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic_with(path, lambda stream: torch.save(payload, stream))


def photo_names(photos: Sequence[Path]) -> list[str]:
    """Each photo as ``<set>/<identity>/<image>``: which data set it came from, without the
    machine's own folders (training records and caches name photos so)."""
    return [Path(*path.parts[-3:]).as_posix() for path in photos]


def cached_for_photos(
    cache: Path, photos: Sequence[Path], build: Callable[[], dict[str, Any]]
) -> dict[str, Any]:
    """``build()``'s tensors for ``photos``, cached in ``cache`` (preparing faces takes minutes and
    every continued run needs the same ones); a cache made from other photos is refused rather
    than trained on. The payload's ``"selected"`` names the photos it was made from."""
    names = photo_names(photos)
    if cache.exists():
        payload = torch.load(cache, map_location="cpu", weights_only=True)
        if not isinstance(payload, dict) or payload.get("selected") != names:
            raise FaceAnonyMixerError(f"{cache} holds other training faces; delete it to prepare them again")
        return payload
    payload = {**build(), "selected": names}
    save_checkpoint(payload, cache)
    return payload
