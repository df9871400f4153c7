"""The ``faceanonymixer`` entry point: version and the console script.

The demo has its own tests in ``test_demo.py``.
"""

from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from faceanonymixer import __version__
from faceanonymixer.cli.main import app

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
