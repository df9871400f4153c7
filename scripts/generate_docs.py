"""Regenerate the reference docs from the code, so they cannot drift from it.

- ``docs/cli.md``: the command line, from the typer app (``typer ... utils docs``);
- the settings table of ``docs/configuration.md``, from ``ServiceSettings``' fields;
- the error table of ``docs/errors.md``, from the SDK's ``ERROR_TABLE``.

The tables go between ``<!-- generated: NAME -->`` and ``<!-- end generated -->`` in their page;
the text around them is written by hand.

Run ``.venv/bin/python scripts/generate_docs.py`` after changing any of them;
``tests/artifacts/test_docs.py`` fails while the committed docs differ from what this writes.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from pydantic_core import PydanticUndefined

from faceanonymixer.service.settings import ENV_PREFIX, ServiceSettings
from faceanonymixer_client.errors import ERROR_TABLE

REPO_ROOT = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"(<!-- generated: (\w+) -->\n).*?(<!-- end generated -->)", re.S)


def cli_reference() -> str:
    """What ``typer faceanonymixer.cli.main utils docs`` writes, run as a user would run it."""
    typer = Path(sys.executable).with_name("typer")
    with tempfile.TemporaryDirectory() as folder:
        output = Path(folder) / "cli.md"
        command = [str(typer), "faceanonymixer.cli.main", "utils", "docs", "--name", "faceanonymixer"]
        subprocess.run(
            [*command, "--output", str(output)],
            check=True,
            capture_output=True,
        )
        return output.read_text(encoding="utf-8")


def configuration_reference() -> str:
    rows = ["| setting | environment | default | meaning |", "|---|---|---|---|"]
    for name, field in ServiceSettings.model_fields.items():
        if field.default_factory is not None:
            produced = field.default_factory()  # type: ignore[call-arg]
            described = _first_line(field.default_factory.__doc__) or "computed"
            default = "(none)" if produced in ({}, []) else described
        elif field.default is PydanticUndefined or field.default is None or field.default == "":
            default = "(none)"
        else:
            default = f"`{field.default}`"
        rows.append(f"| `{name}` | `{ENV_PREFIX}{name.upper()}` | {default} | {field.description or ''} |")
    return "\n".join(rows) + "\n"


def error_reference() -> str:
    rows = [
        "| condition | gRPC status | `ErrorInfo.reason` | SDK exception | CLI exit |",
        "|---|---|---|---|---|",
    ]
    for row in ERROR_TABLE:
        reasons = ", ".join(f"`{reason.value}`" for reason in row.reasons)
        error = f"`{row.error.__name__}`"
        rows.append(f"| {row.condition} | {row.code.name} | {reasons} | {error} | {row.error.exit_code} |")
    return "\n".join(rows) + "\n"


def _first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0].rstrip(".") if text else ""


#: page -> the generated table it holds (its marker name)
GENERATED_TABLES = {
    Path("docs") / "configuration.md": "configuration",
    Path("docs") / "errors.md": "errors",
}


def with_references(page: str) -> str:
    """``page`` with every generated table between its markers filled in from the code."""
    sections = {"configuration": configuration_reference, "errors": error_reference}

    def fill(match: re.Match[str]) -> str:
        return match.group(1) + sections[match.group(2)]() + match.group(3)

    return MARKER.sub(fill, page)


def expected_files() -> dict[Path, str]:
    files = {REPO_ROOT / "docs" / "cli.md": cli_reference()}
    for relative in GENERATED_TABLES:
        path = REPO_ROOT / relative
        files[path] = with_references(path.read_text(encoding="utf-8"))
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.parse_args()
    for path, text in expected_files().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path.relative_to(REPO_ROOT)}")


if __name__ == "__main__":
    main()
