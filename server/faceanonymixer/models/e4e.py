"""The e4e (encoder4editing) encoder of ``e4e_ffhq_encode.pt``: aligned face -> StyleGAN2 W+.

``Encoder4Editing`` of omertov/encoder4editing (``models/encoders/psp_encoders.py``): the IR-SE50
trunk of :mod:`faceanonymixer.models.ir_se50` (``input_layer``, ``body``) tapped after units 6,
20 and 23 (64, 32 and 16 pixels for a 256-pixel input), a feature pyramid (``latlayer1``,
``latlayer2``, bilinear upsampling with ``align_corners=True``) and one ``GradualStyleBlock``
per generator layer (``styles.<i>``: stride-2 3x3 convolutions with LeakyReLU down to 1x1, then
a rosinality ``EqualLinear``). Layer 0 gives a base code w0 broadcast to every layer; layers
1..17 add their own delta (layers 3-6 from the middle pyramid level, 7-17 from the finest).

The checkpoint is the pSp wrapper's save dict (``training/coach.py``): ``state_dict`` holding
``encoder.*`` and ``decoder.*`` (the StyleGAN2 generator, loaded elsewhere), ``opts`` (the
training options as a dict) and, when ``start_from_latent_avg``, ``latent_avg`` (18 x 512, or
512), which ``models/psp.py`` adds to the encoder's codes. Input: RGB (N, 3, 256, 256) in
[-1, 1] (e4e's ``Resize(256), ToTensor, Normalize(0.5, 0.5)``).
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from faceanonymixer.models.ir_se50 import build_units, scaled_channels, stem
from faceanonymixer.models.weights import check_sha256
from faceanonymixer.utils.errors import ModelFormatError

__all__ = [
    "E4E_INPUT",
    "E4EEncoder",
    "Encoder4Editing",
    "EqualLinear",
    "GradualStyleBlock",
    "encoder_state_dict",
    "load_e4e",
    "n_styles_for",
]

E4E_INPUT = 256
WEIGHTS_FILE = "e4e_ffhq_encode.pt"
#: body units whose outputs feed the pyramid: ends of stages 2, 3 and 4 of ``get_blocks(50)``
_FINE_TAP, _MIDDLE_TAP, _COARSE_TAP = 6, 20, 23


def n_styles_for(stylegan_size: int) -> int:
    """W+ rows of a StyleGAN2 of that resolution: ``2 * log2(size) - 2`` (18 for 1024)."""
    return 2 * int(math.log(stylegan_size, 2)) - 2


class EqualLinear(nn.Module):
    """rosinality's ``EqualLinear`` (no activation): ``weight`` used times ``lr_mul / sqrt(in)``."""

    def __init__(
        self, in_dim: int, out_dim: int, bias: bool = True, bias_init: float = 0.0, lr_mul: float = 1.0
    ):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim).div_(lr_mul))
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init))) if bias else None
        self.scale = (1 / math.sqrt(in_dim)) * lr_mul
        self.lr_mul = lr_mul

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias * self.lr_mul if self.bias is not None else None
        return F.linear(x, self.weight * self.scale, bias=bias)


class GradualStyleBlock(nn.Module):
    """``log2(spatial)`` stride-2 3x3 convolutions (each with LeakyReLU 0.01) to 1x1, then EqualLinear."""

    def __init__(self, in_c: int, out_c: int, spatial: int) -> None:
        super().__init__()
        self.out_c, self.spatial = out_c, spatial
        num_pools = int(math.log2(spatial))
        modules: list[nn.Module] = [
            nn.Conv2d(in_c, out_c, kernel_size=3, stride=2, padding=1),
            nn.LeakyReLU(),
        ]
        for _ in range(num_pools - 1):
            modules += [nn.Conv2d(out_c, out_c, kernel_size=3, stride=2, padding=1), nn.LeakyReLU()]
        self.convs = nn.Sequential(*modules)
        self.linear = EqualLinear(out_c, out_c, lr_mul=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.convs(x)
        if x.shape[-2:] != (1, 1):
            raise ValueError(f"style block reduced its features to {tuple(x.shape[-2:])}, not 1x1")
        return self.linear(x.reshape(x.shape[0], self.out_c))


def _upsample_add(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=y.shape[-2:], mode="bilinear", align_corners=True) + y


class Encoder4Editing(nn.Module):
    """RGB (N, 3, S, S) in [-1, 1], S = ``image_size`` -> W+ offsets (N, ``n_styles``, 512).

    The codes are relative to ``latent_avg`` (see :class:`E4EEncoder`). ``width`` scales every
    channel count, the code width included, and ``image_size`` may be lowered (to a power of
    two of at least 16): both exist for tests, the state dict keeps e4e's key names and ranks.
    Only the 50-layer trunk is supported (the reference taps fixed unit indices).
    """

    def __init__(
        self,
        num_layers: int = 50,
        mode: str = "ir_se",
        n_styles: int = 18,
        *,
        width: float = 1.0,
        image_size: int = E4E_INPUT,
    ) -> None:
        super().__init__()
        if num_layers != 50:
            raise ValueError(f"e4e taps the 50-layer trunk's units 6, 20 and 23; num_layers {num_layers}")
        if n_styles < 1:
            raise ValueError(f"n_styles must be positive, got {n_styles}")
        if not 16 <= image_size <= E4E_INPUT or image_size & (image_size - 1):
            raise ValueError(f"image_size must be a power of two in [16, 256], got {image_size}")
        self.mode, self.width, self.image_size = mode, width, image_size
        self.style_count = n_styles
        self.coarse_ind, self.middle_ind = 3, 7
        #: deltas applied up to this layer (e4e's ProgressiveStage; 18 = Inference, all of them)
        self.progressive_stage = 18
        self.style_dim = scaled_channels(512, width)
        self.input_layer = stem(width)
        self.body = build_units(num_layers, mode, width)
        self.styles = nn.ModuleList(
            GradualStyleBlock(
                self.style_dim,
                self.style_dim,
                16 if index < self.coarse_ind else 32 if index < self.middle_ind else 64,
            )
            for index in range(n_styles)
        )
        self.latlayer1 = nn.Conv2d(
            scaled_channels(256, width), self.style_dim, kernel_size=1, stride=1, padding=0
        )
        self.latlayer2 = nn.Conv2d(
            scaled_channels(128, width), self.style_dim, kernel_size=1, stride=1, padding=0
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        expected = (3, self.image_size, self.image_size)
        if images.dim() != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(
                f"expected (N, {', '.join(map(str, expected))}) images, got {tuple(images.shape)}"
            )
        x = self.input_layer(images)
        fine = middle = coarse = x
        for index, unit in enumerate(self.body):
            x = unit(x)
            if index == _FINE_TAP:
                fine = x
            elif index == _MIDDLE_TAP:
                middle = x
            elif index == _COARSE_TAP:
                coarse = x
        w0 = self.styles[0](coarse)
        rows = [w0]
        features = pyramid = coarse
        for index in range(1, min(self.progressive_stage + 1, self.style_count)):
            if index == self.coarse_ind:
                pyramid = features = _upsample_add(coarse, self.latlayer1(middle))
            elif index == self.middle_ind:
                features = _upsample_add(pyramid, self.latlayer2(fine))
            rows.append(w0 + self.styles[index](features))
        rows += [w0] * (self.style_count - len(rows))
        return torch.stack(rows, dim=1)


class E4EEncoder(nn.Module):
    """The encoder as pSp runs it: ``encoder(x) + latent_avg`` -> W+ (N, ``n_styles``, 512).

    ``latent_avg`` is a buffer (``n_styles`` x 512), None where the checkpoint was trained
    without ``start_from_latent_avg``. ``stylegan_size`` is the generator resolution it targets.
    """

    latent_avg: torch.Tensor | None

    def __init__(self, encoder: Encoder4Editing, latent_avg: torch.Tensor | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        if latent_avg is not None:
            rows, dim = encoder.style_count, encoder.style_dim
            if latent_avg.shape not in ((rows, dim), (1, dim), (dim,)):
                raise ValueError(
                    f"latent_avg of shape {tuple(latent_avg.shape)} does not fit {rows} x {dim} codes"
                )
            latent_avg = latent_avg.reshape(-1, dim).expand(rows, dim).clone()
        self.register_buffer("latent_avg", latent_avg)
        self.n_styles, self.style_dim = encoder.style_count, encoder.style_dim
        self.image_size = encoder.image_size
        self.stylegan_size = 2 ** ((encoder.style_count + 2) // 2)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        codes = self.encoder(images)
        return codes + self.latent_avg if self.latent_avg is not None else codes


def encoder_state_dict(state: Mapping[str, torch.Tensor], name: str = "encoder") -> dict[str, torch.Tensor]:
    """pSp's ``get_keys``: the entries under ``<name>.``, with that prefix removed."""
    prefix = f"{name}."
    return {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}


def _opts_n_styles(opts: Mapping[str, Any]) -> int | None:
    """W+ rows the options promise: ``stylegan_size``, else e4e's ``dataset_type`` rule."""
    size = opts.get("stylegan_size")
    if size is None and isinstance(dataset := opts.get("dataset_type"), str):
        size = 1024 if "ffhq" in dataset else 512 if "car" in dataset else 256
    return n_styles_for(int(size)) if size is not None else None


def load_e4e(
    path_or_checkpoint: str | Path | Mapping[str, Any],
    *,
    device: str | torch.device = "cpu",
    sha256: str | None = None,
) -> E4EEncoder:
    """Load ``e4e_ffhq_encode.pt`` (or such a dict) strictly; frozen, eval mode, on ``device``.

    The ``encoder.`` entries of ``state_dict`` must fill :class:`Encoder4Editing` exactly
    (``decoder.`` and other top-level entries are left to their own loaders). Layer count and
    width come from the tensors and must agree with ``opts`` (``encoder_type`` Encoder4Editing,
    ``stylegan_size``); ``latent_avg`` is added when ``opts`` start from it (the default).
    """
    if isinstance(path_or_checkpoint, Mapping):
        checkpoint: object = path_or_checkpoint
        name = "checkpoint"
    else:
        check_sha256(path_or_checkpoint, sha256)
        name = str(path_or_checkpoint)
        try:
            checkpoint = torch.load(path_or_checkpoint, map_location="cpu", weights_only=True)
        except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as error:
            raise ModelFormatError(f"{name}: unreadable checkpoint ({error})") from error
    if not isinstance(checkpoint, Mapping) or not isinstance(checkpoint.get("state_dict"), Mapping):
        raise ModelFormatError(f"{name}: not a pSp/e4e checkpoint (no state_dict)")
    raw_opts = checkpoint.get("opts") or {}
    opts: Mapping[str, Any] = raw_opts if isinstance(raw_opts, Mapping) else vars(raw_opts)
    encoder_type = opts.get("encoder_type", "Encoder4Editing")
    if encoder_type != "Encoder4Editing":
        raise ModelFormatError(f"{name}: encoder_type {encoder_type!r}, only Encoder4Editing is supported")
    state = encoder_state_dict(checkpoint["state_dict"])
    if "input_layer.0.weight" not in state:
        raise ModelFormatError(f"{name}: no encoder.input_layer.0.weight in state_dict")
    n_styles = len({key.split(".")[1] for key in state if key.startswith("styles.")})
    promised = _opts_n_styles(opts)
    if promised is not None and promised != n_styles:
        raise ModelFormatError(f"{name}: opts promise {promised} styles, state_dict holds {n_styles}")
    mode = "ir_se" if "body.0.res_layer.5.fc1.weight" in state else "ir"
    width = state["input_layer.0.weight"].shape[0] / 64
    latent_avg = checkpoint.get("latent_avg") if opts.get("start_from_latent_avg", True) else None
    if opts.get("start_from_latent_avg", True) and not isinstance(latent_avg, torch.Tensor):
        raise ModelFormatError(f"{name}: opts start from latent_avg but the checkpoint has none")
    try:
        with torch.device("meta"):  # no random initialisation: every tensor comes from the file
            encoder = Encoder4Editing(50, mode, n_styles, width=width)
        encoder.load_state_dict(state, strict=True, assign=True)
        model = E4EEncoder(encoder, latent_avg.float() if latent_avg is not None else None)
    except (RuntimeError, ValueError) as error:
        raise ModelFormatError(f"{name}: not an e4e encoder checkpoint ({error})") from error
    return model.eval().requires_grad_(False).to(device)
