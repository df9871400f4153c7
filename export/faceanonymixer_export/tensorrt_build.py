"""TensorRT engines from the exported ONNX models: one optimisation profile per model, reduced
precision where the installed TensorRT offers it, and a cache keyed by what an engine depends on.

Flow: ``manifest.json`` (written by the ONNX export) → per model, profile shapes with the symbolic
batch dimension replaced by min/opt/max → ``tensorrt.OnnxParser.parse_from_file`` → builder config
(profile, precision flags) → ``build_serialized_network`` → ``CACHE/<model>-<key>.engine`` plus a
JSON sidecar. Everything that can be checked without TensorRT (options, manifest, shapes) is
checked first, so a CPU machine still reports bad input as bad input.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from faceanonymixer.models.onnx import manifest as onnx_manifest
from faceanonymixer.utils.errors import ModelFormatError
from faceanonymixer.utils.files import file_sha256, write_atomic
from faceanonymixer_export.tensorrt_common import (
    GpuIdentity,
    Precision,
    TensorRTError,
    TensorRTInputError,
    require_cuda_gpu,
    require_tensorrt,
)

__all__ = ["BatchRange", "EngineRecord", "Precision", "ProfileShape", "build_engines", "engine_cache_key"]

#: bump when the build recipe changes (flags, parser options), so older cached engines are not reused
CACHE_FORMAT = 1

#: an ONNX dimension: a size, or a symbol (a name; None, 0 or negative: unknown) such as the batch
Dim = int | str | None


# ---- the manifest ------------------------------------------------------------------------------


@dataclass(frozen=True)
class OnnxModel:
    """What a build needs of one manifest entry: its ONNX file and its input/output shapes."""

    name: str
    path: Path
    sha256: str
    inputs: dict[str, tuple[Dim, ...]]
    outputs: dict[str, tuple[Dim, ...]]


def read_manifest(onnx_dir: Path) -> list[OnnxModel]:
    """The models of ``onnx_dir/manifest.json``, as the ONNX export wrote it."""
    try:
        manifest = onnx_manifest.read_manifest(onnx_dir)
    except ModelFormatError as exc:  # here a bad export folder is bad input to this command
        raise TensorRTInputError(str(exc)) from None
    models = []
    for entry in manifest.models:
        if Path(entry.file).name != entry.file:  # a manifest may not point outside its folder
            raise TensorRTInputError(f"model file {entry.file!r} is not a plain file name")
        models.append(
            OnnxModel(
                name=entry.name,
                path=onnx_dir / entry.file,
                sha256=entry.sha256.lower(),
                inputs={spec.name: tuple(spec.shape) for spec in entry.inputs},
                outputs={spec.name: tuple(spec.shape) for spec in entry.outputs},
            )
        )
    return models


def select_models(models: Sequence[OnnxModel], names: Iterable[str] | None) -> list[OnnxModel]:
    """The models named (all of them for None), in manifest order."""
    wanted = list(names or [])
    if not wanted:
        return list(models)
    known = {model.name for model in models}
    unknown = [name for name in wanted if name not in known]
    if unknown:
        raise TensorRTInputError(
            f"no model {', '.join(unknown)} in the manifest (it has {', '.join(sorted(known))})"
        )
    return [model for model in models if model.name in wanted]


# ---- optimisation profiles ---------------------------------------------------------------------


@dataclass(frozen=True)
class BatchRange:
    """The batch sizes an engine accepts (min..max) and the one TensorRT tunes its kernels for."""

    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise TensorRTInputError(
                f"batch sizes must satisfy 1 <= min <= opt <= max (got min {self.min}, "
                f"opt {self.opt}, max {self.max})"
            )


@dataclass(frozen=True)
class ProfileShape:
    """The min/opt/max shapes of one input in an optimisation profile."""

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]


def _is_symbolic(dim: Dim) -> bool:
    # the export writes a named dimension as its name and an unnamed unknown one as 0
    return dim is None or isinstance(dim, str) or dim <= 0


def profile_shapes(inputs: Mapping[str, Sequence[Dim]], batch: BatchRange) -> dict[str, ProfileShape]:
    """Each input's min/opt/max shape: a symbolic leading dimension becomes the batch sizes; a fixed
    one stays as it is. Any other symbolic dimension has no size to tune for, so it is refused."""
    shapes = {}
    for name, shape in inputs.items():
        if not shape:
            raise TensorRTInputError(f"input {name!r} is a scalar: no batch dimension to profile")
        rest = tuple(shape[1:])
        if any(_is_symbolic(dim) for dim in rest):
            raise TensorRTInputError(
                f"input {name!r} has shape {list(shape)}: only its first (batch) dimension may be symbolic"
            )
        fixed = tuple(int(dim) for dim in rest)  # type: ignore[arg-type]  # checked just above
        lead = shape[0]
        if _is_symbolic(lead):
            shapes[name] = ProfileShape((batch.min, *fixed), (batch.opt, *fixed), (batch.max, *fixed))
        else:
            static = (int(lead), *fixed)  # type: ignore[arg-type]  # not symbolic: an int
            shapes[name] = ProfileShape(static, static, static)
    return shapes


# ---- precision ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PrecisionChoice:
    """What a build will use: the label, the builder flags to set and clear, and why it differs
    from the request (None when it does not)."""

    built: str
    set_flags: tuple[str, ...] = ()
    clear_flags: tuple[str, ...] = ()
    note: str | None = None


def resolve_precision(
    requested: Precision, *, builder_flags: Any, tensorrt_version: str, gpu: GpuIdentity
) -> PrecisionChoice:
    """The precision to build with, from the flags this TensorRT has (``trt.BuilderFlag``).

    BF16 needs the BF16 flag (TensorRT 9/10) and compute capability 8.0; FP16 needs the FP16 flag.
    TensorRT 11 removed both (networks are strongly typed, precision comes from the ONNX graph), so
    a request falls back step by step (bf16 → fp16 → fp32) and says why.
    """
    reasons: list[str] = []
    wanted = requested
    if wanted is Precision.BF16:
        if not hasattr(builder_flags, "BF16"):
            reasons.append(f"TensorRT {tensorrt_version} has no BF16 builder flag")
        elif gpu.compute_capability < (8, 0):
            reasons.append(f"{gpu.name} ({gpu.sm}) has no BF16 kernels (needs compute capability 8.0)")
        else:
            return PrecisionChoice("bf16", set_flags=("BF16",))
        wanted = Precision.FP16
    if wanted in (Precision.AUTO, Precision.FP16):
        if hasattr(builder_flags, "FP16"):
            note = f"{requested} requested, but {'; '.join(reasons)}: building fp16" if reasons else None
            return PrecisionChoice("fp16", set_flags=("FP16",), note=note)
        reasons.append(
            f"TensorRT {tensorrt_version} has no FP16 builder flag (strongly typed networks only: "
            "convert the ONNX model to fp16 for reduced precision)"
        )
    # fp32 means IEEE fp32: TF32 (on by default) would round matmul/convolution inputs to 10 bits
    clear = ("TF32",) if hasattr(builder_flags, "TF32") else ()
    note = f"{requested} requested, but {'; '.join(reasons)}: building fp32" if reasons else None
    return PrecisionChoice("fp32", clear_flags=clear, note=note)


# ---- the cache key -----------------------------------------------------------------------------


@dataclass(frozen=True)
class EngineKey:
    """What an engine depends on, and its SHA-256 (the cache key)."""

    fields: dict[str, Any]
    digest: str

    @property
    def short(self) -> str:
        """The part of the key in the file name (64 bits: collisions are not a practical concern)."""
        return self.digest[:16]


def engine_cache_key(
    *, gpu: GpuIdentity, tensorrt_version: str, onnx_sha256: str, precision: str, batch: BatchRange
) -> EngineKey:
    """Deterministic key of an engine: GPU (name, compute capability), TensorRT version, the ONNX
    model's SHA-256, the precision built and the batch profile (the input shapes follow from the
    ONNX model and the batch sizes)."""
    fields: dict[str, Any] = {
        "format": CACHE_FORMAT,
        "gpu": gpu.name,
        "compute_capability": list(gpu.compute_capability),
        "tensorrt": tensorrt_version,
        "onnx_sha256": onnx_sha256,
        "precision": precision,
        "batch": [batch.min, batch.opt, batch.max],
    }
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return EngineKey(fields, hashlib.sha256(canonical.encode()).hexdigest())


def cache_paths(cache_dir: Path, model: str, key: EngineKey) -> tuple[Path, Path]:
    """The engine file and its JSON sidecar for a model and key."""
    stem = f"{re.sub(r'[^A-Za-z0-9._-]', '_', model)}-{key.short}"
    return cache_dir / f"{stem}.engine", cache_dir / f"{stem}.json"


def _cache_hit(engine: Path, sidecar: Path, key: EngineKey) -> bool:
    """A complete engine for this key: the sidecar (written last) names the key and the engine's hash."""
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
        return bool(meta.get("key") == key.digest and file_sha256(engine) == meta.get("engine_sha256"))
    except (OSError, ValueError):
        return False


# ---- building ----------------------------------------------------------------------------------


def build_serialized_engine(
    trt: Any, onnx_path: Path, shapes: Mapping[str, ProfileShape], choice: PrecisionChoice, *, logger: Any
) -> bytes:
    """Parse one ONNX file and build a serialised engine with one optimisation profile."""
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode from TensorRT 10 on
    parser = trt.OnnxParser(network, logger)
    # from the file, not from bytes: the parser then finds weights stored as external data beside it
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(index)) for index in range(parser.num_errors))
        raise TensorRTError(
            f"TensorRT cannot parse {onnx_path.name}: {' '.join(errors.split()) or 'no detail'}"
        )
    names = {network.get_input(index).name for index in range(network.num_inputs)}
    if names != set(shapes):
        raise TensorRTInputError(
            f"{onnx_path.name} has inputs {sorted(names)} but the manifest lists {sorted(shapes)}"
        )
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    for name, shape in shapes.items():
        profile.set_shape(name, shape.min, shape.opt, shape.max)
    if config.add_optimization_profile(profile) < 0:
        raise TensorRTInputError(
            f"TensorRT refused the optimisation profile of {onnx_path.name}: {dict(shapes)}"
        )
    for flag in choice.set_flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    for flag in choice.clear_flags:
        config.clear_flag(getattr(trt.BuilderFlag, flag))
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise TensorRTError(f"TensorRT could not build an engine from {onnx_path.name} (its log says why)")
    return bytes(serialized)  # IHostMemory exposes the buffer protocol


@dataclass(frozen=True)
class EngineRecord:
    """One model's engine after :func:`build_engines`."""

    model: str
    engine: Path
    sidecar: Path
    key: str
    precision: str
    cached: bool
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "engine": str(self.engine),
            "sidecar": str(self.sidecar),
            "key": self.key,
            "precision": self.precision,
            "cached": self.cached,
            "seconds": round(self.seconds, 3),
        }


def _onnx_sha256(model: OnnxModel) -> str:
    if not model.path.is_file():
        raise TensorRTInputError(f"{model.name}: {model.path} is missing")
    actual = file_sha256(model.path)
    if actual != model.sha256:
        raise TensorRTInputError(
            f"{model.name}: {model.path.name} has SHA-256 {actual[:12]}…, the manifest says "
            f"{model.sha256[:12]}… (re-export the ONNX models)"
        )
    return actual


def build_engines(
    onnx_dir: Path,
    cache_dir: Path,
    *,
    batch: BatchRange,
    precision: Precision = Precision.AUTO,
    models: Iterable[str] | None = None,
    rebuild: bool = False,
    notify: Callable[[str], None] = lambda message: None,
) -> list[EngineRecord]:
    """Build (or find in ``cache_dir``) an engine for each model of ``onnx_dir/manifest.json``.

    Raises :class:`TensorRTInputError` for bad input (checked before TensorRT is imported),
    :class:`TensorRTUnavailableError` without TensorRT 10+ or a CUDA GPU, :class:`TensorRTError`
    when TensorRT fails.
    """
    plans = [
        (model, profile_shapes(model.inputs, batch))
        for model in select_models(read_manifest(onnx_dir), models)
    ]
    trt = require_tensorrt()
    gpu = require_cuda_gpu()
    version = str(trt.__version__)
    choice = resolve_precision(precision, builder_flags=trt.BuilderFlag, tensorrt_version=version, gpu=gpu)
    if choice.note:
        notify(f"note: {choice.note}")
    logger = trt.Logger(trt.Logger.WARNING)
    cache_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for model, shapes in plans:
        key = engine_cache_key(
            gpu=gpu,
            tensorrt_version=version,
            onnx_sha256=_onnx_sha256(model),
            precision=choice.built,
            batch=batch,
        )
        engine_path, sidecar_path = cache_paths(cache_dir, model.name, key)
        if not rebuild and _cache_hit(engine_path, sidecar_path, key):
            records.append(
                EngineRecord(model.name, engine_path, sidecar_path, key.digest, choice.built, True, 0.0)
            )
            continue
        notify(
            f"building {model.name} ({choice.built}, batch {batch.min}/{batch.opt}/{batch.max}) on {gpu.name}"
        )
        started = time.perf_counter()
        data = build_serialized_engine(trt, model.path, shapes, choice, logger=logger)
        seconds = time.perf_counter() - started
        sidecar = {
            "key": key.digest,
            **key.fields,
            "model": model.name,
            "onnx_file": model.path.name,
            "engine_file": engine_path.name,
            "engine_sha256": hashlib.sha256(data).hexdigest(),
            "engine_bytes": len(data),
            "precision_requested": str(precision),
            "precision_note": choice.note,
            "profile": {name: asdict(shape) for name, shape in shapes.items()},
            "inputs": {name: list(shape) for name, shape in model.inputs.items()},
            "outputs": {name: list(shape) for name, shape in model.outputs.items()},
            "build_seconds": round(seconds, 3),
            "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        # a crash or a concurrent build never leaves a half-written engine under the final name;
        # the sidecar goes last, as a cache hit is judged by it
        write_atomic(engine_path, data)
        write_atomic(sidecar_path, (json.dumps(sidecar, indent=2) + "\n").encode())
        records.append(
            EngineRecord(model.name, engine_path, sidecar_path, key.digest, choice.built, False, seconds)
        )
    return records
