"""utils.files: atomic writes leave the old file or the whole new one, never a part or a temporary."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import IO

import pytest

from faceanonymixer.utils import files
from faceanonymixer.utils.files import file_sha256, write_atomic, write_atomic_with


def _names(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


def test_write_atomic_writes_the_bytes_and_nothing_else(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    assert write_atomic(target, b"whole") == target
    assert target.read_bytes() == b"whole"
    assert _names(tmp_path) == ["out.bin"]


def test_an_existing_file_is_replaced_whole(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"an old and much longer content")
    write_atomic_with(target, lambda stream: (stream.write(b"new "), stream.write(b"one")))
    assert target.read_bytes() == b"new one"
    assert _names(tmp_path) == ["out.bin"]


@pytest.mark.parametrize("failure", [OSError("disk full"), KeyboardInterrupt()])
@pytest.mark.parametrize("existing", [None, b"before"])
def test_a_failing_writer_leaves_no_file_and_no_temporary(
    tmp_path: Path, failure: BaseException, existing: bytes | None
) -> None:
    target = tmp_path / "out.bin"
    if existing is not None:
        target.write_bytes(existing)

    def write(stream: IO[bytes]) -> None:
        stream.write(b"half")  # some bytes reach the temporary file first
        raise failure

    with pytest.raises(type(failure)):
        write_atomic_with(target, write)
    assert _names(tmp_path) == ([] if existing is None else ["out.bin"])
    if existing is not None:
        assert target.read_bytes() == existing


def test_a_missing_folder_is_an_error_not_created(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_atomic(tmp_path / "missing" / "out.bin", b"x")
    assert _names(tmp_path) == []


def test_file_sha256_matches_hashlib(tmp_path: Path) -> None:
    data = os.urandom(3 << 20)  # several read blocks
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert file_sha256(path) == file_sha256(str(path)) == hashlib.sha256(data).hexdigest()


def test_cached_file_sha256_hashes_a_file_once_per_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "weights.bin"
    path.write_bytes(b"first")
    hashed: list[str] = []
    real = files.file_sha256
    monkeypatch.setattr(files, "file_sha256", lambda p: hashed.append(str(p)) or real(p))

    assert files.cached_file_sha256(path) == hashlib.sha256(b"first").hexdigest()
    assert files.cached_file_sha256(path) == hashlib.sha256(b"first").hexdigest()
    assert len(hashed) == 1
    files.cached_file_sha256(path, fresh=True)
    assert len(hashed) == 2
    replacement = tmp_path / "new.bin"
    replacement.write_bytes(b"other")
    replacement.replace(path)  # another file under the same name: hashed again
    assert files.cached_file_sha256(path) == hashlib.sha256(b"other").hexdigest()
    assert len(hashed) == 3
    files.remember_sha256(path, "0" * 64)  # as verified while written
    assert files.cached_file_sha256(path) == "0" * 64 and len(hashed) == 3
