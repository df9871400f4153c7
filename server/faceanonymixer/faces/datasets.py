"""Folder-per-identity face datasets: ``<root>/<identity>/<image>``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".pgm", ".ppm", ".gif", ".bmp", ".tif", ".tiff", ".webp"}
)


def list_identity_images(
    root: str | Path, *, max_identities: int | None = None, max_images: int | None = None
) -> list[tuple[str, Path]]:
    """(identity, path) pairs in a stable order: identities and files sorted by name."""
    root = Path(root)
    if not root.is_dir():
        raise NotADirectoryError(f"{root} is not a folder of <identity>/<image> files")
    identities = sorted(p for p in root.iterdir() if p.is_dir())[:max_identities]
    pairs: list[tuple[str, Path]] = []
    for folder in identities:
        images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        pairs.extend((folder.name, path) for path in images[:max_images])
    return pairs


def training_photos(roots: Sequence[str | Path], limit: int) -> list[Path]:
    """Up to ``limit`` photos from the ``<identity>/<image>`` folders ``roots``, an equal share from
    each, spread evenly over each folder's sorted listing.

    Evenly spread rather than the first ones: folders sorted by name group photos by what the
    name says (UTKFace's ``age_gender_race_date``), and the first thousand would all be young; an
    equal share per folder keeps a small set (LFW) from being drowned by a large one.
    """
    if not roots:
        raise ValueError("no training folders given")
    share = max(1, limit // len(roots))
    chosen: list[Path] = []
    for root in roots:
        paths = [path for _, path in list_identity_images(root)]
        if len(paths) <= share:
            chosen.extend(paths)
            continue
        step = len(paths) / share
        chosen.extend(paths[int(index * step)] for index in range(share))
    return chosen
