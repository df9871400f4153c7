"""Export a profile's models to ONNX: recognizer, encoder, the generator's synthesis and mapping.

Each graph has a dynamic batch axis. The dynamo exporter (``torch.export``) is tried first; where
it fails, or its graph does not reproduce PyTorch, the legacy TorchScript exporter is used, and
the manifest records which one made each file. Every graph is run once by onnxruntime at a batch
size other than the traced one before it is kept, so a batch size baked into the graph is caught
here rather than in production.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from faceanonymixer.engine.profiles import Profile, get_profile
from faceanonymixer.models.generator_base import Generator
from faceanonymixer.models.generators import load_generator
from faceanonymixer.models.inverters import load_inverter
from faceanonymixer.models.onnx.fingerprint import module_fingerprint
from faceanonymixer.models.onnx.manifest import (
    MANIFEST,
    Exporter,
    Manifest,
    ModelEntry,
    Role,
    TensorSpec,
)
from faceanonymixer.models.recognizers import load_recognizer
from faceanonymixer.utils.errors import ModelFormatError
from faceanonymixer.utils.files import prepare_out_dir, write_atomic

#: widely supported (TensorRT 8.6+, onnxruntime 1.14+) and has Resize with antialias (e4e's input)
OPSET = 18
BATCH = "batch"
#: traced at batch 2 (torch.export specialises sizes 0 and 1), checked at batch 1
TRACE_BATCH, CHECK_BATCH = 2, 1

Progress = Callable[[str], None]


@dataclass(frozen=True)
class ExportTarget:
    """One module to export, with what the manifest says about its input and output."""

    name: str
    role: Role
    module: nn.Module
    #: one example input of batch 1, the shape every input must have apart from the batch
    example: torch.Tensor
    input_name: str
    output_name: str
    preprocessing: dict[str, Any] | None = None
    postprocessing: dict[str, Any] | None = None


@dataclass(frozen=True)
class ExportedGraph:
    data: bytes
    exporter: Exporter
    fallback_reason: str | None
    max_abs_diff: float


class _Method(nn.Module):
    """A generator method (mapping, synthesize) as a module's forward, for the exporters."""

    def __init__(self, generator: Generator, method: str) -> None:
        super().__init__()
        self.generator, self.method = generator, method

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result: torch.Tensor = getattr(self.generator, self.method)(x)
        return result


def profile_targets(profile: Profile) -> list[ExportTarget]:
    """Load the profile's models on the CPU (a zoo model not pulled raises ModelMissingError)."""
    generator = load_generator(profile.generator, device="cpu")
    recognizer = load_recognizer(profile.recognizer, device="cpu").eval().requires_grad_(False)
    inverter = load_inverter(profile.inverter, generator, device="cpu")
    ffhq = profile.alignment == "ffhq"
    side, (rows, cols) = generator.image_size, recognizer.input_size
    chip = (
        f"FFHQ crop (68 landmarks, reflected border): FaceAligner.align(size={rows}, style='ffhq')"
        if ffhq
        else f"dlib face chip (5 landmarks, padding 0.25): FaceAligner.align(size={rows})"
    )
    crop = (
        f"FFHQ crop at {side} px: alignment.ffhq_crop(photo, landmarks, {side})"
        if ffhq
        else f"generator's landmark template at {side} px: alignment.crop_to_template(...)"
    )
    seeded = torch.Generator().manual_seed(0)  # the same check inputs on every export
    generated = {"value_range": [-1, 1], "colour_order": "RGB", "size": [side, side], "alignment": crop}
    return [
        ExportTarget(
            profile.recognizer,
            "recognizer",
            recognizer,
            torch.rand(1, 3, rows, cols, generator=seeded) * 255.0,
            "images",
            "embeddings",
            preprocessing={
                "value_range": [0, 255],
                "colour_order": "RGB",
                "size": [rows, cols],
                "alignment": chip,
            },
        ),
        ExportTarget(
            profile.inverter,
            "encoder",
            inverter,
            torch.rand(1, 3, side, side, generator=seeded) * 2.0 - 1.0,
            "crops",
            "latents",
            preprocessing=generated,
        ),
        ExportTarget(
            f"{profile.generator}.synthesis",
            "synthesis",
            _Method(generator, "synthesize"),
            generator.mapping(torch.randn(1, generator.z_dim, generator=seeded)),
            "latents",
            "images",
            postprocessing=generated,
        ),
        ExportTarget(
            f"{profile.generator}.mapping",
            "mapping",
            _Method(generator, "mapping"),
            torch.randn(1, generator.z_dim, generator=seeded),
            "z",
            "latents",
            preprocessing={"distribution": "standard normal", "size": [generator.z_dim]},
        ),
    ]


def export_graph(target: ExportTarget) -> ExportedGraph:
    """The target as ONNX bytes: dynamo first, then the TorchScript exporter."""
    reason: str | None = None
    try:
        data = _export_dynamo(target)
        return ExportedGraph(data, "dynamo", None, check_graph(target, data))
    except Exception as error:  # any failure of the newer exporter: fall back, and say why
        reason = f"{type(error).__name__}: {_first_line(error)}"
    data = _export_torchscript(target)
    return ExportedGraph(data, "torchscript", reason, check_graph(target, data))


def _export_dynamo(target: ExportTarget) -> bytes:
    batch = torch.export.Dim(BATCH)
    with _quiet():
        program = torch.onnx.export(
            target.module,
            (_batch_of(target.example, TRACE_BATCH),),
            input_names=[target.input_name],
            output_names=[target.output_name],
            dynamic_shapes=({0: batch},),
            opset_version=OPSET,
            dynamo=True,
            verbose=False,
        )
    if program is None:  # pragma: no cover - dynamo=True always returns the program
        raise ModelFormatError("the dynamo exporter returned no program")
    data: bytes = program.model_proto.SerializeToString()
    return data


def _export_torchscript(target: ExportTarget) -> bytes:
    stream = io.BytesIO()
    with _quiet():
        torch.onnx.export(
            target.module,
            (_batch_of(target.example, TRACE_BATCH),),
            stream,  # type: ignore[arg-type]  # any binary stream works; the stub says paths only
            input_names=[target.input_name],
            output_names=[target.output_name],
            dynamic_axes={target.input_name: {0: BATCH}, target.output_name: {0: BATCH}},
            opset_version=OPSET,
            dynamo=False,
        )
    return stream.getvalue()


def check_graph(target: ExportTarget, data: bytes) -> float:
    """Run the graph at CHECK_BATCH with onnxruntime; its largest difference from PyTorch.

    Raises ModelFormatError when the outputs' shapes differ or the values differ by more than
    float rounding (1e-2 of the output's scale: a wrong graph is off by the scale itself).
    """
    example = _batch_of(target.example, CHECK_BATCH)
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    (actual,) = session.run(None, {target.input_name: example.numpy()})
    with torch.no_grad():
        expected = target.module(example).numpy()
    if actual.shape != expected.shape:
        raise ModelFormatError(f"{target.name}: ONNX gives {actual.shape}, PyTorch {expected.shape}")
    difference = float(np.abs(actual - expected).max())
    scale = max(1.0, float(np.abs(expected).max()))
    if not difference <= 1e-2 * scale:
        raise ModelFormatError(f"{target.name}: ONNX differs from PyTorch by {difference:.3g}")
    return difference


def export_profile(
    profile: str | Profile, out: Path | None, *, progress: Progress | None = None
) -> tuple[Path, Manifest]:
    """Export every model of ``profile`` into ``out`` (new or empty); manifest.json is written last.

    The models are loaded before the folder is made, so a profile whose weights are missing
    leaves nothing behind.
    """
    chosen = get_profile(profile) if isinstance(profile, str) else profile
    say = progress or (lambda _: None)
    targets = profile_targets(chosen)
    folder = prepare_out_dir(out, default_prefix=f"onnx-{chosen.profile_id}")
    entries: list[ModelEntry] = []
    for target in targets:
        say(f"exporting {target.name} ({target.role})")
        graph = export_graph(target)
        model = onnx.load_from_string(graph.data)
        entry = ModelEntry(
            name=target.name,
            role=target.role,
            file=f"{target.name}.onnx",
            sha256=_sha256(graph.data),
            exporter=graph.exporter,
            opset=_opset(model),
            inputs=[_spec(value) for value in model.graph.input],
            outputs=[_spec(value) for value in model.graph.output],
            source_fingerprint=module_fingerprint(target.module),
            preprocessing=target.preprocessing,
            postprocessing=target.postprocessing,
            check={"batch": CHECK_BATCH, "max_abs_diff": graph.max_abs_diff},
            fallback_reason=graph.fallback_reason,
        )
        write_atomic(folder / entry.file, graph.data)
        entries.append(entry)
        say(f"  {entry.file}: {graph.exporter}, {len(graph.data) / 2**20:.1f} MiB")
    manifest = Manifest(profile=chosen.profile_id, models=entries, torch_version=torch.__version__)
    _write_manifest(folder, manifest)
    return folder, manifest


def _write_manifest(folder: Path, manifest: Manifest) -> None:
    text = json.dumps(manifest.to_json(), indent=2) + "\n"
    write_atomic(folder / MANIFEST, text.encode("utf-8"))


def _spec(value: onnx.ValueInfoProto) -> TensorSpec:
    """A graph input or output as name, shape (symbolic dims by name) and dtype."""
    tensor = value.type.tensor_type
    shape: list[int | str] = [dim.dim_param or dim.dim_value for dim in tensor.shape.dim]
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
    return TensorSpec(value.name, shape, dtype)


def _opset(model: onnx.ModelProto) -> int:
    return next(int(entry.version) for entry in model.opset_import if entry.domain in ("", "ai.onnx"))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _batch_of(example: torch.Tensor, batch: int) -> torch.Tensor:
    # different faces per row: a graph that mixes rows up would not pass the check
    generator = torch.Generator().manual_seed(batch)
    noise = torch.rand((batch, *example.shape[1:]), generator=generator) * 0.1
    return example.expand(batch, *example.shape[1:]) * (1.0 + noise)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else ""


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporters' warnings and log lines (deprecations, optional torchvision ops)."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)
