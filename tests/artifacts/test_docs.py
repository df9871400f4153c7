"""The docs: the reference tables are generated from the code and kept current, README stays a short
guide that links every page, links resolve, and every decision record has its three parts.

The examples in README and ``docs/`` are run by ``tests/artifacts/test_doc_examples.py``.
"""

from __future__ import annotations

import re
from pathlib import Path
from types import ModuleType

from script_loader import load_script

REPO_ROOT = Path(__file__).resolve().parents[2]
README = REPO_ROOT / "README.md"
DOCS = REPO_ROOT / "docs"
DECISIONS = DOCS / "decisions"
SCRIPT = REPO_ROOT / "scripts" / "generate_docs.py"
REGENERATE = f"run `.venv/bin/python {SCRIPT.relative_to(REPO_ROOT).as_posix()}` and commit the result"
#: the issue's bound on README: a user's guide, not a log
README_MAX_LINES = 400
#: pages README must link that are written on other branches: linked already, checked once they exist
PENDING: set[Path] = set()
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def _load_script() -> ModuleType:
    return load_script(SCRIPT)


def _pages() -> list[Path]:
    return [README, *sorted(DOCS.rglob("*.md"))]


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    prose = FENCE.sub("", _text(path))
    return {_slug(line.lstrip("#")) for line in prose.splitlines() if re.match(r"#{1,6} ", line)}


def test_committed_reference_docs_are_current() -> None:
    for path, expected in _load_script().expected_files().items():
        assert path.is_file(), f"{path} is missing: {REGENERATE}"
        assert _text(path) == expected, f"{path} is stale: {REGENERATE}"


def test_each_generated_table_has_its_page() -> None:
    tables = _load_script().GENERATED_TABLES
    assert set(tables.values()) == {"configuration", "errors"}
    for relative, name in tables.items():
        text = _text(REPO_ROOT / relative)
        assert text.count(f"<!-- generated: {name} -->") == 1, relative
        assert text.count("<!-- end generated -->") == 1, relative
    assert "<!-- generated:" not in _text(README), "the generated tables live in docs/, not README"


def _generated_rows(path: Path) -> list[str]:
    text = _text(path)
    table = text.split("<!-- generated:", 1)[1].split("<!-- end generated -->", 1)[0]
    return [line for line in table.splitlines() if line.startswith("| ")]


def test_every_setting_and_error_row_is_documented() -> None:
    from faceanonymixer.service.settings import ENV_PREFIX, ServiceSettings
    from faceanonymixer_client.errors import ERROR_TABLE

    settings = _generated_rows(DOCS / "configuration.md")
    for name in ServiceSettings.model_fields:
        rows = [row for row in settings if row.startswith(f"| `{name}` |")]
        assert len(rows) == 1, f"setting {name} is not documented once in docs/configuration.md"
        assert f"`{ENV_PREFIX}{name.upper()}`" in rows[0]
    errors = _generated_rows(DOCS / "errors.md")
    for entry in ERROR_TABLE:
        rows = [row for row in errors if f"| `{entry.error.__name__}` |" in row]
        assert len(rows) == 1, f"{entry.error.__name__} is not documented once in docs/errors.md"
        assert f"| {entry.code.name} |" in rows[0]
        assert rows[0].endswith(f"| {entry.error.exit_code} |")
        for reason in entry.reasons:
            assert f"`{reason.value}`" in rows[0]
    cli = _text(DOCS / "cli.md")
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


def test_readme_is_a_short_guide() -> None:
    text = _text(README)
    lines = text.splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines (at most {README_MAX_LINES})"
    assert "## Two commands" in lines
    commands = text.split("## Two commands", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    assert "# 1. the demo" in commands and "faceanonymixer demo" in commands
    assert "# 2. the tests" in commands and "pytest" in commands
    assert "**Status.**" in text


def test_readme_links_every_docs_page() -> None:
    linked = {
        (README.parent / target.split("#", 1)[0]).resolve()
        for target in LINK.findall(FENCE.sub("", _text(README)))
        if not target.startswith(("http://", "https://", "#"))
    }
    pages = {path.resolve() for path in DOCS.glob("*.md")} | {path.resolve() for path in PENDING}
    pages |= {(DECISIONS / "README.md").resolve(), (DOCS / "eval-lfw50").resolve()}
    pages -= {path.resolve() for path in PENDING if path.parent == DECISIONS}
    missing = sorted(str(path.relative_to(REPO_ROOT)) for path in pages - linked)
    assert not missing, f"README does not link {missing}"


def test_relative_links_resolve() -> None:
    broken = []
    for page in _pages():
        for target in LINK.findall(FENCE.sub("", _text(page))):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            file_part, _, anchor = target.partition("#")
            path = (page.parent / file_part).resolve() if file_part else page
            where = f"{page.relative_to(REPO_ROOT)}: {target}"
            if not path.exists():
                if path not in PENDING:
                    broken.append(where)
                continue
            if anchor and path.suffix == ".md" and anchor not in _anchors(path):
                broken.append(f"{where} (no such heading)")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_every_decision_record_has_its_parts_and_is_listed() -> None:
    index = _text(DECISIONS / "README.md")
    records = sorted(path for path in DECISIONS.glob("*.md") if path.name != "README.md")
    assert records
    for record in records:
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}-[a-z0-9-]+\.md", record.name), record.name
        text = _text(record)
        assert text.startswith("# "), record.name
        headings = [line for line in text.splitlines() if line.startswith("## ")]
        for part in ("## Context", "## What was measured", "## What was chosen"):
            assert part in headings, f"{record.name} has no '{part}'"
        assert f"]({record.name})" in index, f"{record.name} is not listed in docs/decisions/README.md"
