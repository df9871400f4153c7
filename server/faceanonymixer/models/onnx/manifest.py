"""``manifest.json`` of an ONNX export folder: what each graph is, how to feed it, its SHA-256.

One entry per model::

    {"name": "dlib", "role": "recognizer", "file": "dlib.onnx", "sha256": "...",
     "exporter": "dynamo", "opset": 18,
     "inputs": [{"name": "images", "shape": ["batch", 3, 150, 150], "dtype": "float32"}],
     "outputs": [{"name": "embeddings", "shape": ["batch", 128], "dtype": "float32"}],
     "preprocessing": {"value_range": [0, 255], "colour_order": "RGB", "size": [150, 150],
                       "alignment": "..."},
     "source_fingerprint": "...", "check": {"batch": 1, "max_abs_diff": 1.2e-05}}

``batch`` is the symbolic (dynamic) first axis. ``preprocessing`` describes an image input,
``postprocessing`` an image output (the generator's); ``source_fingerprint`` is the SHA-256 of the
PyTorch module's weights the graph was exported from, so a runtime can refuse a stale export.
Reading a manifest needs neither torch nor onnx.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from faceanonymixer.utils.errors import ModelFormatError

MANIFEST = "manifest.json"
FORMAT_VERSION = 1

Role = Literal["recognizer", "encoder", "synthesis", "mapping"]
Exporter = Literal["dynamo", "torchscript"]
Dim = int | str


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: list[Dim]
    dtype: str = "float32"


@dataclass(frozen=True)
class ModelEntry:
    name: str
    role: Role
    file: str
    sha256: str
    exporter: Exporter
    opset: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    source_fingerprint: str
    preprocessing: dict[str, Any] | None = None
    postprocessing: dict[str, Any] | None = None
    #: the exported graph against PyTorch at a batch size other than the traced one
    check: dict[str, Any] = field(default_factory=dict)
    #: why the dynamo exporter was not used (its error, one line), when it was not
    fallback_reason: str | None = None


@dataclass(frozen=True)
class Manifest:
    profile: str
    models: list[ModelEntry]
    #: the torch that exported the graphs
    torch_version: str = ""
    format_version: int = FORMAT_VERSION

    def model(self, name: str) -> ModelEntry:
        for entry in self.models:
            if entry.name == name:
                return entry
        raise ModelFormatError(f"the ONNX export has no model {name!r}: {', '.join(self.names)}")

    @property
    def names(self) -> list[str]:
        return [entry.name for entry in self.models]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        if data.get("format_version") != FORMAT_VERSION:
            raise ModelFormatError(f"unsupported ONNX manifest format {data.get('format_version')!r}")
        models = [
            ModelEntry(
                **{
                    **entry,
                    "inputs": [TensorSpec(**spec) for spec in entry["inputs"]],
                    "outputs": [TensorSpec(**spec) for spec in entry["outputs"]],
                }
            )
            for entry in data["models"]
        ]
        return cls(
            profile=data["profile"],
            models=models,
            torch_version=data["torch_version"],
            format_version=data["format_version"],
        )


def read_manifest(folder: str | Path) -> Manifest:
    path = Path(folder) / MANIFEST
    try:
        return Manifest.from_json(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise ModelFormatError(
            f"{path} not found: export the models with `faceanonymixer export onnx --out DIR`"
        ) from None
    except (ValueError, KeyError, TypeError) as error:
        raise ModelFormatError(f"{path}: not an ONNX export manifest ({error})") from error


def read_verified(folder: str | Path, entry: ModelEntry) -> bytes:
    """The model file's bytes, after checking their SHA-256 against the manifest (the bytes checked
    are the bytes loaded: nothing can swap the file in between)."""
    if Path(entry.file).name != entry.file:  # a manifest may not point outside its folder
        raise ModelFormatError(f"model file {entry.file!r} is not a plain file name")
    path = Path(folder) / entry.file
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ModelFormatError(f"{path} is missing from the ONNX export") from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != entry.sha256:
        raise ModelFormatError(f"{path}: SHA-256 {actual} differs from the manifest's {entry.sha256}")
    return data
