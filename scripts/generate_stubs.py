"""Generate the Python gRPC stubs of the wire contract in ``proto/``.

Runs the protoc bundled with grpcio-tools over ``proto/faceanonymixer/v1/*.proto`` and writes
``faceanonymixer_proto/v1/{name}_pb2.py``, ``{name}_pb2.pyi`` and ``{name}_pb2_grpc.py`` (plus the
package ``__init__.py`` files) under the output folder, ``client_sdk`` by default: the stubs are
their own import package, shipped with the light client distribution and imported by the server
too. protoc names the Python package after the proto path (``faceanonymixer.v1``); the stubs'
imports of each other and their message classes' module names are rewritten to
``faceanonymixer_proto.v1`` (the wire names, such as ``/faceanonymixer.v1.KeyService/CreateKey``,
do not change). The output depends only on the .proto
files and the pinned grpcio-tools version, so regenerating must give the committed files byte for
byte (``tests/artifacts/test_proto_stubs.py`` checks it)::

    python scripts/generate_stubs.py            # refresh client_sdk/faceanonymixer_proto/v1
    python scripts/generate_stubs.py --out DIR  # write to DIR/faceanonymixer_proto/v1 instead
"""

from __future__ import annotations

import argparse
import importlib.resources
import importlib.util
import re
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
PROTO_ROOT = REPO_ROOT / "proto"
#: the proto package whose files are compiled, as a path below PROTO_ROOT
PACKAGE_DIR = Path("faceanonymixer") / "v1"
#: the import package the stubs are written to, as a path below the output folder
OUTPUT_DIR = Path("faceanonymixer_proto") / "v1"
#: protoc's Python names of the stubs (imports of a sibling, the module name the message classes
#: get, which pickling looks up), and what they become
REWRITES = (
    (re.compile(r"^from faceanonymixer\.v1 import ", re.MULTILINE), "from faceanonymixer_proto.v1 import "),
    (re.compile(r"'faceanonymixer\.v1\.(\w+_pb2)'"), r"'faceanonymixer_proto.v1.\1'"),
)
#: generated files, by suffix; stale ones in the output package are removed before generating
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")
INIT_TEXT = '''"""Generated wire types of the ``faceanonymixer.v1`` gRPC API (do not edit).

Produced from ``proto/faceanonymixer/v1/*.proto`` by ``scripts/generate_stubs.py``; light enough
for the client SDK (protobuf and grpcio only, never torch).
"""
'''
ROOT_INIT_TEXT = '''"""Generated gRPC stubs of FaceAnonyMixer's wire contract, for client and server alike."""
'''


def _googleapis_include() -> Path:
    """The folder holding ``google/rpc/status.proto`` (from googleapis-common-protos)."""
    spec = importlib.util.find_spec("google.rpc")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location)
        if (candidate / "status.proto").is_file():
            return candidate.parents[1]
    raise SystemExit("google/rpc/status.proto not found: install googleapis-common-protos")


def proto_files() -> list[Path]:
    """The .proto files to compile, relative to PROTO_ROOT, in a fixed order."""
    return sorted(path.relative_to(PROTO_ROOT) for path in (PROTO_ROOT / PACKAGE_DIR).glob("*.proto"))


def generate(out: Path) -> list[Path]:
    """Write the stubs under ``out`` and return the generated files, relative to ``out``."""
    from grpc_tools import protoc

    grpc_tools_include = Path(str(importlib.resources.files("grpc_tools") / "_proto"))
    package_out = out / OUTPUT_DIR
    package_out.mkdir(parents=True, exist_ok=True)
    for stale in sorted(package_out.iterdir()):
        if stale.is_file() and stale.name.endswith(GENERATED_SUFFIXES):
            stale.unlink()
    with tempfile.TemporaryDirectory() as scratch:
        _protoc(Path(scratch), grpc_tools_include, protoc)
        for made in sorted((Path(scratch) / PACKAGE_DIR).iterdir()):
            text = made.read_text(encoding="utf-8")
            for protoc_name, stub_name in REWRITES:
                text = protoc_name.sub(stub_name, text)
            (package_out / made.name).write_text(text, encoding="utf-8")
    (package_out / "__init__.py").write_text(INIT_TEXT, encoding="utf-8")
    (package_out.parent / "__init__.py").write_text(ROOT_INIT_TEXT, encoding="utf-8")
    return sorted(path.relative_to(out) for path in package_out.parent.rglob("*") if path.is_file())


def _protoc(out: Path, grpc_tools_include: Path, protoc: Any) -> None:

    protos = proto_files()
    if not protos:
        raise SystemExit(f"no .proto files under {PROTO_ROOT / PACKAGE_DIR}")
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{grpc_tools_include}",
        f"-I{_googleapis_include()}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *(path.as_posix() for path in protos),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed (see the messages above)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO_ROOT / "client_sdk",
        help="folder that receives faceanonymixer_proto/v1/ (default: client_sdk/ of this repository)",
    )
    options = parser.parse_args(argv)
    for path in generate(options.out):
        print(options.out / path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
