"""onnxruntime sessions over an ONNX export folder, with the PyTorch modules' contract.

``OnnxExport(folder)`` reads ``manifest.json``; ``export[name]`` (or ``export.role("recognizer")``)
opens that graph after checking its SHA-256, and is called like the PyTorch module it came from:
numpy arrays or torch tensors in, a torch tensor out, on the input's device. Providers are taken
in the order TensorRT, CUDA, CPU, as far as this onnxruntime build has them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import torch

from faceanonymixer.models.onnx.manifest import ModelEntry, Role, read_manifest, read_verified
from faceanonymixer.utils.errors import ModelFormatError

PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")

ArrayLike = torch.Tensor | npt.ArrayLike


def available_providers(device: str | torch.device | None = None) -> list[str]:
    """The preferred providers this onnxruntime has, in order; only the CPU's for a CPU device
    (the caller's tensors live there, and a GPU round trip would cost more than it saves)."""
    wanted: tuple[str, ...] = PREFERRED_PROVIDERS
    if device is not None and torch.device(device).type != "cuda":
        wanted = ("CPUExecutionProvider",)
    available = set(ort.get_available_providers())
    return [provider for provider in wanted if provider in available]


def session_options(threads: int | None = None) -> ort.SessionOptions:
    options = ort.SessionOptions()
    # as many threads as torch uses: the two share the cores, and neither should oversubscribe them
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1  # the graphs are chains: parallelism lives inside operators
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # idle workers sleep instead of spinning: between runs the cores belong to PyTorch's loop
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only
    return options


class OnnxModel:
    """One exported graph, called like its PyTorch module: a torch tensor out, on the input's device."""

    def __init__(
        self, entry: ModelEntry, data: bytes, *, providers: Sequence[str], options: ort.SessionOptions
    ) -> None:
        self.entry = entry
        self.session = ort.InferenceSession(data, sess_options=options, providers=list(providers))
        self.input_names = [value.name for value in self.session.get_inputs()]

    @property
    def providers(self) -> list[str]:
        """The providers the session really uses (an unavailable one is dropped by onnxruntime)."""
        return list(self.session.get_providers())

    def __call__(self, *inputs: ArrayLike) -> torch.Tensor:
        if len(inputs) != len(self.input_names):
            raise TypeError(f"{self.entry.name} takes {len(self.input_names)} input(s), got {len(inputs)}")
        device = next((x.device for x in inputs if isinstance(x, torch.Tensor)), torch.device("cpu"))
        feeds = {name: _as_array(value) for name, value in zip(self.input_names, inputs, strict=True)}
        first = self.session.run(None, feeds)[0]  # every exported graph has one output
        return torch.from_numpy(np.asarray(first)).to(device)


class OnnxExport:
    """An export folder: its manifest, and a session per model opened on first use."""

    def __init__(
        self,
        folder: str | Path,
        *,
        device: str | torch.device | None = None,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        self.providers = list(providers) if providers is not None else available_providers(device)
        self._options = session_options(threads)
        self._models: dict[str, OnnxModel] = {}

    def __getitem__(self, name: str) -> OnnxModel:
        model = self._models.get(name)
        if model is None:
            entry = self.manifest.model(name)
            data = read_verified(self.folder, entry)
            model = self._models[name] = OnnxModel(
                entry, data, providers=self.providers, options=self._options
            )
        return model

    def role(self, role: Role) -> OnnxModel:
        names = [entry.name for entry in self.manifest.models if entry.role == role]
        if len(names) != 1:
            raise ModelFormatError(f"the ONNX export has {len(names)} models of role {role!r}")
        return self[names[0]]


def _as_array(value: ArrayLike) -> npt.NDArray[np.float32]:
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", torch.float32).contiguous().numpy()
    return np.ascontiguousarray(value, dtype=np.float32)
