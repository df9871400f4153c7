"""The Dockerfile and .dockerignore, checked without a Docker engine.

Parsed with dockerfile-parse (continuations joined, comments apart); .dockerignore is matched the
way BuildKit matches it (a pattern excludes a path when it matches the path or one of its parent
folders; the last matching pattern wins, ``!`` re-includes). Checked: every COPY source exists and
reaches the build context, the wheel is built from every package folder, stage references resolve,
the ``cpu`` and ``cuda`` images run ``faceanonymixer serve`` in exec form as a non-root user with a
``faceanonymixer health`` HEALTHCHECK the CLI accepts, and their settings are real settings that
agree with the exposed ports and the volume.
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import pytest
import typer
from dockerfile_parse import DockerfileParser

from faceanonymixer.service.settings import ENV_PREFIX, ServiceSettings, split_address

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO_ROOT / "Dockerfile"
TARGETS = ("cpu", "cuda")
#: what the .dockerignore is meant to drop from inside the copied folders, and nothing else
BUILD_LEFTOVERS = re.compile(
    r"(^|/)(__pycache__|\.mypy_cache|\.pytest_cache|\.ruff_cache|[^/]+\.egg-info)(/|$)"
)


# ---- the Dockerfile as stages -------------------------------------------------------------------


@dataclass
class Instruction:
    name: str
    value: str
    line: int

    def flags_and_args(self) -> tuple[dict[str, str], list[str]]:
        """``--name=value`` flags (COPY, HEALTHCHECK) and the remaining shell words."""
        flags: dict[str, str] = {}
        words = shlex.split(self.value)
        while words and words[0].startswith("--"):
            name, _, value = words.pop(0)[2:].partition("=")
            flags[name] = value
        return flags, words


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, name: str) -> list[Instruction]:
        return [item for item in self.instructions if item.name == name]


@cache
def stages() -> dict[str, Stage]:
    parsed: dict[str, Stage] = {}
    current: Stage | None = None
    for item in DockerfileParser(path=str(DOCKERFILE), cache_content=True).structure:
        instruction = Instruction(item["instruction"].upper(), item["value"].strip(), item["startline"] + 1)
        if instruction.name == "COMMENT":
            continue
        if instruction.name == "FROM":
            match = re.fullmatch(r"(\S+)\s+AS\s+(\S+)", instruction.value, flags=re.IGNORECASE)
            assert match, f"line {instruction.line}: every stage is named (FROM image AS name)"
            base, name = match.groups()
            assert name not in parsed, f"line {instruction.line}: stage {name} defined twice"
            current = parsed[name] = Stage(name, base)
        elif current is not None:  # ARGs before the first FROM are global
            current.instructions.append(instruction)
    return parsed


def lineage(name: str) -> list[Stage]:
    """The stage and the stages it is built FROM, oldest first."""
    chain = [stages()[name]]
    while chain[0].base in stages():
        chain.insert(0, stages()[chain[0].base])
    return chain


def effective(target: str, name: str) -> Instruction | None:
    """The instruction that decides ``name`` (USER, ENTRYPOINT, ...) in the image of ``target``."""
    found = [item for stage in lineage(target) for item in stage.all(name)]
    return found[-1] if found else None


def environment(target: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for stage in lineage(target):
        for item in stage.all("ENV"):
            for word in shlex.split(item.value):
                key, sep, value = word.partition("=")
                assert sep, f"line {item.line}: ENV in KEY=VALUE form"
                env[key] = value
    return env


def exec_form(instruction: Instruction, text: str) -> list[str]:
    """A JSON array of strings (exec form: no shell between Docker and the program)."""
    try:
        words = json.loads(text)
    except json.JSONDecodeError:
        pytest.fail(f"line {instruction.line}: {instruction.name} is in shell form: {text!r}")
    assert isinstance(words, list) and all(isinstance(word, str) for word in words), text
    return words


# ---- .dockerignore as BuildKit reads it -------------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Go's filepath.Match plus ``**`` (any number of folders), as in moby's patternmatcher."""
    out, i = "", 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):
                out += "(?:.*/)?"
                i += 1
            else:
                out += ".*"
            continue
        if char == "*":
            out += "[^/]*"
        elif char == "?":
            out += "[^/]"
        elif char == "[":
            end = pattern.index("]", i + 1)
            out += "[" + pattern[i + 1 : end].replace("!", "^", 1) + "]"
            i = end
        else:
            out += re.escape(char)
        i += 1
    return re.compile(out)


@cache
def dockerignore() -> list[tuple[bool, re.Pattern[str]]]:
    """(is an exception, pattern) in file order; patterns cleaned like filepath.Clean."""
    rules = []
    for raw in (REPO_ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        cleaned = re.sub(r"/+", "/", line.lstrip("!").strip()).strip("/")
        rules.append((negated, _pattern_regex(cleaned)))
    return rules


def excluded(relative: str) -> bool:
    parts = relative.strip("/").split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    verdict = False
    for negated, regex in dockerignore():
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            verdict = not negated
    return verdict


# ---- the build context ------------------------------------------------------------------------


def local_copies() -> list[tuple[Instruction, list[str]]]:
    """(COPY/ADD, its sources) for every copy from the build context (not ``--from`` a stage)."""
    copies = []
    for stage in stages().values():
        for item in stage.all("COPY") + stage.all("ADD"):
            flags, words = item.flags_and_args()
            if "from" not in flags:
                copies.append((item, words[:-1]))
    return copies


def test_the_matcher_reads_dockerignore_as_buildkit_does() -> None:
    assert not excluded("server/faceanonymixer/cli/main.py")
    assert not excluded("pyproject.toml")
    assert excluded("server/faceanonymixer/__pycache__/cli.cpython-311.pyc")
    assert excluded("server/faceanonymixer/cli/main.pyc")
    assert excluded("faceanonymixer.egg-info/PKG-INFO")


@pytest.mark.parametrize(
    "path", [".venv/bin/python", ".git/config", "keys.db", "kek.bin", "tests/conftest.py", "out/grid.png"]
)
def test_secrets_and_the_work_tree_stay_out_of_the_context(path: str) -> None:
    assert excluded(path)


def test_every_copied_source_exists_and_reaches_the_context() -> None:
    copies = local_copies()
    assert copies
    for instruction, sources in copies:
        assert sources, f"line {instruction.line}: COPY needs a source and a destination"
        for source in sources:
            path = REPO_ROOT / source
            assert path.exists(), f"line {instruction.line}: {source} does not exist"
            assert not excluded(source), f"line {instruction.line}: .dockerignore drops {source}"
            if path.is_dir():
                dropped = [
                    relative
                    for file in path.rglob("*")
                    if file.is_file()
                    and excluded(relative := file.relative_to(REPO_ROOT).as_posix())
                    and not BUILD_LEFTOVERS.search(relative)
                ]
                assert not dropped, f"line {instruction.line}: .dockerignore drops {dropped[:5]}"


def test_the_wheel_is_built_from_every_package_folder_and_the_readme() -> None:
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    files = {"pyproject.toml", pyproject["project"]["readme"]}
    packages = set(pyproject["tool"]["setuptools"]["package-dir"].values())
    copied = {
        source.rstrip("/")
        for item in stages()["builder"].all("COPY")
        for source in item.flags_and_args()[1][:-1]
    }
    assert files <= copied, f"the builder stage does not copy {sorted(files - copied)}"
    for package in packages:
        assert any(Path(package).is_relative_to(source) for source in copied), package
    # the client SDK the server requires is its own distribution: built beside it
    assert "client_sdk" in copied
    builds = " ".join(item.value for item in stages()["builder"].all("RUN"))
    assert "--wheel-dir /wheels . ./client_sdk" in builds


def test_every_committed_weights_file_ships_in_the_wheel() -> None:
    # the image installs the wheel, not the work tree: a weights file the package data misses is
    # absent there, and the profile that needs it fails to load
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["faceanonymixer"]
    weights = REPO_ROOT / "server" / "faceanonymixer" / "models" / "weights"
    manifest = json.loads((weights / "manifest.json").read_text())
    for name, entry in manifest.items():
        shipped = Path("models", "weights", entry["file"])
        assert any(shipped.match(pattern) for pattern in patterns), f"{name}: {shipped} is not package data"


# ---- stages and targets -------------------------------------------------------------------------


def test_targets_exist_and_a_plain_build_makes_the_cpu_image() -> None:
    assert set(TARGETS) <= set(stages())
    assert list(stages())[-1] == "cpu"


def test_every_stage_reference_names_an_earlier_stage() -> None:
    order = list(stages())
    for position, stage in enumerate(stages().values()):
        if stage.base in stages():
            assert order.index(stage.base) < position, f"{stage.name} is built FROM a later stage"
        for item in stage.all("COPY") + stage.all("ADD"):
            source_stage = item.flags_and_args()[0].get("from")
            if source_stage is not None:
                assert source_stage in order[:position], (
                    f"line {item.line}: --from={source_stage} is no earlier stage"
                )


def test_the_python_and_torch_of_the_images_are_the_projects() -> None:
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    torch_pin = next(item for item in pyproject["project"]["dependencies"] if item.startswith("torch"))
    text = DOCKERFILE.read_text()
    assert f"ARG TORCH_VERSION={torch_pin.removeprefix('torch==')}" in text
    assert "ARG GAN_FACE_GENERATE_VERSION=1.1.1" in text  # README's --no-deps install
    for target in TARGETS:
        assert lineage(target)[0].base.startswith("python:3.11-")
        venv = next(item.value for item in stages()[target].all("COPY") if "/opt/venv" in item.value)
        venv_stage = stages()[Instruction("COPY", venv, 0).flags_and_args()[0]["from"]]
        assert venv_stage.base == lineage(target)[0].base  # the venv's python is the image's
        runs = " ".join(item.value for item in venv_stage.all("RUN"))
        assert "torch==${TORCH_VERSION}" in runs
        assert "/tmp/wheels/faceanonymixer_client-*.whl" in runs  # the SDK the server requires
        assert '--no-deps "gan-face-generate==${GAN_FACE_GENERATE_VERSION}"' in runs
    cpu_runs = " ".join(item.value for item in stages()["venv-cpu"].all("RUN"))
    assert "https://download.pytorch.org/whl/cpu" in cpu_runs


# ---- what the images run ------------------------------------------------------------------------


def cli_command(name: str) -> typer.core.TyperCommand:
    from faceanonymixer.cli.main import app

    group = typer.main.get_command(app)
    assert isinstance(group, typer.core.TyperGroup)
    assert name in group.commands, f"faceanonymixer.cli.main.app has no command {name!r}"
    command = group.commands[name]
    assert isinstance(command, typer.core.TyperCommand)
    return command


def check_cli_words(words: list[str]) -> None:
    """``faceanonymixer COMMAND ARGS``: the console script exists and COMMAND accepts ARGS."""
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"].get(words[0]) == "faceanonymixer.cli:app", words
    command = cli_command(words[1])
    command.make_context(words[1], list(words[2:]))  # raises on an unknown option or a bad value


@pytest.mark.parametrize("target", TARGETS)
def test_entrypoint_is_serve_in_exec_form(target: str) -> None:
    entrypoint = effective(target, "ENTRYPOINT")
    assert entrypoint is not None
    words = exec_form(entrypoint, entrypoint.value)
    assert words == ["faceanonymixer", "serve"]
    check_cli_words(words)
    cmd = effective(target, "CMD")
    assert cmd is None or exec_form(cmd, cmd.value) == []


@pytest.mark.parametrize("target", TARGETS)
def test_healthcheck_runs_the_health_command_in_exec_form(target: str) -> None:
    healthcheck = effective(target, "HEALTHCHECK")
    assert healthcheck is not None, "no HEALTHCHECK"
    options, rest = healthcheck.value.split("CMD", 1) if "CMD" in healthcheck.value else ("", "")
    assert rest, f"line {healthcheck.line}: HEALTHCHECK needs CMD (not NONE)"
    words = exec_form(healthcheck, rest.strip())
    assert words[:2] == ["faceanonymixer", "health"]
    check_cli_words(words)
    # the probe asks the port the server listens on
    server = words[words.index("--server") + 1]
    assert split_address(server)[1] == split_address(environment(target)["FACEANONYMIXER_LISTEN"])[1]
    timings = dict(re.findall(r"--([a-z-]+)=(\d+)s", options))
    assert {"interval", "timeout", "start-period"} <= set(timings)
    assert int(timings["timeout"]) > 5  # more than the probe's own --timeout default


@pytest.mark.parametrize("target", TARGETS)
def test_the_image_runs_as_a_numeric_non_root_user(target: str) -> None:
    user = effective(target, "USER")
    assert user is not None, "no USER: the image would run as root"
    uid, _, gid = user.value.partition(":")
    assert uid.isdigit() and int(uid) != 0, f"USER {user.value}: not a numeric non-root uid"
    assert not gid or (gid.isdigit() and int(gid) != 0)


@pytest.mark.parametrize("target", TARGETS)
def test_settings_are_real_and_agree_with_ports_and_volume(target: str) -> None:
    env = environment(target)
    settings = {name for name in env if name.startswith(ENV_PREFIX)}
    known = {ENV_PREFIX + name.upper() for name in ServiceSettings.model_fields}
    assert settings <= known, f"not settings: {sorted(settings - known)}"
    # inside a container the server must listen beyond loopback (and so needs tokens: deploy/README.md)
    listen_host, listen_port = split_address(env["FACEANONYMIXER_LISTEN"])
    assert listen_host == "0.0.0.0"
    metrics_port = split_address(env["FACEANONYMIXER_METRICS_LISTEN"])[1]
    exposed = {
        int(port.split("/")[0])
        for item in lineage(target)
        for e in item.all("EXPOSE")
        for port in e.value.split()
    }
    assert {listen_port, metrics_port} <= exposed
    # everything written is on the volume or in /tmp, so the root filesystem may be read-only
    volumes = [
        path for stage in lineage(target) for item in stage.all("VOLUME") for path in json.loads(item.value)
    ]
    assert volumes
    keystore = env["FACEANONYMIXER_KEYSTORE"].removeprefix("sqlite:///")
    for path in (keystore, env["HOME"], env["XDG_CACHE_HOME"], env["XDG_DATA_HOME"]):
        assert any(Path(path).is_relative_to(volume) for volume in volumes), path
    assert env["TMPDIR"] == "/tmp"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert "FACEANONYMIXER_KEK" not in env and "FACEANONYMIXER_KEK_FILE" not in env  # given at run time


def test_the_cuda_image_asks_for_the_driver() -> None:
    env = environment("cuda")
    assert "compute" in env["NVIDIA_DRIVER_CAPABILITIES"].split(",")
    runs = " ".join(item.value for item in stages()["venv-cuda"].all("RUN"))
    assert "TENSORRT_PACKAGE" in runs
    assert "NVIDIA_VISIBLE_DEVICES" not in environment("cpu")
