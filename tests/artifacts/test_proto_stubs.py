"""The committed gRPC stubs match the .proto files, and the contract keeps its agreed shape."""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from script_loader import load_script

REPO_ROOT = Path(__file__).resolve().parents[2]
COMMITTED = REPO_ROOT / "client_sdk"
PACKAGE_DIR = Path("faceanonymixer_proto")
SCRIPT = REPO_ROOT / "scripts" / "generate_stubs.py"
REGENERATE = f"run `python {SCRIPT.relative_to(REPO_ROOT).as_posix()}` and commit the result"

needs_grpc_tools = pytest.mark.skipif(
    importlib.util.find_spec("grpc_tools") is None,
    reason="grpc_tools (grpcio-tools, in the [dev] extra) is not installed: cannot regenerate the stubs",
)


def _load_script() -> ModuleType:
    return load_script(SCRIPT)


def _files(root: Path) -> dict[Path, bytes]:
    package = root / PACKAGE_DIR
    return {
        path.relative_to(root): path.read_bytes()
        for path in sorted(package.rglob("*"))
        if path.is_file() and path.suffix in {".py", ".pyi"}
    }


@needs_grpc_tools
def test_committed_stubs_match_regenerated(tmp_path: Path) -> None:
    generated = _load_script().generate(tmp_path)
    assert generated, "the script generated nothing"

    fresh = _files(tmp_path)
    committed = _files(COMMITTED)
    assert set(fresh) == set(generated)
    missing = sorted(str(path) for path in set(fresh) - set(committed))
    extra = sorted(str(path) for path in set(committed) - set(fresh))
    assert not missing, f"generated stubs not committed: {missing}; {REGENERATE}"
    assert not extra, f"committed stubs that the .proto files no longer produce: {extra}; {REGENERATE}"
    stale = sorted(str(path) for path in fresh if fresh[path] != committed[path])
    assert not stale, f"committed stubs differ from the .proto files: {stale}; {REGENERATE}"


@needs_grpc_tools
def test_generation_is_deterministic(tmp_path: Path) -> None:
    script = _load_script()
    script.generate(tmp_path / "a")
    script.generate(tmp_path / "b")
    assert _files(tmp_path / "a") == _files(tmp_path / "b")


def _file_descriptor(name: str) -> Any:
    return importlib.import_module(f"faceanonymixer_proto.v1.{name}_pb2").DESCRIPTOR


@pytest.mark.parametrize(
    ("proto", "service", "methods"),
    [
        ("protection", "ProtectionService", {"ProtectFace": (False, False), "ProtectFaces": (False, True)}),
        (
            "keys",
            "KeyService",
            {name: (False, False) for name in ("CreateKey", "RevokeKey", "GetKey", "ListKeys")},
        ),
    ],
)
def test_services_and_methods(proto: str, service: str, methods: dict[str, tuple[bool, bool]]) -> None:
    descriptor = _file_descriptor(proto)
    assert descriptor.package == "faceanonymixer.v1"
    assert service in descriptor.services_by_name, f"{service} missing from {proto}.proto"
    found = descriptor.services_by_name[service].methods_by_name
    assert set(found) == set(methods)
    for name, streaming in methods.items():
        method = found[name]
        assert (method.client_streaming, method.server_streaming) == streaming, f"{name} streaming flags"
        # buf style: <Rpc>Request / <Rpc>Response, defined in this package
        assert method.input_type.full_name == f"faceanonymixer.v1.{name}Request"
        assert method.output_type.full_name == f"faceanonymixer.v1.{name}Response"

    grpc_module = importlib.import_module(f"faceanonymixer_proto.v1.{proto}_pb2_grpc")
    for suffix in ("Stub", "Servicer"):
        assert hasattr(grpc_module, f"{service}{suffix}")
    assert hasattr(grpc_module, f"add_{service}Servicer_to_server")


def _all_enums(descriptor: Any) -> Iterator[Any]:
    yield from descriptor.enum_types_by_name.values()
    pending = list(descriptor.message_types_by_name.values())
    while pending:
        message = pending.pop()
        yield from message.enum_types
        pending.extend(message.nested_types)


@pytest.mark.parametrize("proto", ["protection", "keys"])
def test_enum_zero_values_are_unspecified(proto: str) -> None:
    enums = list(_all_enums(_file_descriptor(proto)))
    assert enums or proto == "keys"
    for enum in enums:
        zero = enum.values_by_number[0]
        assert zero.name.endswith("_UNSPECIFIED"), f"{enum.full_name}: zero value {zero.name}"


def _all_messages(descriptor: Any) -> Iterator[Any]:
    pending = list(descriptor.message_types_by_name.values())
    while pending:
        message = pending.pop()
        yield message
        pending.extend(message.nested_types)


def test_no_key_material_on_the_wire() -> None:
    key = _file_descriptor("keys").message_types_by_name["Key"]
    assert {field.name for field in key.fields} == {
        "key_id",
        "version",
        "state",
        "subject",
        "labels",
        "create_time",
        "revoke_time",
        "profile_id",
        "replaces_key_id",
        "replaced_by_key_id",
        "profile_revision",
    }
    for proto in ("protection", "keys"):
        for message in _all_messages(_file_descriptor(proto)):
            for field in message.fields:
                assert not any(word in field.name for word in ("secret", "material", "seed", "private")), (
                    f"{message.full_name}.{field.name} looks like key material"
                )


@pytest.mark.parametrize(
    ("proto", "message"), [("keys", "CreateKeyRequest"), ("protection", "ProtectFaceRequest")]
)
def test_messages_pickle_under_their_own_module(proto: str, message: str) -> None:
    # Ray Serve pickles requests between processes: a class naming protoc's module path
    # (faceanonymixer.v1) instead of the stubs' package cannot be found again
    import pickle

    module = importlib.import_module(f"faceanonymixer_proto.v1.{proto}_pb2")
    value = getattr(module, message)()
    assert type(value).__module__ == module.__name__
    assert pickle.loads(pickle.dumps(value)) == value


@pytest.mark.parametrize(("proto", "service"), [("keys", "KeyService"), ("protection", "ProtectionService")])
def test_the_servers_register_the_wire_names(proto: str, service: str) -> None:
    # the stubs' Python package is faceanonymixer_proto; the services on the wire stay faceanonymixer.v1
    import inspect

    source = inspect.getsource(importlib.import_module(f"faceanonymixer_proto.v1.{proto}_pb2_grpc"))
    assert f"'faceanonymixer.v1.{service}'" in source
    assert "faceanonymixer_proto.v1." + service not in source
