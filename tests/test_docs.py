"""The reference docs (CLI, configuration, errors) are generated from the code and kept current."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from script_loader import load_script

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "scripts" / "generate_docs.py"
REGENERATE = f"run `.venv/bin/python {SCRIPT.relative_to(REPO_ROOT).as_posix()}` and commit the result"


def _load_script() -> ModuleType:
    return load_script(SCRIPT)


def test_committed_reference_docs_are_current() -> None:
    for path, expected in _load_script().expected_files().items():
        assert path.is_file(), f"{path} is missing: {REGENERATE}"
        assert path.read_text(encoding="utf-8") == expected, f"{path} is stale: {REGENERATE}"


def test_readme_holds_each_generated_reference() -> None:
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    for name in ("configuration", "errors"):
        assert f"<!-- generated: {name} -->" in readme


def test_every_error_table_row_and_setting_is_in_the_readme() -> None:
    from faceanonymixer.service.settings import ServiceSettings
    from faceanonymixer_client.errors import ERROR_TABLE

    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    for row in ERROR_TABLE:
        assert f"`{row.error.__name__}`" in readme
    for name in ServiceSettings.model_fields:
        assert f"| `{name}` |" in readme
    cli = (REPO_ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    for command in (
        "serve",
        "demo",
        "eval",
        "health",
        "export onnx",
        "export tensorrt",
        "protect",
        "keys create",
        "keys revoke",
        "keys audit",
    ):
        assert f"## `faceanonymixer {command}`" in cli
