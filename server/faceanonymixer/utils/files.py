"""Result folders and files that readers never see half-written."""

from __future__ import annotations

import os
import secrets
from datetime import datetime
from pathlib import Path

from faceanonymixer.utils.errors import InvalidRequestError


def prepare_out_dir(out: Path | None, *, default_prefix: str) -> Path:
    """``out``, or a new ``<default_prefix>-<time>`` folder here; never an existing non-empty one,
    so that a run never mixes its files with an earlier run's."""
    if out is None:
        out = Path.cwd() / f"{default_prefix}-{datetime.now():%Y%m%d-%H%M%S}"
    if out.exists() and not out.is_dir():
        raise InvalidRequestError(f"{out} exists and is not a folder; choose another --out", field="out")
    if out.is_dir() and any(out.iterdir()):
        raise InvalidRequestError(
            f"{out} is not empty; nothing is overwritten: choose another --out", field="out"
        )
    out.mkdir(parents=True, exist_ok=True)
    return out


def write_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to a new temporary file beside ``path``, flush it to disk, then rename it into
    place (atomic on POSIX and Windows); on any error the temporary file is removed."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        with temporary.open("xb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        temporary.replace(path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path
