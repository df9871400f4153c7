"""Weights the project trains itself, committed with their SHA-256 in ``manifest.json``."""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from faceanonymixer.utils.errors import ModelFormatError
from faceanonymixer.utils.files import file_sha256, write_atomic

WEIGHTS_DIR = Path(__file__).parent
MANIFEST = WEIGHTS_DIR / "manifest.json"


@dataclass(frozen=True)
class CommittedWeights:
    name: str
    file: str
    sha256: str
    #: the command that reproduces the file
    command: str
    #: what it was trained on and the terms that come with that data ("" where not recorded)
    data: str = ""
    terms: str = ""

    @property
    def path(self) -> Path:
        return WEIGHTS_DIR / self.file


def check_sha256(path: str | Path, expected: str | None) -> None:
    """Raise :class:`ModelFormatError` unless the file's SHA-256 is ``expected`` (None: no check)."""
    if expected is not None and (actual := file_sha256(path)) != expected:
        raise ModelFormatError(f"{path}: SHA-256 is {actual}, expected {expected}")


def save_tagged_arrays(path: Path, format_tag: str, **arrays: np.ndarray) -> str:
    """Write ``arrays`` and ``format_tag`` as one .npz, atomically; returns the SHA-256."""
    buffer = io.BytesIO()
    payload: dict[str, Any] = {"format": np.array(format_tag), **arrays}
    np.savez(buffer, **payload)
    write_atomic(path, buffer.getvalue())
    return file_sha256(path)


def load_tagged_arrays(
    path: Path, format_tag: str, what: str, *, sha256: str | None = None
) -> dict[str, np.ndarray]:
    """The arrays of an .npz written by :func:`save_tagged_arrays` with ``format_tag``; anything
    else (another tag, a damaged or foreign file) is a :class:`ModelFormatError` naming ``what``."""
    return load_tagged_arrays_of(path, (format_tag,), what, sha256=sha256)[1]


def load_tagged_arrays_of(
    path: Path, format_tags: tuple[str, ...], what: str, *, sha256: str | None = None
) -> tuple[str, dict[str, np.ndarray]]:
    """(tag, arrays) of an .npz written with one of ``format_tags`` (a file format's versions or
    kinds); anything else is a :class:`ModelFormatError` naming ``what``."""
    check_sha256(path, sha256)
    try:
        with np.load(path, allow_pickle=False) as data:
            tag = str(data["format"])
            if tag not in format_tags:
                raise ModelFormatError(f"{path}: not {what} ({tag})")
            return tag, {name: data[name] for name in data.files if name != "format"}
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as error:
        if isinstance(error, ModelFormatError):
            raise
        raise ModelFormatError(f"{path}: not {what} ({error})") from error


def committed_weights() -> dict[str, CommittedWeights]:
    entries = json.loads(MANIFEST.read_text()) if MANIFEST.exists() else {}
    return {name: CommittedWeights(name=name, **entry) for name, entry in entries.items()}


def weights_entry(name: str) -> CommittedWeights:
    entry = committed_weights().get(name)
    if entry is None:
        raise ModelFormatError(f"no committed weights named {name!r} in {MANIFEST}")
    return entry


def record_weights(
    name: str, file: str, sha256: str, command: str, *, data: str = "", terms: str = ""
) -> None:
    """Add or replace one manifest entry (atomically); ``data`` and ``terms`` name the training
    data and its terms where they restrict the use of the weights."""
    entries = json.loads(MANIFEST.read_text()) if MANIFEST.exists() else {}
    entries[name] = {"file": file, "sha256": sha256, "command": command}
    entries[name].update({key: value for key, value in (("data", data), ("terms", terms)) if value})
    write_atomic(MANIFEST, (json.dumps(entries, indent=2, sort_keys=True) + "\n").encode())
