"""The import contract of pyproject.toml ([tool.importlinter]) holds for the code as it is, and it
would catch an upward import or a cycle: a copy of the package with one such import added fails."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

pytestmark = pytest.mark.skipif(not LINT_IMPORTS.exists(), reason="import-linter is not installed ([dev])")


def lint(package_root: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` over the package found first in ``package_root`` (the copy, when given)."""
    paths = [package_root, REPO_ROOT / "client_sdk", REPO_ROOT / "export"]
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, paths))}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo", str(REPO_ROOT / "pyproject.toml")],
        capture_output=True,
        text=True,
        env=environment,
        cwd=REPO_ROOT,
        check=False,
        timeout=300,
    )


@pytest.fixture(scope="module")
def package_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The server package's code (no weights) in a folder of its own."""
    root = tmp_path_factory.mktemp("server")
    shutil.copytree(
        REPO_ROOT / "server" / "faceanonymixer",
        root / "faceanonymixer",
        ignore=shutil.ignore_patterns("*.pt", "*.npz", "*.npy", "__pycache__"),
    )
    return root


def test_the_code_keeps_the_contract(package_copy: Path) -> None:
    completed = lint(package_copy)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "BROKEN" not in completed.stdout and "3 kept, 0 broken" in completed.stdout


@pytest.mark.parametrize(
    ("module", "line", "named"),
    [
        # the engine reaching up into the service
        ("engine/probe.py", "from faceanonymixer.service import settings\n", "faceanonymixer.engine.probe"),
        # a model reaching up into the engine, which imports models: a layer break and a cycle
        ("models/probe.py", "from faceanonymixer.engine import profiles\n", "faceanonymixer.models.probe"),
        # the light client importing the server
        (None, "import faceanonymixer.engine\n", "faceanonymixer_client"),
    ],
)
def test_an_upward_import_breaks_the_contract(
    package_copy: Path, tmp_path: Path, module: str | None, line: str, named: str
) -> None:
    root = tmp_path / "server"
    shutil.copytree(package_copy, root)
    extra: Path
    if module is None:
        # the client SDK copied beside the server copy, with one import added to a module of it
        shutil.copytree(REPO_ROOT / "client_sdk" / "faceanonymixer_client", root / "faceanonymixer_client")
        extra = root / "faceanonymixer_client" / "probe.py"
    else:
        extra = root / "faceanonymixer" / module
    extra.write_text(f'"""An import that breaks the contract."""\n\n{line}')
    completed = lint(root)
    assert completed.returncode == 1, completed.stdout
    assert "BROKEN" in completed.stdout and named in completed.stdout
