"""dlib DNN files read into PyTorch, layer for layer.

dlib does not store layer wrapper types (tag, skip, add_layer) in its files, so a network is
read against its layer stack, written here the way dlib's C++ template expression reads
(outermost layer first). Each computational layer's type tag, hyper-parameters and weights
come from the file and are checked against the stack; any mismatch is a ModelFormatError.

The PyTorch module runs the stack bottom-up with dlib's semantics: ``tagN`` remembers an
output, ``skipN`` goes back to it, ``add_prevN`` adds it (zero-padding the smaller tensor,
as dlib's ``tt::add`` does), pooling and convolution use dlib's explicit padding.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from faceanonymixer.models.base import Recognizer
from faceanonymixer.models.dlib_format import DlibReader, LayerRecord
from faceanonymixer.utils.errors import ModelFormatError

#: wrapper kinds that carry no data in the file
_WRAPPERS = ("tag", "skip")


@dataclass(frozen=True)
class LayerSpec:
    """One entry of a dlib layer stack: its kind and, for tag/skip/add_prev, the tag id."""

    kind: str  # con | affine | relu | max_pool | avg_pool | add_prev | fc | tag | skip
    tag: int = 0


@dataclass(frozen=True)
class InputSpec:
    """dlib's ``input_rgb_image_sized<NR, NC>``: RGB, mean-subtracted, divided by 256."""

    mean_rgb: tuple[float, float, float]
    rows: int
    cols: int


def con() -> LayerSpec:
    return LayerSpec("con")


def affine() -> LayerSpec:
    return LayerSpec("affine")


def relu() -> LayerSpec:
    return LayerSpec("relu")


def tag(n: int) -> LayerSpec:
    return LayerSpec("tag", n)


def skip(n: int) -> LayerSpec:
    return LayerSpec("skip", n)


def add_prev(n: int) -> LayerSpec:
    return LayerSpec("add_prev", n)


# ---- reading -----------------------------------------------------------------------------


def _read_details(reader: DlibReader, spec: LayerSpec) -> LayerRecord:
    """Read one computational layer's details (the part dlib's layer class serializes)."""
    if spec.kind == "con":
        reader.expect_string("con_4")
        params = reader.read_tensor()
        num_filters, rows, cols = reader.read_int(), reader.read_int(), reader.read_int()
        stride = (reader.read_int(), reader.read_int())
        padding = (reader.read_int(), reader.read_int())
        filters, biases = reader.read_alias_tensor(), reader.read_alias_tensor()
        for _ in range(4):  # learning-rate and weight-decay multipliers: training only
            reader.read_float()
        weight_count = int(np.prod(filters))
        if (
            filters[0] != num_filters
            or filters[2:] != (rows, cols)
            or params.data.size != weight_count + num_filters
        ):
            raise reader.fail(f"con_ parameters {params.shape} do not fit filters {filters}")
        flat = params.data.reshape(-1)
        return LayerRecord(
            "con",
            {
                "weight": flat[:weight_count].reshape(filters),
                "bias": flat[weight_count:].reshape(biases[1]),
                "stride": stride,
                "padding": padding,
            },
        )
    if spec.kind == "affine":
        reader.expect_string("affine_")
        params = reader.read_tensor()
        gamma, beta = reader.read_alias_tensor(), reader.read_alias_tensor()
        reader.expect_int(0, what="affine mode (only CONV_MODE is supported)")
        channels = gamma[1]
        if params.data.size != 2 * channels or beta[1] != channels:
            raise reader.fail(f"affine_ parameters {params.shape} do not fit {channels} channels")
        flat = params.data.reshape(-1)
        return LayerRecord("affine", {"gamma": flat[:channels], "beta": flat[channels:]})
    if spec.kind == "relu":
        reader.expect_string("relu_")
        return LayerRecord("relu")
    if spec.kind == "add_prev":
        reader.expect_string("add_prev_")
        return LayerRecord("add_prev")
    if spec.kind in ("max_pool", "avg_pool"):
        reader.expect_string(f"{spec.kind}_2")
        window = (reader.read_int(), reader.read_int())
        stride = (reader.read_int(), reader.read_int())
        padding = (reader.read_int(), reader.read_int())
        if padding != (0, 0):
            # dlib's padded pooling semantics are not reproduced (no network here uses them).
            raise reader.fail(f"{spec.kind} with padding {padding} is not supported")
        return LayerRecord(spec.kind, {"window": window, "stride": stride})
    if spec.kind == "fc":
        reader.expect_string("fc_2")
        outputs, inputs = reader.read_int(), reader.read_int()
        params = reader.read_tensor()
        weights = reader.read_alias_tensor()
        reader.read_alias_tensor()  # biases alias; empty without a bias
        has_bias = reader.expect_int(0, 1, what="fc bias mode") == 0  # FC_HAS_BIAS = 0, FC_NO_BIAS = 1
        for _ in range(4):
            reader.read_float()
        expected = inputs * outputs + (outputs if has_bias else 0)
        if params.data.size != expected or weights[:2] != (inputs, outputs):
            raise reader.fail(f"fc_ parameters {params.shape} do not fit {inputs}x{outputs}")
        flat = params.data.reshape(-1)
        # dlib computes x @ W with W stored (inputs, outputs), row-major.
        record: dict[str, np.ndarray] = {"weight": flat[: inputs * outputs].reshape(inputs, outputs).T.copy()}
        if has_bias:
            record["bias"] = flat[inputs * outputs :]
        return LayerRecord("fc", dict(record))
    raise reader.fail(f"layer kind {spec.kind!r} is not supported")


def _read_add_layer_trailer(reader: DlibReader, version: int) -> None:
    """Skip the training state dlib's add_layer writes after a layer's details."""
    for _ in range(3 if version >= 2 else 2):  # setup-called, stale, (in-place disabled) flags
        reader.read_bool()
    tensors = {1: 2, 2: 3, 3: 3}[version]  # x_grad, cached_output, params_grad|grad_final
    for _ in range(tensors):
        reader.read_tensor()
    if version == 3:
        reader.read_int()  # sample expansion factor


def read_network(
    data: bytes, stack: list[LayerSpec], *, source: str = "<bytes>"
) -> tuple[InputSpec, list[LayerRecord]]:
    """Read a ``loss_metric`` network over ``input_rgb_image_sized``.

    ``stack`` lists the layers outermost first, as in the C++ type. Returns the input
    specification and the layers in evaluation order (bottom first), wrappers included.
    """
    reader = DlibReader(data, source=source)
    reader.expect_int(1, what="add_loss_layer version")
    if reader.expect_string("loss_metric_", "loss_metric_2") == "loss_metric_2":
        reader.read_float()  # margin
        reader.read_float()  # distance threshold
    versions: list[int] = []
    for position, spec in enumerate(stack):
        if spec.kind in _WRAPPERS:
            reader.expect_int(1, what=f"{spec.kind} layer version")
        elif position == len(stack) - 1 or all(s.kind in _WRAPPERS for s in stack[position + 1 :]):
            versions.append(reader.expect_int(1, 2, 3, what="input-level add_layer version"))
        else:
            versions.append(reader.expect_int(2, what="add_layer version"))
    reader.expect_string("input_rgb_image_sized")
    mean_rgb = (reader.read_float(), reader.read_float(), reader.read_float())
    input_spec = InputSpec(mean_rgb, reader.read_int(), reader.read_int())

    records: list[LayerRecord] = []
    bottom_up_versions = reversed(versions)
    for spec in reversed(stack):
        if spec.kind in _WRAPPERS:
            records.append(LayerRecord(spec.kind, {"tag": spec.tag}))
            continue
        version = next(bottom_up_versions)
        record = _read_details(reader, spec)
        if spec.kind == "add_prev":
            record.fields["tag"] = spec.tag
        _read_add_layer_trailer(reader, version)
        records.append(record)
    if not reader.at_end():
        raise reader.fail("trailing data after the network")
    return input_spec, records


# ---- PyTorch -----------------------------------------------------------------------------


def _add_zero_padded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's tt::add: sum over the larger shape, the smaller tensor padded with zeros."""
    if a.shape == b.shape:
        return a + b
    channels, rows, cols = (max(a.shape[i], b.shape[i]) for i in (1, 2, 3))

    def pad(t: torch.Tensor) -> torch.Tensor:
        return F.pad(t, (0, cols - t.shape[3], 0, rows - t.shape[2], 0, channels - t.shape[1]))

    return pad(a) + pad(b)


def _int_pair(value: object) -> tuple[int, int]:
    if not isinstance(value, tuple | list) or len(value) != 2:
        raise ModelFormatError(f"expected a (rows, cols) pair, found {value!r}")
    return int(value[0]), int(value[1])


def _parameter(values: object, shape: tuple[int, ...] | None = None) -> nn.Parameter:
    """A parameter holding its own copy of weights read from the file."""
    tensor = torch.from_numpy(np.array(values, dtype=np.float32))
    return nn.Parameter(tensor.view(shape) if shape else tensor)


class _Conv(nn.Module):
    def __init__(self, record: LayerRecord) -> None:
        super().__init__()
        self.weight = _parameter(record.fields["weight"])
        self.bias = _parameter(record.fields["bias"])
        self.stride = _int_pair(record.fields["stride"])
        self.padding = _int_pair(record.fields["padding"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding)


class _Affine(nn.Module):
    """dlib's affine_ in CONV_MODE: a per-channel scale and shift (batch norm, frozen)."""

    def __init__(self, record: LayerRecord) -> None:
        super().__init__()
        self.gamma = _parameter(record.fields["gamma"], shape=(1, -1, 1, 1))
        self.beta = _parameter(record.fields["beta"], shape=(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma + self.beta


class _Pool(nn.Module):
    def __init__(self, record: LayerRecord) -> None:
        super().__init__()
        self.kind = record.kind
        self.window = _int_pair(record.fields["window"])
        self.stride = _int_pair(record.fields["stride"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.window == (0, 0):  # dlib's avg_pool_everything / max_pool_everything
            return (
                x.mean(dim=(2, 3), keepdim=True)
                if self.kind == "avg_pool"
                else x.amax(dim=(2, 3), keepdim=True)
            )
        if self.kind == "max_pool":
            return F.max_pool2d(x, self.window, self.stride)
        return F.avg_pool2d(x, self.window, self.stride)


class _Linear(nn.Module):
    def __init__(self, record: LayerRecord) -> None:
        super().__init__()
        self.weight = _parameter(record.fields["weight"])
        bias = record.fields.get("bias")
        self.bias = _parameter(bias) if bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.flatten(1), self.weight, self.bias)


class DlibMetricNetwork(Recognizer):
    """A dlib ``loss_metric`` network: RGB float images in [0, 255] -> embeddings.

    Input: float32 (N, 3, rows, cols), RGB, values in [0, 255] (dlib's own input layer
    subtracts the training mean and divides by 256; that is done here, differentiably).
    """

    mean_rgb: torch.Tensor

    def __init__(
        self, input_spec: InputSpec, records: list[LayerRecord], *, match_threshold: float | None = None
    ) -> None:
        super().__init__()
        self.input_size = (input_spec.rows, input_spec.cols)
        #: Euclidean distance below which two embeddings are called the same identity
        self.match_threshold = match_threshold
        self.register_buffer(
            "mean_rgb", torch.tensor(input_spec.mean_rgb, dtype=torch.float32).view(1, 3, 1, 1)
        )
        self._program: list[tuple[str, int]] = []  # (kind, tag) per layer, bottom first
        self.layers = nn.ModuleList()
        builders = {"con": _Conv, "affine": _Affine, "max_pool": _Pool, "avg_pool": _Pool, "fc": _Linear}
        for record in records:
            builder = builders.get(record.kind)
            self._program.append((record.kind, int(record.fields.get("tag", 0))))  # type: ignore[call-overload]
            self.layers.append(builder(record) if builder else nn.Identity())
        self.embedding_dim = (
            int(np.asarray(records[-1].fields["weight"]).shape[0])
            if records and records[-1].kind == "fc"
            else 0
        )
        self.requires_grad_(False)
        self.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected (N, 3, H, W) RGB images, got {tuple(images.shape)}")
        x = (images - self.mean_rgb) / 256.0
        tagged: dict[int, torch.Tensor] = {}
        for (kind, tag_id), layer in zip(self._program, self.layers, strict=True):
            if kind == "tag":
                tagged[tag_id] = x
            elif kind == "skip":
                x = tagged[tag_id]
            elif kind == "add_prev":
                x = _add_zero_padded(x, tagged[tag_id])
            elif kind == "relu":
                x = F.relu(x)
            else:
                x = layer(x)
        return x.flatten(1)


def load_dlib_metric_network(
    path: str | Path, stack: list[LayerSpec], *, match_threshold: float | None = None
) -> DlibMetricNetwork:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelFormatError(f"cannot read {path}: {exc.strerror or exc}") from exc
    input_spec, records = read_network(data, stack, source=str(path))
    return DlibMetricNetwork(input_spec, records, match_threshold=match_threshold)
