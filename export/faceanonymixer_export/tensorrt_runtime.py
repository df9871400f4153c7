"""Run a TensorRT engine on torch CUDA tensors (TensorRT 10 API: I/O tensors bound by name,
``set_input_shape`` + ``set_tensor_address`` + ``execute_async_v3`` on torch's current stream).

Outputs are torch tensors allocated on the current stream, so the result can be used by torch
right away, in stream order, without a synchronisation.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from faceanonymixer_export.tensorrt_common import (
    TensorRTError,
    TensorRTInputError,
    require_cuda_gpu,
    require_tensorrt,
)

#: TensorRT DataType member name → torch dtype (looked up by name: older TensorRTs lack some)
_TORCH_DTYPES = {
    "FLOAT": torch.float32,
    "HALF": torch.float16,
    "BF16": torch.bfloat16,
    "INT8": torch.int8,
    "UINT8": torch.uint8,
    "INT32": torch.int32,
    "INT64": torch.int64,
    "BOOL": torch.bool,
}


def torch_dtype(trt: Any, data_type: Any) -> torch.dtype:
    """The torch dtype of a ``tensorrt.DataType`` (FP8/INT4 and the like have no torch twin here)."""
    for name, dtype in _TORCH_DTYPES.items():
        if getattr(trt.DataType, name, None) == data_type:
            return dtype
    raise TensorRTError(f"TensorRT tensor type {data_type} has no torch dtype this runtime knows")


class TensorRTEngine:
    """One deserialised engine with one execution context.

    ``engine({"image": batch})`` returns ``{"output name": tensor}``. Calls are serialised by a
    lock (a context holds one set of shapes and addresses); for concurrent inference on several
    streams, make one :class:`TensorRTEngine` per stream. Inputs must be ready on the current
    stream (torch's usual rule); CPU tensors and other dtypes are copied/cast first.
    """

    def __init__(
        self, engine: Any, *, trt: Any, device: torch.device, keep_alive: tuple[Any, ...] = ()
    ) -> None:
        context = engine.create_execution_context()
        if context is None:
            raise TensorRTError("TensorRT could not create an execution context (out of GPU memory?)")
        self.device = device
        self._trt = trt
        self._engine = engine
        self._context = context
        # the runtime (and its logger) must outlive the engine it deserialised
        self._keep_alive = keep_alive
        names = [engine.get_tensor_name(index) for index in range(engine.num_io_tensors)]
        modes = {name: engine.get_tensor_mode(name) for name in names}
        self.input_names = tuple(name for name in names if modes[name] == trt.TensorIOMode.INPUT)
        self.output_names = tuple(name for name in names if modes[name] == trt.TensorIOMode.OUTPUT)
        self.dtypes = {name: torch_dtype(trt, engine.get_tensor_dtype(name)) for name in names}
        self._lock = threading.Lock()
        self._last: tuple[Any, Any] | None = None  # (stream, event recorded after its last enqueue)

    @classmethod
    def deserialize(cls, data: bytes, *, device: torch.device | None = None) -> TensorRTEngine:
        """An engine from its serialised bytes, on ``device`` (default: the current CUDA device)."""
        trt = require_tensorrt()
        require_cuda_gpu()
        device = device or torch.device("cuda", torch.cuda.current_device())
        logger = trt.Logger(trt.Logger.WARNING)
        with torch.cuda.device(device):
            runtime = trt.Runtime(logger)
            engine = runtime.deserialize_cuda_engine(data)
            if engine is None:
                raise TensorRTError(
                    "TensorRT could not deserialise the engine (built by another TensorRT version or "
                    "for another GPU? rebuild it with `faceanonymixer export tensorrt`)"
                )
            return cls(engine, trt=trt, device=device, keep_alive=(runtime, logger))

    @classmethod
    def from_file(cls, path: Path, *, device: torch.device | None = None) -> TensorRTEngine:
        """An engine file from the cache; its JSON sidecar, where present, is checked first so a
        damaged file or one built elsewhere gets a clear error rather than TensorRT's."""
        data = path.read_bytes()
        sidecar = path.with_suffix(".json")
        if sidecar.is_file():
            try:
                meta = json.loads(sidecar.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                meta = None
            if not isinstance(meta, dict):
                raise TensorRTError(f"{sidecar.name} is not an engine sidecar (JSON object)")
            if hashlib.sha256(data).hexdigest() != meta.get("engine_sha256"):
                raise TensorRTError(f"{path.name} is damaged: its SHA-256 differs from {sidecar.name}")
            trt, gpu = require_tensorrt(), require_cuda_gpu()
            built_for = (meta.get("tensorrt"), meta.get("gpu"), meta.get("compute_capability"))
            here = (str(trt.__version__), gpu.name, list(gpu.compute_capability))
            if built_for != here:
                raise TensorRTError(
                    f"{path.name} was built for TensorRT {built_for[0]} on {built_for[1]}; this is "
                    f"TensorRT {here[0]} on {here[1]}: rebuild it with `faceanonymixer export tensorrt`"
                )
        return cls.deserialize(data, device=device)

    def profile(self, name: str) -> tuple[tuple[int, ...], ...]:
        """The (min, opt, max) shapes of an input in the engine's first optimisation profile."""
        return tuple(tuple(shape) for shape in self._engine.get_tensor_profile_shape(name, 0))

    def __call__(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if set(inputs) != set(self.input_names):
            raise TensorRTInputError(
                f"the engine takes inputs {list(self.input_names)}, got {sorted(inputs)}"
            )
        with self._lock, torch.cuda.device(self.device):
            stream = torch.cuda.current_stream(self.device)
            if self._last is not None and self._last[0] != stream:
                # one context, one scratch memory: work enqueued on another stream must finish first
                stream.wait_event(self._last[1])
            bound = []  # cast/copied inputs stay referenced until enqueued
            for name in self.input_names:
                tensor = inputs[name].to(device=self.device, dtype=self.dtypes[name]).contiguous()
                if not self._context.set_input_shape(name, tuple(tensor.shape)):
                    raise TensorRTInputError(
                        f"input {name!r} has shape {tuple(tensor.shape)}, outside the engine's "
                        f"profile (min, opt, max) {self.profile(name)}"
                    )
                self._context.set_tensor_address(name, tensor.data_ptr())
                bound.append(tensor)
            outputs = {}
            for name in self.output_names:
                shape = tuple(self._context.get_tensor_shape(name))
                if any(dim < 0 for dim in shape):
                    raise TensorRTError(f"output {name!r} has a data-dependent shape {shape}: not supported")
                # allocated on the current stream, which is the one the engine writes it on
                output = torch.empty(shape, dtype=self.dtypes[name], device=self.device)
                self._context.set_tensor_address(name, output.data_ptr())
                outputs[name] = output
            if not self._context.execute_async_v3(stream.cuda_stream):
                raise TensorRTError("TensorRT could not enqueue the engine (its log says why)")
            self._last = (stream, stream.record_event())
        return outputs
