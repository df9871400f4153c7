"""Result folders, files that readers never see half-written, and file digests."""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import IO

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
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one, never a
    part (:func:`write_atomic_with`)."""
    return write_atomic_with(path, lambda stream: stream.write(data))


def write_atomic_with(path: str | Path, write: Callable[[IO[bytes]], object]) -> Path:
    """Call ``write`` on a new temporary file beside ``path``, flush it to disk, then rename it into
    place (atomic on POSIX and Windows) and flush the folder; on any error, an interrupt included,
    the temporary file is removed and ``path`` is left as it was. The folder must exist."""
    path = Path(path)
    # beside the target, so that the rename stays on one file system; the random part keeps two
    # writers of the same file (threads, processes) off each other's temporary file
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        with temporary.open("xb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        temporary.replace(path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)
    return path


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` survive a power cut (POSIX; Windows has no folder handles)."""
    if os.name != "posix":
        return
    # best effort: the file is already whole under its name, and some file systems refuse
    # fsync on a folder
    with contextlib.suppress(OSError):
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes, read in blocks (weights and engines run to gigabytes)."""
    with open(path, "rb") as stream:
        return hashlib.file_digest(stream, "sha256").hexdigest()


#: file state (resolved path, size, modification and change times, inode) -> SHA-256 of its bytes
_DIGESTS: dict[tuple[str, int, int, int, int], str] = {}
_DIGESTS_LOCK = threading.Lock()


def _state(path: Path) -> tuple[str, int, int, int, int]:
    status = path.stat()
    return (str(path.resolve()), status.st_size, status.st_mtime_ns, status.st_ctime_ns, status.st_ino)


def cached_file_sha256(path: str | os.PathLike[str], *, fresh: bool = False) -> str:
    """:func:`file_sha256`, remembered for the file's state: a gigabyte of weights is hashed once a
    process, and a file changed or replaced in any way is hashed again. ``fresh`` hashes anyway
    (and remembers the result)."""
    key = _state(Path(path))
    with _DIGESTS_LOCK:
        known = None if fresh else _DIGESTS.get(key)
    if known is None:
        known = file_sha256(path)
        with _DIGESTS_LOCK:
            _DIGESTS[key] = known
    return known


def remember_sha256(path: str | os.PathLike[str], digest: str) -> None:
    """Record ``digest`` as the SHA-256 of the file as it is now (checked as it was written), so
    that :func:`cached_file_sha256` need not read it again."""
    key = _state(Path(path))
    with _DIGESTS_LOCK:
        _DIGESTS[key] = digest
