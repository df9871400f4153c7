"""Folder-per-identity face datasets: ``<root>/<identity>/<image>``."""

from __future__ import annotations

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
