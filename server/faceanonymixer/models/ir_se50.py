"""ArcFace IR-SE50 (``model_ir_se50.pth``) and the recognizer the ``ffhq`` profile builds on it.

The network is the ``Backbone`` of TreB1eN/InsightFace_Pytorch (``model.py``), the face-identity
model pSp, e4e and the published FaceAnonyMixer code load from ``model_ir_se50.pth``: a 3x3 stem,
24 improved-residual units with squeeze-and-excitation (``get_blocks(50)``: 3, 4, 14 and 3 units
of 64, 128, 256 and 512 channels, each stage starting with a stride of 2) and a
BatchNorm-Dropout-Linear-BatchNorm head to 512 dimensions, L2-normalised. Module names and
tensor shapes are the reference's, so the file (a bare state dict) loads strictly. Its
parameters and buffers, e.g. ``input_layer.0.weight``, ``body.0.res_layer.5.fc1.weight`` (the
SE block is the sixth entry of ``res_layer``), ``body.3.shortcut_layer.1.running_var``,
``output_layer.3.weight`` (512 x 512*7*7).

:class:`ArcFaceRecognizer` applies the published preprocessing for 256-pixel FFHQ-aligned
faces (pSp/e4e ``criteria/id_loss.py``; FaceAnonyMixer ``lib/id_loss.py``, which first resizes
to 256 with antialiasing and centre-crops): crop rows 35:223 and columns 32:220, average-pool
to 112 x 112, feed values in [-1, 1].
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from faceanonymixer.models.base import Recognizer
from faceanonymixer.models.weights import check_sha256
from faceanonymixer.utils.errors import ModelFormatError

__all__ = [
    "ARCFACE_CROP",
    "ARCFACE_MATCH_THRESHOLD",
    "IRSE50",
    "ArcFaceRecognizer",
    "BottleneckIR",
    "IRSEConfig",
    "UnitSpec",
    "arcface_preprocess",
    "build_units",
    "get_blocks",
    "infer_ir_se50_config",
    "l2_norm",
    "load_arcface_recognizer",
    "load_ir_se50",
    "scaled_channels",
    "stem",
]

#: TreB1eN's ``face_verify.py`` calls two faces the same below a *squared* Euclidean distance of
#: 1.54 between unit embeddings (cosine above 0.23), measured on its MTCNN 112x112 crops
TREB1EN_SQUARED_DISTANCE_THRESHOLD = 1.54
#: the same threshold as a Euclidean distance, the project's convention
ARCFACE_MATCH_THRESHOLD = math.sqrt(TREB1EN_SQUARED_DISTANCE_THRESHOLD)
#: (top, bottom, left, right) of the face region in a 256-pixel FFHQ-aligned image
ARCFACE_CROP = (35, 223, 32, 220)
#: the side the crop is pooled to, the network's input
ARCFACE_INPUT = 112
#: the side generator output is brought to before cropping (torchvision ``Resize(256)``)
ARCFACE_SOURCE = 256
EMBEDDING_DIM = 512
SE_REDUCTION = 16
WEIGHTS_FILE = "model_ir_se50.pth"

#: units per stage of ``get_blocks(num_layers)``
_STAGE_UNITS = {50: (3, 4, 14, 3), 100: (3, 13, 30, 3), 152: (3, 8, 36, 3)}
_STAGE_DEPTHS = (64, 128, 256, 512)
_UNITS_TO_LAYERS = {sum(units): layers for layers, units in _STAGE_UNITS.items()}


class UnitSpec(NamedTuple):
    """One residual unit (the reference's ``Bottleneck`` named tuple)."""

    in_channel: int
    depth: int
    stride: int


def get_blocks(num_layers: int, width: float = 1.0) -> list[list[UnitSpec]]:
    """The four stages of ``get_blocks(num_layers)``, channel counts scaled by ``width``."""
    if num_layers not in _STAGE_UNITS:
        raise ValueError(f"num_layers must be 50, 100 or 152, got {num_layers}")
    depths = [scaled_channels(depth, width) for depth in _STAGE_DEPTHS]
    stages: list[list[UnitSpec]] = []
    in_channel = depths[0]
    for depth, units in zip(depths, _STAGE_UNITS[num_layers], strict=True):
        stages.append([UnitSpec(in_channel, depth, 2)] + [UnitSpec(depth, depth, 1)] * (units - 1))
        in_channel = depth
    return stages


def build_units(num_layers: int, mode: str, width: float = 1.0) -> nn.Sequential:
    """The ``body``: every unit of :func:`get_blocks`, in order."""
    if mode not in ("ir", "ir_se"):
        raise ValueError(f"mode must be 'ir' or 'ir_se', got {mode!r}")
    return nn.Sequential(
        *(
            BottleneckIR(unit.in_channel, unit.depth, unit.stride, se=mode == "ir_se")
            for stage in get_blocks(num_layers, width)
            for unit in stage
        )
    )


def stem(width: float = 1.0) -> nn.Sequential:
    """``input_layer``: 3x3 convolution (no bias), batch norm, PReLU."""
    channels = scaled_channels(64, width)
    return nn.Sequential(
        nn.Conv2d(3, channels, 3, 1, 1, bias=False), nn.BatchNorm2d(channels), nn.PReLU(channels)
    )


def l2_norm(x: torch.Tensor) -> torch.Tensor:
    """Rows divided by their Euclidean norm (the reference's ``l2_norm``, no epsilon)."""
    return x / torch.linalg.vector_norm(x, 2, dim=1, keepdim=True)


def scaled_channels(channels: int, width: float) -> int:
    """``channels * width``, a whole number of at least 16 (the SE block divides by 16)."""
    scaled = channels * width
    if scaled != int(scaled) or int(scaled) < SE_REDUCTION:
        raise ValueError(f"width {width} gives {scaled} channels from {channels}; need a whole number >= 16")
    return int(scaled)


class SEModule(nn.Module):
    """Squeeze and excitation: ``fc1``/``fc2`` are bias-free 1x1 convolutions."""

    def __init__(self, channels: int, reduction: int = SE_REDUCTION) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, channels // reduction, kernel_size=1, padding=0, bias=False)
        self.relu = nn.ReLU()
        self.fc2 = nn.Conv2d(channels // reduction, channels, kernel_size=1, padding=0, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.sigmoid(self.fc2(self.relu(self.fc1(self.avg_pool(x)))))


class BottleneckIR(nn.Module):
    """``bottleneck_IR`` (``se=False``) or ``bottleneck_IR_SE``: BN-conv-PReLU-conv(stride)-BN[-SE].

    The shortcut is ``MaxPool2d(1, stride)`` (a strided identity) where the channel count is
    kept, else a strided 1x1 convolution and batch norm.
    """

    def __init__(self, in_channel: int, depth: int, stride: int, *, se: bool = True) -> None:
        super().__init__()
        self.shortcut_layer: nn.Module
        if in_channel == depth:
            self.shortcut_layer = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channel, depth, (1, 1), stride, bias=False), nn.BatchNorm2d(depth)
            )
        layers: list[nn.Module] = [
            nn.BatchNorm2d(in_channel),
            nn.Conv2d(in_channel, depth, (3, 3), (1, 1), 1, bias=False),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, (3, 3), stride, 1, bias=False),
            nn.BatchNorm2d(depth),
        ]
        if se:
            layers.append(SEModule(depth))
        self.res_layer = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class IRSE50(nn.Module):
    """TreB1eN's ``Backbone``: RGB (N, 3, S, S) in [-1, 1], S = ``input_size`` -> unit (N, 512).

    ``width`` scales every channel count (not the 512-d embedding) and exists for tests: the
    state dict keeps the reference's key names and tensor ranks. Batch norm and dropout follow
    the module's train/eval mode, as in the reference.
    """

    def __init__(
        self,
        num_layers: int = 50,
        drop_ratio: float = 0.6,
        mode: str = "ir_se",
        input_size: int = ARCFACE_INPUT,
        *,
        width: float = 1.0,
    ) -> None:
        super().__init__()
        if input_size not in (112, 224):
            raise ValueError(f"input_size must be 112 or 224, got {input_size}")
        self.num_layers, self.mode, self.input_size, self.width = num_layers, mode, input_size, width
        self.input_layer = stem(width)
        self.body = build_units(num_layers, mode, width)
        channels, side = scaled_channels(512, width), input_size // 16
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(channels),
            nn.Dropout(drop_ratio),
            nn.Flatten(),
            nn.Linear(channels * side * side, EMBEDDING_DIM),
            nn.BatchNorm1d(EMBEDDING_DIM),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return l2_norm(self.output_layer(self.body(self.input_layer(x))))


class IRSEConfig(NamedTuple):
    """What a state dict says about the network that wrote it."""

    num_layers: int
    mode: str
    input_size: int
    width: float


def infer_ir_se50_config(state: Mapping[str, torch.Tensor]) -> IRSEConfig:
    """The :class:`IRSE50` shape that fits a state dict (depth, mode, input size, width)."""
    try:
        width = state["input_layer.0.weight"].shape[0] / 64
        units = len({key.split(".")[1] for key in state if key.startswith("body.")})
        mode = "ir_se" if "body.0.res_layer.5.fc1.weight" in state else "ir"
        flat = state["output_layer.3.weight"].shape[1] / (512 * width)
    except (KeyError, IndexError, AttributeError) as error:
        raise ModelFormatError(f"not an IR-SE state dict (missing {error})") from error
    num_layers = _UNITS_TO_LAYERS.get(units)
    input_size = {49.0: 112, 196.0: 224}.get(flat)
    if num_layers is None or input_size is None:
        raise ModelFormatError(f"not an IR-SE state dict ({units} units, {flat} features per channel)")
    return IRSEConfig(num_layers, mode, input_size, width)


def _read_checkpoint(path: str | Path, sha256: str | None) -> object:
    check_sha256(path, sha256)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as error:
        raise ModelFormatError(f"{path}: unreadable checkpoint ({error})") from error


def load_ir_se50(
    path_or_state: str | Path | Mapping[str, torch.Tensor],
    *,
    device: str | torch.device = "cpu",
    sha256: str | None = None,
) -> IRSE50:
    """Load ``model_ir_se50.pth`` (a bare state dict) or such a dict, strictly; frozen, eval mode.

    Depth, mode, input size and width are read from the tensors. Files older than PyTorch 0.4.1
    lack ``num_batches_tracked``; batch norm fills it in, as in the reference's own loading.
    """
    source = path_or_state if isinstance(path_or_state, Mapping) else _read_checkpoint(path_or_state, sha256)
    name = "state dict" if isinstance(path_or_state, Mapping) else str(path_or_state)
    if not isinstance(source, Mapping):
        raise ModelFormatError(f"{name}: expected a state dict, got {type(source).__name__}")
    try:
        config = infer_ir_se50_config(source)
        with torch.device("meta"):  # no random initialisation: every tensor comes from the file
            model = IRSE50(
                config.num_layers, mode=config.mode, input_size=config.input_size, width=config.width
            )
        model.load_state_dict(source, strict=True, assign=True)
    except (RuntimeError, ValueError) as error:
        raise ModelFormatError(f"{name}: not an IR-SE50 checkpoint ({error})") from error
    return model.eval().requires_grad_(False).to(device)


def arcface_preprocess(images: torch.Tensor) -> torch.Tensor:
    """Generator-range faces (N, 3, H, W) in [-1, 1] -> the network's (N, 3, 112, 112) input.

    ``Resize(256)`` (shorter side to 256, bilinear with antialiasing; skipped at that size) and
    ``CenterCrop(256)`` as torchvision does them, then ``x[:, :, 35:223, 32:220]`` and
    ``AdaptiveAvgPool2d((112, 112))``. Differentiable.
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected (N, 3, H, W) RGB images, got {tuple(images.shape)}")
    height, width = images.shape[-2:]
    short, long = (height, width) if height <= width else (width, height)
    if short != ARCFACE_SOURCE:
        new_long = int(ARCFACE_SOURCE * long / short)
        size = (ARCFACE_SOURCE, new_long) if height <= width else (new_long, ARCFACE_SOURCE)
        images = F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)
        height, width = size
    top = round((height - ARCFACE_SOURCE) / 2.0)
    left = round((width - ARCFACE_SOURCE) / 2.0)
    images = images[:, :, top : top + ARCFACE_SOURCE, left : left + ARCFACE_SOURCE]
    crop_top, crop_bottom, crop_left, crop_right = ARCFACE_CROP
    face = images[:, :, crop_top:crop_bottom, crop_left:crop_right]
    return F.adaptive_avg_pool2d(face, (ARCFACE_INPUT, ARCFACE_INPUT))


class ArcFaceRecognizer(Recognizer):
    """ArcFace IR-SE50 as a :class:`Recognizer` for 256-pixel FFHQ-aligned faces.

    ``forward``: float32 (N, 3, 256, 256) RGB in [0, 255] -> unit (N, 512), with gradients to
    the input (other sizes are resized as the published code does). :meth:`embed_signed` takes
    generator output in [-1, 1] directly. Two faces match below ``match_threshold`` (Euclidean;
    TreB1eN's published threshold, calibrated on its own crops, not on this preprocessing).
    """

    def __init__(self, backbone: IRSE50, *, match_threshold: float | None = ARCFACE_MATCH_THRESHOLD) -> None:
        super().__init__()
        if backbone.input_size != ARCFACE_INPUT:
            raise ValueError(f"the published preprocessing feeds 112-pixel crops, not {backbone.input_size}")
        self.backbone = backbone
        self.input_size = (ARCFACE_SOURCE, ARCFACE_SOURCE)
        self.embedding_dim = EMBEDDING_DIM
        self.match_threshold = match_threshold
        self.requires_grad_(False)
        self.eval()

    def embed_signed(self, images: torch.Tensor) -> torch.Tensor:
        """Embeddings of (N, 3, H, W) RGB in [-1, 1] (the generator's range)."""
        return self.backbone(arcface_preprocess(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected (N, 3, H, W) RGB images, got {tuple(images.shape)}")
        return self.embed_signed(images / 127.5 - 1.0)


def load_arcface_recognizer(
    path_or_state: str | Path | Mapping[str, torch.Tensor],
    *,
    device: str | torch.device = "cpu",
    sha256: str | None = None,
) -> ArcFaceRecognizer:
    """:func:`load_ir_se50` wrapped as a frozen, eval-mode :class:`ArcFaceRecognizer`."""
    return ArcFaceRecognizer(load_ir_se50(path_or_state, device=device, sha256=sha256))
