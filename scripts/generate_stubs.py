"""Generate the Python gRPC stubs of the wire contract in ``proto/``.

Runs the protoc bundled with grpcio-tools over ``proto/faceanonymixer/v1/*.proto`` and writes
``faceanonymixer/v1/{name}_pb2.py``, ``{name}_pb2.pyi`` and ``{name}_pb2_grpc.py`` (plus the
package ``__init__.py``) under the output folder, ``server`` by default. The output depends only on
the .proto files and the pinned grpcio-tools version, so regenerating must give the committed files
byte for byte (``tests/test_proto_stubs.py`` checks it)::

    python scripts/generate_stubs.py            # refresh server/faceanonymixer/v1
    python scripts/generate_stubs.py --out DIR  # write to DIR/faceanonymixer/v1 instead
"""

from __future__ import annotations

import argparse
import importlib.resources
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PROTO_ROOT = REPO_ROOT / "proto"
#: the proto package whose files are compiled, as a path below PROTO_ROOT
PACKAGE_DIR = Path("faceanonymixer") / "v1"
#: generated files, by suffix; stale ones in the output package are removed before generating
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")
INIT_TEXT = '''"""Generated wire types of the ``faceanonymixer.v1`` gRPC API (do not edit).

Produced from ``proto/faceanonymixer/v1/*.proto`` by ``scripts/generate_stubs.py``; light enough
for the client SDK (protobuf and grpcio only, never torch).
"""
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
    package_out = out / PACKAGE_DIR
    package_out.mkdir(parents=True, exist_ok=True)
    for stale in sorted(package_out.iterdir()):
        if stale.is_file() and stale.name.endswith(GENERATED_SUFFIXES):
            stale.unlink()

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
    (package_out / "__init__.py").write_text(INIT_TEXT, encoding="utf-8")
    return sorted(path.relative_to(out) for path in package_out.iterdir() if path.is_file())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO_ROOT / "server",
        help="folder that receives faceanonymixer/v1/ (default: server/ of this repository)",
    )
    options = parser.parse_args(argv)
    for path in generate(options.out):
        print(options.out / path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
