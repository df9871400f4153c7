"""``pip install ./client_sdk`` in a fresh virtual environment: the light SDK alone.

It must bring no torch, no model weights and no ``faceanonymixer`` command (a user of the SDK
calls a server; the engine is the ``faceanonymixer`` distribution), and it must import and make
its clients. Installs from the package index like a user's pip (build tools and dependencies), so
it is marked slow.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
#: what a protection engine would bring: none of it may arrive with the SDK
HEAVY = ("torch", "dlib", "cv2", "face_recognition_models", "faceanonymixer", "sklearn")
#: the SDK's own packages hold code only (weights are the server distribution's)
CODE_SUFFIXES = {".py", ".pyi", ".pyc", ".typed"}

_PROBE = textwrap.dedent(
    """
    import importlib.util, sys
    import faceanonymixer_client
    from faceanonymixer_proto.v1 import keys_pb2, protection_pb2
    faceanonymixer_client.ProtectionClient("localhost:1", token="a-token-of-16-chars").close()
    present = [name for name in sys.argv[1].split(",") if importlib.util.find_spec(name) is not None]
    assert not present, present
    print("sdk ok", faceanonymixer_client.__version__)
    """
)


@pytest.mark.slow
def test_the_client_distribution_is_light(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    install = subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            str(REPO_ROOT / "client_sdk"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert install.returncode == 0, install.stderr
    probe = subprocess.run(
        [str(python), "-c", _PROBE, ",".join(HEAVY)], capture_output=True, text=True, check=False
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.startswith("sdk ok")
    assert not (venv / "bin" / "faceanonymixer").exists(), "the SDK installed a command"
    [site_packages] = (venv / "lib").glob("python3*/site-packages")
    sdk_files = [
        path
        for package in ("faceanonymixer_client", "faceanonymixer_proto")
        for path in (site_packages / package).rglob("*")
        if path.is_file()
    ]
    assert sdk_files and all(path.suffix in CODE_SUFFIXES for path in sdk_files), sdk_files
    installed = subprocess.run(
        [str(python), "-m", "pip", "list", "--format=freeze", "--disable-pip-version-check"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.lower()
    assert "faceanonymixer-client==" in installed and "\ntorch==" not in f"\n{installed}"
