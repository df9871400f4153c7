"""Every code example in README.md and docs/*.md runs as written.

What counts as an example: every fenced block marked ``python``, ``bash``, ``sh`` or ``console`` in
README.md and docs/*.md (not the decision records in docs/decisions/, which keep the commands as
they ran; not docs/cli.md, generated usage synopses). Python blocks run as a script, shell blocks
under ``bash -e -u -o pipefail``, console blocks their ``$ `` lines. ``toml`` blocks are server
configurations: each must load as one. Every fence names its language, so no example hides in an
unmarked block.

A block may carry one marker, an HTML comment on the line just before its fence:

- ``<!-- example: not run (REASON) -->``: not run here, for the reason given (a pip install, a
  Kubernetes cluster, a GPU, a photo set of many people, an hour of work);
- ``<!-- example: with a server (WHAT) -->``: the test first starts ``faceanonymixer serve`` on
  loopback with the bearer token the docs use (``a-long-random-token-for-acme``), a fresh key
  store and key-encryption key, and the profile's own settings (50 steps).

Each block runs in a fresh folder holding the files examples name: ``photo.jpg``,
``enroll1.jpg``, ``enroll2.jpg`` and ``probe.jpg`` (the demo's tighter crop of NASA's public-domain
astronaut portrait that ships with scikit-image, its mirror image, a darker copy and a copy rotated
8 degrees, as JPEG), ``alice.key`` (32 bytes from
``os.urandom``), and ``benchmarks/`` and ``scripts/`` of this checkout. ``faceanonymixer`` and
``python`` are this interpreter's. The one change made to an example: the loopback port 50051 is
replaced by a free port (the test server's, for blocks with a server), so runs in parallel cannot
collide. Blocks that protect a face do so at the steps they say (the profile's 50 unless written).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from service_harness import ServerProcess

REPO_ROOT = Path(__file__).resolve().parents[2]
PAGES = [REPO_ROOT / "README.md", *sorted(p for p in (REPO_ROOT / "docs").glob("*.md") if p.name != "cli.md")]
RUN = {"python", "bash", "sh", "console"}
#: the bearer token of the docs' server examples
TOKEN = "a-long-random-token-for-acme"
#: seconds one example may take (a server's start and a few protections at 50 steps on 2 busy cores)
EXAMPLE_TIMEOUT = 600
FENCE = re.compile(r"^(\s*)```(\S*)\s*$")
MARKER = re.compile(r"^<!-- example: (not run|with a server) \((.+)\) -->$")
ANY_MARKER = re.compile(r"<!--\s*example")


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    language: str
    code: str
    marker: str  # "", "not run" or "with a server"
    reason: str

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(REPO_ROOT).as_posix()}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """The fenced blocks of ``page``; a malformed or misplaced marker raises ValueError."""
    lines = page.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if not opening:
            if ANY_MARKER.search(lines[index]):
                follows = index + 1 < len(lines) and FENCE.match(lines[index + 1])
                if not MARKER.match(lines[index].strip()) or not follows:
                    raise ValueError(
                        f"{page.name}:{index + 1}: a marker must be well formed and right before a fence"
                    )
            index += 1
            continue
        end = index + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        if end == len(lines):
            raise ValueError(f"{page.name}:{index + 1}: unclosed fence")
        previous = lines[index - 1].strip() if index else ""
        marked = MARKER.match(previous)
        found.append(
            Block(
                page=page,
                line=index + 1,
                language=opening.group(2),
                code="\n".join(line.removeprefix(opening.group(1)) for line in lines[index + 1 : end]) + "\n",
                marker=marked.group(1) if marked else "",
                reason=marked.group(2).strip() if marked else "",
            )
        )
        index = end + 1
    return found


ALL = [block for page in PAGES for block in blocks(page)]
EXAMPLES = [block for block in ALL if block.language in RUN]


def test_every_fence_names_its_language_and_every_marker_its_reason() -> None:
    unnamed = [block.id for block in ALL if not block.language]
    assert not unnamed, f"fences without a language: {unnamed}"
    for block in ALL:
        if block.marker:
            assert block.language in RUN, f"{block.id}: a marker on a {block.language} block"
            assert len(block.reason) >= 10, f"{block.id}: say why ({block.reason!r})"


def test_most_examples_run() -> None:
    runnable = [block for block in EXAMPLES if block.marker != "not run"]
    readme = [block for block in runnable if block.page.name == "README.md"]
    assert len(readme) >= 4, "README's quick starts (CLI, Python, service, SDK) run"
    assert len(runnable) >= len(EXAMPLES) // 2, "most examples run"


@pytest.mark.parametrize("block", [b for b in ALL if b.language == "toml"], ids=lambda b: b.id)
def test_configuration_examples_load(block: Block, tmp_path: Path) -> None:
    from faceanonymixer.service.settings import ServiceSettings

    config = tmp_path / "server.toml"
    config.write_text(block.code)
    settings = ServiceSettings.load(config)
    assert settings.model_fields_set, f"{block.id} sets nothing"


# ---- running ---------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The files examples name, made once and copied into each example's folder: the demo's
    tighter crop of the astronaut portrait (the full photo also holds a face-like patch that
    dlib's detector finds beside her face) and three variations of it, as JPEG."""
    from PIL import Image, ImageOps

    from faceanonymixer.cli.demo import sample_photos

    folder = tmp_path_factory.mktemp("prepared")
    crop = next(photo for photo in sample_photos().photos if photo.name == "tighter-crop")
    base = Image.fromarray(crop.pixels)
    variations = {
        "photo.jpg": base,
        "enroll1.jpg": ImageOps.mirror(base),
        "enroll2.jpg": base.point(lambda value: round(255 * (value / 255) ** 1.6)),  # darker
        "probe.jpg": base.rotate(8, resample=Image.Resampling.BICUBIC, fillcolor=(0, 0, 0)),
    }
    for name, image in variations.items():
        image.save(folder / name, quality=95)
    (folder / "alice.key").write_bytes(os.urandom(32))
    return folder


@pytest.fixture(scope="module")
def environment(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """This interpreter's ``faceanonymixer`` and ``python`` first on PATH; no outside settings."""
    bin_dir = tmp_path_factory.mktemp("bin")
    for name, command in {"faceanonymixer": "-m faceanonymixer.cli", "python": "", "python3": ""}.items():
        script = bin_dir / name
        script.write_text(f'#!/bin/sh\nexec "{sys.executable}" {command} "$@"\n')
        script.chmod(0o755)
    env = {name: value for name, value in os.environ.items() if not name.startswith("FACEANONYMIXER_")}
    if "FACEANONYMIXER_THREADS" in os.environ:
        env["FACEANONYMIXER_THREADS"] = os.environ["FACEANONYMIXER_THREADS"]
    paths = [str(REPO_ROOT / part) for part in ("server", "client_sdk", "export")]
    env["PYTHONPATH"] = os.pathsep.join([*paths, *filter(None, [os.environ.get("PYTHONPATH")])])
    env["PATH"] = os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), os.environ["PATH"]])
    home = tmp_path_factory.mktemp("xdg")
    env["XDG_DATA_HOME"] = str(home / "data")
    env["XDG_CACHE_HOME"] = str(home / "cache")
    return env


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, kek_file: Path) -> Iterator[str]:
    """``faceanonymixer serve`` as the docs' server examples assume it: loopback, one token."""
    workdir = tmp_path_factory.mktemp("server")
    settings = {
        "keystore": f"sqlite:///{workdir / 'keys.db'}",
        "tokens": {TOKEN: "acme"},
        "optimisation": {},  # the profile's own settings
    }
    with ServerProcess(workdir, kek_file, settings).running() as process:
        yield process.address


def run(block: Block, folder: Path, env: dict[str, str], port: int) -> subprocess.CompletedProcess[str]:
    code = re.sub(r"(127\.0\.0\.1|localhost):50051\b", rf"\g<1>:{port}", block.code)
    if block.language == "python":
        script = folder / "example.py"
        script.write_text(code)
        command = [sys.executable, script.name]
    else:
        if block.language == "console":
            code = "\n".join(line[2:] for line in code.splitlines() if line.startswith("$ ")) + "\n"
        script = folder / "example.sh"
        script.write_text("set -euo pipefail\n" + code)
        command = ["bash", script.name]
    process = subprocess.Popen(
        command,
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=EXAMPLE_TIMEOUT)
    except subprocess.TimeoutExpired:
        output = "(timed out)"
    finally:
        with contextlib.suppress(ProcessLookupError):  # what it left running (a background server)
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    return subprocess.CompletedProcess(command, process.returncode, output, "")


@pytest.mark.slow
@pytest.mark.parametrize("block", EXAMPLES, ids=lambda b: b.id)
def test_example_runs(
    block: Block,
    prepared: Path,
    environment: dict[str, str],
    request: pytest.FixtureRequest,
    tmp_path: Path,
    weights: None,
) -> None:
    if block.marker == "not run":
        pytest.skip(f"marked not run: {block.reason}")
    port = free_port()
    if block.marker == "with a server":
        port = int(request.getfixturevalue("server").rsplit(":", 1)[1])
    folder = tmp_path / "example"
    shutil.copytree(prepared, folder)
    for name in ("benchmarks", "scripts"):
        (folder / name).symlink_to(REPO_ROOT / name)
    result = run(block, folder, environment, port)
    print(f"--- {block.id}\n{result.stdout[-2000:]}")  # with -s: what the example printed
    assert result.returncode == 0, f"{block.id} failed (exit {result.returncode}):\n{result.stdout[-4000:]}"
