"""``faceanonymixer protect``: one PNG per input, written only when every input succeeded, and
one-line errors with the table's exit codes; ``write_png_atomic`` leaves nothing partial behind."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import faceanonymixer.engine.protector as protector_module
from faceanonymixer.cli.main import app
from faceanonymixer.engine.profiles import EMBEDDED
from faceanonymixer.engine.protection import ProtectionEngine
from faceanonymixer.faces.imageio import load_image, write_png_atomic

#: tiny steps: one torch thread (the shared fixture in conftest.py)
pytestmark = pytest.mark.usefixtures("one_thread")

runner = CliRunner()
KEY = bytes(range(7, 39))


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "key.bin"
    path.write_bytes(KEY)
    return path


@pytest.fixture
def engines(monkeypatch: pytest.MonkeyPatch, weights: None) -> list[ProtectionEngine]:
    """Every engine the CLI builds is recorded."""
    built: list[ProtectionEngine] = []

    class RecordingEngine(ProtectionEngine):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            built.append(self)

    monkeypatch.setattr(protector_module, "ProtectionEngine", RecordingEngine)
    return built


@pytest.fixture(scope="module")
def photos(faces_root: Path) -> list[Path]:
    return [
        faces_root / "fr_examples" / "kit_harington" / "john2.jpeg",
        faces_root / "fr_examples" / "rose_leslie" / "img2.jpg",
    ]


@pytest.fixture
def faceless(tmp_path: Path) -> Path:
    path = tmp_path / "wall.png"
    Image.new("RGB", (200, 200), (128, 128, 128)).save(path)
    return path


def protect(*args: str | Path) -> Any:
    return runner.invoke(app, ["protect", *(str(arg) for arg in args)])


def assert_one_line_error(result: Any, code: int) -> str:
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.output
    return str(lines[0])


def files_in(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir()) if folder.exists() else []


# ---- success ---------------------------------------------------------------------------------


def test_writes_one_png_per_input_in_input_order(
    engines: list[ProtectionEngine], photos: list[Path], key_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out" / "nested"
    ordered = [photos[1], photos[0]]  # not alphabetical: the order of the arguments counts
    result = protect(*ordered, "--key-file", key_file, "--out", out, "--steps", "2", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["profile"] == "embedded" and report["key_version"] == 1
    assert [item["input"] for item in report["outputs"]] == [str(path) for path in ordered]
    assert [item["output"] for item in report["outputs"]] == [str(out / f"{p.stem}.png") for p in ordered]
    assert files_in(out) == sorted(f"{p.stem}.png" for p in ordered)
    for source in ordered:
        with Image.open(out / f"{source.stem}.png") as written:
            assert written.format == "PNG" and written.mode == "RGB"
            pixels = np.asarray(written)
        original = load_image(source)
        assert pixels.shape == original.shape
        assert not np.array_equal(pixels, original), "the face was not replaced"
    for item in report["outputs"]:
        assert item["target_distance"] > 0 and item["original_distance"] > 0 and item["seconds"] > 0
    # the profile's settings with --steps reached the engine; one engine for the whole call
    assert len(engines) == 1
    assert engines[0].config == EMBEDDED.optimisation.with_overrides(steps=2)


def test_crop_writes_the_square_face_and_plain_output_names_the_files(
    engines: list[ProtectionEngine], photos: list[Path], key_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "faces"
    result = protect(photos[0], "--key-file", key_file, "--out", out, "--steps", "1", "--crop")
    assert result.exit_code == 0, result.output
    target = out / f"{photos[0].stem}.png"
    assert result.stdout.strip().startswith(str(target))
    with Image.open(target) as written:
        assert written.format == "PNG"
        assert written.size == (EMBEDDED.output_size, EMBEDDED.output_size)
    assert files_in(out) == [target.name]


@pytest.mark.parametrize("terminal", [True, False])
def test_progress_is_drawn_on_a_terminal_only(
    engines: list[ProtectionEngine],
    photos: list[Path],
    key_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    terminal: bool,
) -> None:
    # the runner's stderr is never a terminal: stand in for show_progress's isatty()
    monkeypatch.setattr("faceanonymixer.cli.main.show_progress", lambda as_json: terminal and not as_json)
    result = protect(*photos, "--key-file", key_file, "--out", tmp_path, "--steps", "3")
    assert result.exit_code == 0, result.output
    if terminal:  # a bar of the photos as they are aligned, then one of the steps
        assert "align" in result.stderr and "2/2" in result.stderr
        assert "protect" in result.stderr and "3/3" in result.stderr
    else:
        assert result.stderr == ""
    with_json = protect(*photos, "--key-file", key_file, "--out", tmp_path, "--steps", "1", "--json")
    assert with_json.exit_code == 0 and with_json.stderr == ""


def test_show_progress_asks_whether_stderr_is_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    from faceanonymixer.cli import common as cli_common

    class Stream:
        def __init__(self, tty: bool) -> None:
            self.tty = tty

        def isatty(self) -> bool:
            return self.tty

    monkeypatch.setattr(cli_common.sys, "stderr", Stream(True))
    assert cli_common.show_progress(False) and not cli_common.show_progress(True)
    monkeypatch.setattr(cli_common.sys, "stderr", Stream(False))
    assert not cli_common.show_progress(False)


def test_an_existing_output_is_replaced(
    engines: list[ProtectionEngine], photos: list[Path], key_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / f"{photos[0].stem}.png").write_bytes(b"old")
    result = protect(photos[0], "--key-file", key_file, "--out", out, "--steps", "0", "--crop")
    assert result.exit_code == 0, result.output
    with Image.open(out / f"{photos[0].stem}.png") as written:
        assert written.format == "PNG"
    assert files_in(out) == [f"{photos[0].stem}.png"]


# ---- failures leave nothing behind -----------------------------------------------------------


@pytest.mark.parametrize("length", [31, 33, 0])
def test_a_key_file_of_the_wrong_length_exits_4(tmp_path: Path, photos: list[Path], length: int) -> None:
    key = tmp_path / "short.bin"
    key.write_bytes(b"\x02" * length)
    out = tmp_path / "out"
    line = assert_one_line_error(protect(photos[0], "--key-file", key, "--out", out), 4)
    assert "32" in line and str(length) in line
    assert not out.exists()


def test_a_missing_key_file_exits_4(tmp_path: Path, photos: list[Path]) -> None:
    out = tmp_path / "out"
    assert_one_line_error(protect(photos[0], "--key-file", tmp_path / "none.bin", "--out", out), 4)
    assert not out.exists()


def test_a_local_key_bound_to_another_profile_exits_4(
    tmp_path: Path, photos: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from faceanonymixer.keystore import KeyEncryptionKey, KeyStore

    kek = bytes(range(32))
    monkeypatch.setenv("FACEANONYMIXER_KEK", base64.b64encode(kek).decode())
    url = f"sqlite:///{tmp_path / 'keys.db'}"
    with KeyStore.open(url, KeyEncryptionKey(kek)) as store:
        record = store.create_key("default", "alice", profile_id="embedded-digiface", actor="test")
    out = tmp_path / "out"
    arguments = ("--key-id", record.key_id, "--keystore", url, "--out", out)
    # its enrolled faces were protected with other settings: they would silently stop matching
    line = assert_one_line_error(protect(photos[0], *arguments, "--profile", "embedded"), 4)
    assert "embedded-digiface" in line
    assert not out.exists()


@pytest.mark.parametrize(
    ("options", "expected"),
    [(["--runtime", "onnx"], "--onnx-dir"), (["--runtime", "tensorflow"], "torch or onnx")],
)
def test_a_runtime_without_its_graphs_or_unknown_exits_2(
    tmp_path: Path, photos: list[Path], key_file: Path, options: list[str], expected: str
) -> None:
    out = tmp_path / "out"
    line = assert_one_line_error(protect(photos[0], "--key-file", key_file, "--out", out, *options), 2)
    assert expected in line
    assert not out.exists()


def test_two_inputs_with_the_same_stem_exit_2(tmp_path: Path, key_file: Path) -> None:
    for folder, suffix in (("a", "png"), ("b", "jpg")):
        (tmp_path / folder).mkdir()
        Image.new("RGB", (64, 64)).save(tmp_path / folder / f"face.{suffix}")
    out = tmp_path / "out"
    line = assert_one_line_error(
        protect(
            tmp_path / "a" / "face.png", tmp_path / "b" / "face.jpg", "--key-file", key_file, "--out", out
        ),
        2,
    )
    assert "stem" in line
    assert not out.exists()


def test_an_input_without_a_face_exits_3_and_writes_nothing(
    engines: list[ProtectionEngine], faceless: Path, key_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    line = assert_one_line_error(protect(faceless, "--key-file", key_file, "--out", out, "--steps", "1"), 3)
    assert "no face" in line
    assert line.startswith(f"error: {faceless}: ")
    assert files_in(out) == []


def test_a_faceless_input_after_a_valid_one_writes_nothing_either(
    engines: list[ProtectionEngine], photos: list[Path], faceless: Path, key_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    result = protect(photos[0], faceless, "--key-file", key_file, "--out", out, "--steps", "1")
    line = assert_one_line_error(result, 3)
    assert str(faceless) in line and str(photos[0]) not in line
    assert files_in(out) == []


@pytest.mark.parametrize(
    ("make_input", "exit_code", "code", "reason"),
    [
        ("faceless", 3, "FAILED_PRECONDITION", "NO_FACE"),
        ("broken", 2, "INVALID_ARGUMENT", "INVALID_IMAGE"),
    ],
)
def test_json_errors_are_json_on_stdout_with_the_same_exit_code(
    engines: list[ProtectionEngine],
    photos: list[Path],
    faceless: Path,
    key_file: Path,
    tmp_path: Path,
    make_input: str,
    exit_code: int,
    code: str,
    reason: str,
) -> None:
    bad = faceless
    if make_input == "broken":
        bad = tmp_path / "broken.jpg"
        bad.write_bytes(b"not a photo")
    out = tmp_path / "out"
    result = protect(photos[0], bad, "--key-file", key_file, "--out", out, "--steps", "1", "--json")
    assert result.exit_code == exit_code, result.output
    assert result.stderr == ""
    error = json.loads(result.stdout)["error"]
    assert error == {"code": code, "reason": reason, "message": error["message"], "input": str(bad)}
    assert error["message"] and "Traceback" not in result.output
    assert files_in(out) == []


def test_json_errors_before_any_photo_name_no_input(key_file: Path, tmp_path: Path) -> None:
    result = protect(tmp_path / "a.png", "--key-file", key_file, "--key-id", "k", "--out", tmp_path, "--json")
    assert result.exit_code == 2 and result.stderr == ""
    assert json.loads(result.stdout)["error"] == {
        "code": "INVALID_ARGUMENT",
        "reason": "INVALID_ARGUMENT",
        "message": "give exactly one of --key-file and --key-id",
        "input": None,
    }


def test_an_unreadable_input_exits_2(
    engines: list[ProtectionEngine], photos: list[Path], key_file: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a photo")
    out = tmp_path / "out"
    assert_one_line_error(protect(photos[0], broken, "--key-file", key_file, "--out", out), 2)
    assert files_in(out) == []


# ---- write_png_atomic ------------------------------------------------------------------------


def _pixels() -> np.ndarray:
    return np.arange(20 * 30 * 3, dtype=np.uint8).reshape(20, 30, 3)


def test_write_png_atomic_writes_a_png_and_nothing_else(tmp_path: Path) -> None:
    target = tmp_path / "face.png"
    assert write_png_atomic(target, _pixels()) == target
    with Image.open(target) as written:
        assert written.format == "PNG"
        np.testing.assert_array_equal(np.asarray(written), _pixels())
    assert files_in(tmp_path) == ["face.png"]


@pytest.mark.parametrize("failure", [OSError("disk full"), KeyboardInterrupt()])
def test_a_failed_save_leaves_no_partial_or_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: BaseException
) -> None:
    def failing_save(self: Image.Image, fp: Any, *args: Any, **kwargs: Any) -> None:
        fp.write(b"\x89PNG partial")  # some bytes reach the temporary file first
        raise failure

    monkeypatch.setattr(Image.Image, "save", failing_save)
    with pytest.raises(type(failure)):
        write_png_atomic(tmp_path / "new.png", _pixels())
    assert files_in(tmp_path) == []


def test_a_failed_save_leaves_an_existing_file_untouched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "face.png"
    write_png_atomic(target, _pixels())
    before = target.read_bytes()

    def failing_save(self: Image.Image, fp: Any, *args: Any, **kwargs: Any) -> None:
        fp.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        write_png_atomic(target, np.zeros((8, 8, 3), dtype=np.uint8))
    assert target.read_bytes() == before
    assert files_in(tmp_path) == ["face.png"]


def test_a_failed_rename_leaves_no_temporary_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "face.png"
    target.write_bytes(b"existing")

    def failing_replace(self: Path, other: Any) -> Path:
        raise PermissionError("read-only")

    monkeypatch.setattr(Path, "replace", failing_replace)
    with pytest.raises(PermissionError):
        write_png_atomic(target, _pixels())
    assert target.read_bytes() == b"existing"
    assert files_in(tmp_path) == ["face.png"]


# ---- profile revisions -------------------------------------------------------------------------


def test_a_stored_key_protects_under_the_revision_it_was_made_for(
    engines: list[ProtectionEngine],
    photos: list[Path],
    tmp_path: Path,
    kek_file: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from faceanonymixer.engine.profiles import (
        EMBEDDED_LFW_STATS,
        profile_revision,
        with_optimisation_overrides,
    )
    from faceanonymixer.keystore import KeyEncryptionKey, KeyStore

    monkeypatch.setenv("FACEANONYMIXER_KEK_FILE", str(kek_file))
    url = f"sqlite:///{tmp_path / 'keys.db'}"
    archived, current = profile_revision(EMBEDDED_LFW_STATS), profile_revision(EMBEDDED)
    assert archived != current
    with KeyStore.open(url, KeyEncryptionKey.from_file(kek_file)) as store:
        made = {
            revision: store.create_key(
                "default", "alice", profile_id="embedded", profile_revision=revision, actor="test"
            ).key_id
            for revision in (archived, current, "0123456789abcdef")
        }
    for revision, profile in ((archived, EMBEDDED_LFW_STATS), (current, EMBEDDED)):
        out = tmp_path / revision
        arguments = ["--key-id", made[revision], "--keystore", url, "--out", out, "--steps", "1", "--json"]
        result = protect(photos[0], *arguments)
        assert result.exit_code == 0, result.output
        assert engines[-1].profile == profile  # its models and settings, not the current ones
        # the revision of what ran: the key's, with --steps 1
        ran = profile_revision(with_optimisation_overrides(profile, {"steps": 1}))
        assert json.loads(result.stdout)["profile_revision"] == ran != revision
    unknown = made["0123456789abcdef"]
    gone = protect(photos[0], "--key-id", unknown, "--keystore", url, "--out", tmp_path / "x")
    assert "revision 0123456789abcdef" in assert_one_line_error(gone, gone.exit_code)
    assert gone.exit_code != 0 and files_in(tmp_path / "x") == []


def test_a_key_file_takes_a_revision_of_this_version(
    engines: list[ProtectionEngine], photos: list[Path], key_file: Path, tmp_path: Path
) -> None:
    from faceanonymixer.engine.profiles import EMBEDDED_LFW_STATS, profile_revision

    archived = profile_revision(EMBEDDED_LFW_STATS)
    arguments = ["--revision", archived, "--out", tmp_path, "--steps", "1", "--json"]
    result = protect(photos[0], "--key-file", key_file, *arguments)
    assert result.exit_code == 0, result.output
    assert engines[-1].profile == EMBEDDED_LFW_STATS
    unknown = protect(photos[0], "--key-file", key_file, "--revision", "feedface", "--out", tmp_path / "u")
    assert "no revision 'feedface'" in assert_one_line_error(unknown, 2)
