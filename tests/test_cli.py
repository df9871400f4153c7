"""The ``faceanonymixer`` entry point: version, demo, one-line errors with the table's exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from PIL import Image
from typer.testing import CliRunner

from faceanonymixer import __version__
from faceanonymixer.cli import app

runner = CliRunner()


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"faceanonymixer {__version__}"


def test_console_script_is_installed_as_a_module_entry_point() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "faceanonymixer.cli", "--version"], capture_output=True, text=True, check=False
    )
    assert completed.returncode == 0, completed.stderr
    assert __version__ in completed.stdout


def test_demo_aligns_and_compares_real_faces(faces_root: Path) -> None:
    result = runner.invoke(app, ["demo", str(faces_root / "fr_examples"), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["images"] == report["aligned"] + len(report["failures"])
    assert report["aligned"] >= 0.9 * report["images"]
    assert report["genuine_pairs"] > 0 and report["impostor_pairs"] > 0
    assert report["mean_genuine_distance"] < report["threshold"] < report["mean_impostor_distance"]


def test_demo_renders_a_table(faces_root: Path) -> None:
    result = runner.invoke(app, ["demo", str(faces_root / "fr_examples"), "--max-identities", "2"])
    assert result.exit_code == 0, result.output
    assert "same person" in result.output and "different people" in result.output


def test_demo_on_a_missing_folder_is_one_line_with_exit_2(tmp_path: Path) -> None:
    result = runner.invoke(app, ["demo", str(tmp_path / "nowhere")])
    assert result.exit_code == 2
    assert len(result.output.strip().splitlines()) == 1 and result.output.startswith("error:")


def test_demo_skips_photos_without_faces_and_says_why(tmp_path: Path) -> None:
    for person in ("a", "b"):
        (tmp_path / person).mkdir()
        Image.new("RGB", (120, 120), (90, 140, 200)).save(tmp_path / person / "sky.png")
        (tmp_path / person / "notes.jpg").write_bytes(b"not a photo at all")
    result = runner.invoke(app, ["demo", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["aligned"] == 0 and len(report["failures"]) == 4
    reasons = " ".join(item["reason"] for item in report["failures"])
    assert "no face" in reasons and "not an image" in reasons
