"""``faceanonymixer export tensorrt``: engine builds, the engine cache and the torch runtime wrapper.

Three kinds of test:

* plain logic (cache key, profile shapes, manifest, precision fallback, typed errors): run anywhere;
* the builder and the runtime against ``FakeTensorRT``, a TEST DOUBLE of the ``tensorrt`` module
  that implements only the calls this code makes and records them. It checks that the right
  flags, profiles and serialisation are requested; it proves nothing about real TensorRT;
* real TensorRT on a CUDA GPU (``gpu`` mark): build an engine from a tiny exported conv net and
  compare its outputs with PyTorch. Skipped, with the reason, without CUDA or TensorRT.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import sys
import types
import warnings
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pytest
import torch
import typer
from typer.testing import CliRunner

from faceanonymixer.cli.tensorrt import tensorrt_command
from faceanonymixer.models.onnx.manifest import MANIFEST, Manifest, ModelEntry, TensorSpec
from faceanonymixer_export import tensorrt_build, tensorrt_runtime
from faceanonymixer_export.tensorrt_build import (
    BatchRange,
    Precision,
    ProfileShape,
    build_engines,
    cache_paths,
    engine_cache_key,
    profile_shapes,
    read_manifest,
    resolve_precision,
)
from faceanonymixer_export.tensorrt_common import (
    EXIT_UNAVAILABLE,
    GpuIdentity,
    TensorRTError,
    TensorRTInputError,
    TensorRTUnavailableError,
    require_cuda_gpu,
    require_tensorrt,
)
from faceanonymixer_export.tensorrt_runtime import TensorRTEngine

H100 = GpuIdentity("NVIDIA H100 80GB HBM3", (9, 0))
T4 = GpuIdentity("Tesla T4", (7, 5))

runner = CliRunner()


def _cli() -> typer.Typer:
    """A local app with the command as ``export tensorrt``-like subcommand ``tensorrt``."""
    app = typer.Typer(pretty_exceptions_enable=False)

    @app.callback()
    def main() -> None:
        """Group, so that ``tensorrt`` stays a named subcommand."""

    app.command("tensorrt")(tensorrt_command)
    return app


def _entry(name: str, content: bytes, shape: list[Any]) -> ModelEntry:
    return ModelEntry(
        name=name,
        role="encoder",
        file=f"{name}.onnx",
        sha256=hashlib.sha256(content).hexdigest(),
        exporter="dynamo",
        opset=18,
        inputs=[TensorSpec("image", shape)],
        outputs=[TensorSpec("latent", ["batch", 512])],
        source_fingerprint="0" * 64,
    )


def _write_onnx_dir(
    root: Path, *, models: dict[str, bytes] | None = None, shape: list[Any] | None = None
) -> Path:
    """An ONNX folder as the export leaves it: model files and manifest.json (written with the
    export's own dataclasses; the files are stand-in bytes unless a test writes a real graph)."""
    root.mkdir(parents=True, exist_ok=True)
    entries = []
    for name, content in (models or {"encoder": b"onnx bytes of the encoder"}).items():
        (root / f"{name}.onnx").write_bytes(content)
        entries.append(_entry(name, content, shape or ["batch", 3, 64, 64]))
    (root / MANIFEST).write_text(json.dumps(Manifest(profile="embedded", models=entries).to_json()))
    return root


# ---- the cache key -----------------------------------------------------------------------------

KEY_ARGS: dict[str, Any] = {
    "gpu": H100,
    "tensorrt_version": "10.3.0",
    "onnx_sha256": "a" * 64,
    "precision": "fp16",
    "batch": BatchRange(1, 4, 16),
}


def test_cache_key_is_deterministic() -> None:
    assert engine_cache_key(**KEY_ARGS).digest == engine_cache_key(**dict(KEY_ARGS)).digest
    assert len(engine_cache_key(**KEY_ARGS).digest) == 64


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("gpu", GpuIdentity("NVIDIA H100 PCIe", (9, 0))),  # same architecture, another SKU
        ("gpu", GpuIdentity("NVIDIA H100 80GB HBM3", (9, 1))),  # same name, other compute capability
        ("tensorrt_version", "10.3.1"),
        ("onnx_sha256", "b" * 64),
        ("precision", "fp32"),
        ("batch", BatchRange(1, 8, 16)),
        ("batch", BatchRange(2, 4, 16)),
        ("batch", BatchRange(1, 4, 32)),
    ],
)
def test_cache_key_changes_with_each_input(field: str, value: Any) -> None:
    assert engine_cache_key(**{**KEY_ARGS, field: value}).digest != engine_cache_key(**KEY_ARGS).digest


def test_cache_file_names_carry_the_key(tmp_path: Path) -> None:
    key = engine_cache_key(**KEY_ARGS)
    engine, sidecar = cache_paths(tmp_path, "ffhq/generator v2", key)
    assert engine.name == f"ffhq_generator_v2-{key.short}.engine"
    assert sidecar.name == f"ffhq_generator_v2-{key.short}.json"


# ---- profile shapes from the manifest ----------------------------------------------------------


@pytest.mark.parametrize("symbol", ["batch", None, -1, 0])
def test_profile_replaces_the_symbolic_batch(symbol: Any) -> None:
    shapes = profile_shapes({"image": [symbol, 3, 64, 64], "z": [symbol, 512]}, BatchRange(1, 4, 16))
    assert shapes == {
        "image": ProfileShape((1, 3, 64, 64), (4, 3, 64, 64), (16, 3, 64, 64)),
        "z": ProfileShape((1, 512), (4, 512), (16, 512)),
    }


def test_profile_keeps_a_fixed_batch() -> None:
    shapes = profile_shapes({"w": [1, 18, 512]}, BatchRange(1, 4, 16))
    assert shapes["w"] == ProfileShape((1, 18, 512), (1, 18, 512), (1, 18, 512))


@pytest.mark.parametrize("shape", [["batch", "height", 64], [], ["batch", 3, None]])
def test_profile_refuses_other_symbolic_dimensions(shape: list[Any]) -> None:
    with pytest.raises(TensorRTInputError):
        profile_shapes({"image": shape}, BatchRange(1, 4, 16))


@pytest.mark.parametrize(("low", "opt", "high"), [(0, 4, 16), (4, 2, 16), (1, 32, 16), (8, 8, 4)])
def test_batch_sizes_must_be_in_order(low: int, opt: int, high: int) -> None:
    with pytest.raises(TensorRTInputError, match="min <= opt <= max"):
        BatchRange(low, opt, high)


def test_manifest_with_profiles_computed_from_it(tmp_path: Path) -> None:
    onnx_dir = _write_onnx_dir(tmp_path / "onnx", models={"encoder": b"e", "generator": b"g"})
    models = read_manifest(onnx_dir)
    assert [model.name for model in models] == ["encoder", "generator"]
    assert models[0].path == onnx_dir / "encoder.onnx"
    assert models[0].inputs == {"image": ("batch", 3, 64, 64)}
    assert profile_shapes(models[0].inputs, BatchRange(2, 4, 8))["image"].max == (8, 3, 64, 64)


@pytest.mark.parametrize(
    "document",
    ["not json", "{}", '{"format_version": 1, "profile": "embedded", "models": [{"name": "a"}]}'],
)
def test_malformed_manifest_is_an_input_error(tmp_path: Path, document: str) -> None:
    (tmp_path / MANIFEST).write_text(document)
    with pytest.raises(TensorRTInputError):
        read_manifest(tmp_path)


def test_manifest_may_not_point_outside_its_folder(tmp_path: Path) -> None:
    entry = dataclasses.replace(_entry("encoder", b"x", ["batch", 3]), file="../encoder.onnx")
    (tmp_path / MANIFEST).write_text(json.dumps(Manifest(profile="embedded", models=[entry]).to_json()))
    with pytest.raises(TensorRTInputError, match="not a plain file name"):
        read_manifest(tmp_path)


# ---- precision ---------------------------------------------------------------------------------


def _flags(*names: str) -> types.SimpleNamespace:
    return types.SimpleNamespace(**{name: f"BuilderFlag.{name}" for name in names})


TRT10 = _flags("FP16", "BF16", "TF32", "INT8")
TRT11 = _flags("TF32")  # TensorRT 11 removed the weak-typing precision flags


@pytest.mark.parametrize(
    ("requested", "flags", "gpu", "built", "set_flags", "clear_flags", "noted"),
    [
        (Precision.AUTO, TRT10, H100, "fp16", ("FP16",), (), False),
        (Precision.FP16, TRT10, H100, "fp16", ("FP16",), (), False),
        (Precision.BF16, TRT10, H100, "bf16", ("BF16",), (), False),
        (Precision.BF16, TRT10, T4, "fp16", ("FP16",), (), True),  # no BF16 before Ampere
        (Precision.BF16, _flags("FP16", "TF32"), H100, "fp16", ("FP16",), (), True),  # TensorRT 8.5
        (Precision.FP32, TRT10, H100, "fp32", (), ("TF32",), False),
        (Precision.AUTO, TRT11, H100, "fp32", (), ("TF32",), True),
        (Precision.BF16, TRT11, H100, "fp32", (), ("TF32",), True),
    ],
)
def test_precision_falls_back_with_a_message(
    requested: Precision,
    flags: Any,
    gpu: GpuIdentity,
    built: str,
    set_flags: tuple[str, ...],
    clear_flags: tuple[str, ...],
    noted: bool,
) -> None:
    choice = resolve_precision(requested, builder_flags=flags, tensorrt_version="10.x", gpu=gpu)
    assert (choice.built, choice.set_flags, choice.clear_flags) == (built, set_flags, clear_flags)
    assert (choice.note is not None) == noted
    if noted:
        assert choice.note is not None and f"building {built}" in choice.note


# ---- the typed errors without TensorRT or CUDA -------------------------------------------------


def test_without_tensorrt_the_error_is_typed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` now raises ImportError
    with pytest.raises(TensorRTUnavailableError, match="TensorRT is not installed") as caught:
        require_tensorrt()
    assert caught.value.exit_code == EXIT_UNAVAILABLE
    assert "\n" not in str(caught.value)


def test_an_old_tensorrt_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="8.6.1"))
    with pytest.raises(TensorRTUnavailableError, match=r"8\.6\.1 is too old"):
        require_tensorrt()


def test_without_cuda_the_error_is_typed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(TensorRTUnavailableError, match="no CUDA GPU"):
        require_cuda_gpu()


def test_cli_without_tensorrt_says_so_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    onnx_dir = _write_onnx_dir(tmp_path / "onnx")
    result = runner.invoke(_cli(), ["tensorrt", str(onnx_dir), "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == EXIT_UNAVAILABLE
    assert result.stdout == ""
    assert result.stderr.startswith("error: TensorRT is not installed") and result.stderr.count("\n") == 1
    assert not (tmp_path / "cache").exists()


def test_cli_without_cuda_says_so_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", FakeTensorRT())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    onnx_dir = _write_onnx_dir(tmp_path / "onnx")
    result = runner.invoke(_cli(), ["tensorrt", str(onnx_dir), "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == EXIT_UNAVAILABLE
    assert result.stderr.startswith("error: no CUDA GPU") and result.stderr.count("\n") == 1


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--min-batch", "8", "--opt-batch", "4"], "min <= opt <= max"),
        (["--model", "nope"], "no model nope in the manifest"),
    ],
)
def test_cli_bad_input_is_exit_2_before_tensorrt_is_needed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, arguments: list[str], message: str
) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # bad input is reported as such even here
    onnx_dir = _write_onnx_dir(tmp_path / "onnx")
    result = runner.invoke(_cli(), ["tensorrt", str(onnx_dir), *arguments])
    assert result.exit_code == 2
    assert message in result.stderr and result.stderr.count("\n") == 1


def test_cli_without_a_manifest(tmp_path: Path) -> None:
    result = runner.invoke(_cli(), ["tensorrt", str(tmp_path)])
    assert result.exit_code == 2
    assert (
        result.stderr.startswith(f"error: {tmp_path / MANIFEST} not found") and result.stderr.count("\n") == 1
    )


# ---- the builder against a TEST DOUBLE of tensorrt --------------------------------------------


class FakeTensorRT(types.ModuleType):
    """TEST DOUBLE of the ``tensorrt`` module — not TensorRT. Implements only the calls that
    ``tensorrt_build`` makes (Builder, OnnxParser, network inputs, builder config, optimisation
    profile, build_serialized_network) and records each in ``calls``."""

    def __init__(
        self,
        *,
        version: str = "10.3.0",
        flags: tuple[str, ...] = ("FP16", "BF16", "TF32"),
        network_inputs: tuple[str, ...] = ("image",),
        parse_ok: bool = True,
        build_ok: bool = True,
    ) -> None:
        super().__init__("tensorrt")
        self.__version__ = version
        self.calls: list[tuple[Any, ...]] = []
        self.BuilderFlag = _flags(*flags)
        calls = self.calls

        class Logger:
            WARNING = "WARNING"

            def __init__(self, level: str) -> None:
                calls.append(("Logger", level))

        class Network:
            num_inputs = len(network_inputs)

            def get_input(self, index: int) -> Any:
                return types.SimpleNamespace(name=network_inputs[index])

        class OnnxParser:
            num_errors = 0 if parse_ok else 2

            def __init__(self, network: Network, logger: Logger) -> None:
                pass

            def parse_from_file(self, path: str) -> bool:
                calls.append(("parse_from_file", path))
                return parse_ok

            def get_error(self, index: int) -> str:
                return f"node {index}: unsupported\noperator"

        class Profile:
            def set_shape(self, name: str, low: Any, opt: Any, high: Any) -> None:
                calls.append(("set_shape", name, tuple(low), tuple(opt), tuple(high)))

        class Config:
            def add_optimization_profile(self, profile: Profile) -> int:
                calls.append(("add_optimization_profile",))
                return 0

            def set_flag(self, flag: str) -> None:
                calls.append(("set_flag", flag))

            def clear_flag(self, flag: str) -> None:
                calls.append(("clear_flag", flag))

        class Builder:
            def __init__(self, logger: Logger) -> None:
                pass

            def create_network(self, flags: int) -> Network:
                calls.append(("create_network", flags))
                return Network()

            def create_builder_config(self) -> Config:
                return Config()

            def create_optimization_profile(self) -> Profile:
                return Profile()

            def build_serialized_network(self, network: Network, config: Config) -> bytearray | None:
                calls.append(("build_serialized_network",))
                # IHostMemory is a buffer; a bytearray stands in for it
                return bytearray(b"serialized engine") if build_ok else None

        self.Logger = Logger
        self.OnnxParser = OnnxParser
        self.Builder = Builder

    def named(self, name: str) -> list[tuple[Any, ...]]:
        return [call for call in self.calls if call[0] == name]


@pytest.fixture
def gpu(monkeypatch: pytest.MonkeyPatch) -> GpuIdentity:
    """Pretend the current CUDA device is an H100 (the builder's only question to CUDA)."""
    monkeypatch.setattr(tensorrt_build, "require_cuda_gpu", lambda: H100)
    return H100


def _install(monkeypatch: pytest.MonkeyPatch, fake: FakeTensorRT) -> FakeTensorRT:
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    return fake


def test_builder_requests_profile_flags_and_serialisation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gpu: GpuIdentity
) -> None:
    fake = _install(monkeypatch, FakeTensorRT())
    onnx_dir = _write_onnx_dir(tmp_path / "onnx")
    arguments = ["tensorrt", str(onnx_dir), "--cache-dir", str(tmp_path / "cache"), "--json"]
    result = runner.invoke(_cli(), [*arguments, "--min-batch", "2", "--opt-batch", "4", "--max-batch", "8"])
    assert result.exit_code == 0, result.output

    assert fake.named("create_network") == [("create_network", 0)]
    assert fake.named("parse_from_file") == [("parse_from_file", str(onnx_dir / "encoder.onnx"))]
    assert fake.named("set_shape") == [("set_shape", "image", (2, 3, 64, 64), (4, 3, 64, 64), (8, 3, 64, 64))]
    assert fake.named("add_optimization_profile") == [("add_optimization_profile",)]
    assert fake.named("set_flag") == [("set_flag", "BuilderFlag.FP16")]  # auto → fp16 on TensorRT 10
    assert fake.named("clear_flag") == []
    assert fake.named("build_serialized_network") == [("build_serialized_network",)]

    (record,) = json.loads(result.stdout)["engines"]
    assert record["model"] == "encoder" and record["precision"] == "fp16" and record["cached"] is False
    engine, sidecar = Path(record["engine"]), Path(record["sidecar"])
    assert engine.read_bytes() == b"serialized engine"
    assert record["key"][:16] in engine.name
    meta = json.loads(sidecar.read_text())
    assert meta["key"] == record["key"]
    assert meta["gpu"] == H100.name and meta["compute_capability"] == [9, 0] and meta["tensorrt"] == "10.3.0"
    assert meta["onnx_sha256"] == hashlib.sha256(b"onnx bytes of the encoder").hexdigest()
    assert meta["engine_sha256"] == hashlib.sha256(b"serialized engine").hexdigest()
    assert meta["batch"] == [2, 4, 8] and meta["profile"]["image"]["opt"] == [4, 3, 64, 64]
    assert not list((tmp_path / "cache").glob(".*.tmp"))


def test_the_cache_is_reused_and_keyed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gpu: GpuIdentity
) -> None:
    fake = _install(monkeypatch, FakeTensorRT())
    onnx_dir = _write_onnx_dir(tmp_path / "onnx")
    cache = tmp_path / "cache"

    def build(**options: Any) -> list[tensorrt_build.EngineRecord]:
        return build_engines(onnx_dir, cache, batch=BatchRange(1, 4, 16), **options)

    (first,) = build()
    (again,) = build()
    assert again.cached and again.engine == first.engine
    assert len(fake.named("build_serialized_network")) == 1

    (rebuilt,) = build(rebuild=True)
    assert not rebuilt.cached and len(fake.named("build_serialized_network")) == 2

    (fp32,) = build(precision=Precision.FP32)  # another precision: another key, TF32 off
    assert fp32.engine != first.engine and fake.named("clear_flag") == [("clear_flag", "BuilderFlag.TF32")]

    first.engine.write_bytes(b"truncated")  # a damaged engine is rebuilt, not reused
    (repaired,) = build()
    assert not repaired.cached and first.engine.read_bytes() == b"serialized engine"
    assert len(list(cache.glob("*.engine"))) == 2


def test_fallback_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gpu: GpuIdentity) -> None:
    fake = _install(monkeypatch, FakeTensorRT(version="11.0.0", flags=("TF32",)))
    onnx_dir = _write_onnx_dir(tmp_path / "onnx")
    result = runner.invoke(
        _cli(), ["tensorrt", str(onnx_dir), "--cache-dir", str(tmp_path / "c"), "--precision", "bf16"]
    )
    assert result.exit_code == 0, result.output
    assert "note: bf16 requested, but TensorRT 11.0.0 has no BF16 builder flag" in result.stderr
    assert fake.named("set_flag") == [] and fake.named("clear_flag") == [("clear_flag", "BuilderFlag.TF32")]
    assert "  fp32  " in result.stdout


@pytest.mark.parametrize(
    ("fake", "exit_code", "message"),
    [
        (
            FakeTensorRT(parse_ok=False),
            1,
            "TensorRT cannot parse encoder.onnx: node 0: unsupported operator; node 1",
        ),
        (FakeTensorRT(build_ok=False), 1, "TensorRT could not build an engine from encoder.onnx"),
        (
            FakeTensorRT(network_inputs=("pixels",)),
            2,
            "has inputs ['pixels'] but the manifest lists ['image']",
        ),
    ],
)
def test_build_failures_are_one_line_errors(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    gpu: GpuIdentity,
    fake: FakeTensorRT,
    exit_code: int,
    message: str,
) -> None:
    _install(monkeypatch, fake)
    onnx_dir = _write_onnx_dir(tmp_path / "onnx")
    result = runner.invoke(_cli(), ["tensorrt", str(onnx_dir), "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == exit_code
    *progress, error = result.stderr.splitlines()  # "building …" then the one-line error
    assert progress == ["building encoder (fp16, batch 1/4/16) on NVIDIA H100 80GB HBM3"]
    assert error.startswith("error: ") and message in error
    assert not list((tmp_path / "cache").glob("*.engine"))


def test_a_changed_onnx_file_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gpu: GpuIdentity
) -> None:
    fake = _install(monkeypatch, FakeTensorRT())
    onnx_dir = _write_onnx_dir(tmp_path / "onnx")
    (onnx_dir / "encoder.onnx").write_bytes(b"re-exported without updating the manifest")
    with pytest.raises(TensorRTInputError, match="re-export"):
        build_engines(onnx_dir, tmp_path / "cache", batch=BatchRange(1, 4, 16))
    assert fake.named("build_serialized_network") == []


# ---- the runtime against a TEST DOUBLE of an engine --------------------------------------------


class FakeEngine:
    """TEST DOUBLE of a deserialised ``ICudaEngine`` and its execution context — not TensorRT.
    One input ``image`` (N, 3) with a batch profile 1..4, one output ``score`` (N, 2); records the
    context calls, computes nothing."""

    def __init__(self, trt: Any) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self._trt = trt
        self.num_io_tensors = 2

    def get_tensor_name(self, index: int) -> str:
        return ["image", "score"][index]

    def get_tensor_mode(self, name: str) -> str:
        return self._trt.TensorIOMode.INPUT if name == "image" else self._trt.TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name: str) -> str:
        return self._trt.DataType.FLOAT if name == "image" else self._trt.DataType.HALF

    def get_tensor_profile_shape(self, name: str, profile: int) -> list[tuple[int, ...]]:
        return [(1, 3), (2, 3), (4, 3)]

    def create_execution_context(self) -> Any:
        engine, calls = self, self.calls
        shape: dict[str, tuple[int, ...]] = {"image": (0, 3)}

        class Context:
            def set_input_shape(self, name: str, dims: tuple[int, ...]) -> bool:
                calls.append(("set_input_shape", name, dims))
                low, _, high = engine.get_tensor_profile_shape(name, 0)
                shape[name] = dims
                return low <= dims <= high

            def set_tensor_address(self, name: str, address: int) -> bool:
                calls.append(("set_tensor_address", name, address))
                return True

            def get_tensor_shape(self, name: str) -> tuple[int, ...]:
                return (shape["image"][0], 2)

            def execute_async_v3(self, stream_handle: int) -> bool:
                calls.append(("execute_async_v3", stream_handle))
                return True

        return Context()


class FakeStream:
    """TEST DOUBLE of ``torch.cuda.Stream``: a handle, recorded and awaited events."""

    def __init__(self, handle: int) -> None:
        self.cuda_stream = handle
        self.waited: list[Any] = []

    def record_event(self) -> str:
        return f"event on {self.cuda_stream}"

    def wait_event(self, event: Any) -> None:
        self.waited.append(event)


@pytest.fixture
def cpu_as_cuda(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, FakeStream]]:
    """torch.cuda's device guard and current stream replaced, so the wrapper runs on CPU tensors."""
    streams = {"current": FakeStream(1234)}
    monkeypatch.setattr(torch.cuda, "device", lambda device: nullcontext())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: streams["current"])
    yield streams


def _fake_trt_enums() -> Any:
    return types.SimpleNamespace(
        TensorIOMode=types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT"),
        DataType=types.SimpleNamespace(FLOAT="FLOAT", HALF="HALF"),
    )


def test_runtime_binds_by_name_and_enqueues_on_the_current_stream(cpu_as_cuda: dict[str, FakeStream]) -> None:
    trt = _fake_trt_enums()
    fake = FakeEngine(trt)
    engine = TensorRTEngine(fake, trt=trt, device=torch.device("cpu"))
    assert engine.input_names == ("image",) and engine.output_names == ("score",)

    image = torch.ones(3, 3, dtype=torch.float32)
    outputs = engine({"image": image})
    score = outputs["score"]
    assert score.shape == (3, 2) and score.dtype == torch.float16
    assert fake.calls == [
        ("set_input_shape", "image", (3, 3)),
        ("set_tensor_address", "image", image.data_ptr()),  # already float32 and contiguous: no copy
        ("set_tensor_address", "score", score.data_ptr()),
        ("execute_async_v3", 1234),
    ]

    cpu_as_cuda["current"] = other = FakeStream(99)  # the next call on another stream waits for the first
    engine({"image": torch.ones(1, 3, dtype=torch.float64)})  # cast to the engine's float32
    assert other.waited == ["event on 1234"] and fake.calls[-1] == ("execute_async_v3", 99)


def test_runtime_refuses_shapes_outside_the_profile_and_wrong_names(
    cpu_as_cuda: dict[str, FakeStream],
) -> None:
    trt = _fake_trt_enums()
    engine = TensorRTEngine(FakeEngine(trt), trt=trt, device=torch.device("cpu"))
    with pytest.raises(TensorRTInputError, match=r"outside the engine's profile .*\(4, 3\)"):
        engine({"image": torch.ones(5, 3)})
    with pytest.raises(TensorRTInputError, match="takes inputs"):
        engine({"pixels": torch.ones(1, 3)})


def test_runtime_refuses_a_damaged_engine_file(tmp_path: Path) -> None:
    engine = tmp_path / "m-0123.engine"
    engine.write_bytes(b"half an engine")
    engine.with_suffix(".json").write_text(json.dumps({"engine_sha256": "0" * 64}))
    with pytest.raises(TensorRTError, match="is damaged"):
        TensorRTEngine.from_file(engine)


def test_runtime_refuses_an_engine_built_elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", FakeTensorRT(version="10.4.0"))
    monkeypatch.setattr(tensorrt_runtime, "require_cuda_gpu", lambda: H100)
    engine = tmp_path / "m-0123.engine"
    engine.write_bytes(b"engine")
    meta = {
        "engine_sha256": hashlib.sha256(b"engine").hexdigest(),
        "tensorrt": "10.3.0",
        "gpu": H100.name,
        "compute_capability": [9, 0],
    }
    engine.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(TensorRTError, match=r"built for TensorRT 10\.3\.0 .* this is TensorRT 10\.4\.0"):
        TensorRTEngine.from_file(engine)


# ---- real TensorRT on a CUDA GPU ---------------------------------------------------------------

_NO_GPU_REASON = (
    "needs a CUDA GPU"
    if not torch.cuda.is_available()
    else "needs TensorRT 10+ (pip install tensorrt)"
    if importlib.util.find_spec("tensorrt") is None
    else ""
)
requires_tensorrt_gpu = pytest.mark.skipif(
    bool(_NO_GPU_REASON), reason=_NO_GPU_REASON or "CUDA and TensorRT found"
)


class _TinyNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 3, padding=1)
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.body(image)


@pytest.fixture
def tiny_onnx(tmp_path: Path) -> tuple[torch.nn.Module, Path]:
    """A small conv net exported with a symbolic batch, and its manifest."""
    torch.manual_seed(0)
    net = _TinyNet().eval()
    onnx_dir = tmp_path / "onnx"
    onnx_dir.mkdir()
    with warnings.catch_warnings():
        # the TorchScript exporter needs neither onnx nor onnxscript; its deprecation is not ours
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            net,
            (torch.randn(2, 3, 16, 16),),
            str(onnx_dir / "tiny.onnx"),
            input_names=["image"],
            output_names=["features"],
            dynamic_axes={"image": {0: "batch"}, "features": {0: "batch"}},
            dynamo=False,
        )
    data = (onnx_dir / "tiny.onnx").read_bytes()
    entry = dataclasses.replace(
        _entry("tiny", data, ["batch", 3, 16, 16]),
        exporter="torchscript",
        outputs=[TensorSpec("features", ["batch", 4, 16, 16])],
    )
    (onnx_dir / MANIFEST).write_text(json.dumps(Manifest(profile="test", models=[entry]).to_json()))
    return net, onnx_dir


@pytest.mark.gpu
@requires_tensorrt_gpu
@pytest.mark.parametrize(("precision", "tolerance"), [(Precision.FP32, 1e-4), (Precision.AUTO, 2e-2)])
def test_real_engine_matches_pytorch(
    tiny_onnx: tuple[torch.nn.Module, Path], tmp_path: Path, precision: Precision, tolerance: float
) -> None:
    net, onnx_dir = tiny_onnx
    (record,) = build_engines(onnx_dir, tmp_path / "cache", batch=BatchRange(1, 2, 4), precision=precision)
    engine = TensorRTEngine.from_file(record.engine)
    net = net.cuda()
    for batch in (1, 3, 4):
        image = torch.randn(batch, 3, 16, 16, device="cuda")
        features = engine({"image": image})["features"]
        with torch.no_grad():
            expected = net(image)
        torch.testing.assert_close(features.float(), expected, atol=tolerance, rtol=tolerance)
    with pytest.raises(TensorRTInputError, match="outside the engine's profile"):
        engine({"image": torch.randn(5, 3, 16, 16, device="cuda")})
    (again,) = build_engines(onnx_dir, tmp_path / "cache", batch=BatchRange(1, 2, 4), precision=precision)
    assert again.cached and again.engine == record.engine
