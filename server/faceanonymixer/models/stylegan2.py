"""StyleGAN2 generator (config F and its relatives) in pure PyTorch, checkpoint-exact.

The module tree, parameter and buffer names and tensor ranks are those of rosinality's
``stylegan2-pytorch`` (``model.py``), so a ``g_ema`` state dict from that code (for example the
converted ``stylegan2-ffhq-config-f.pt``: ``{"g_ema": ..., "latent_avg": ...}``) loads with
``strict=True``. The genforce format that the published FaceAnonyMixer and FALCO code load
(``stylegan2_ffhq1024.pth``: ``{"generator_smooth": ..., ...}`` with ``mapping.dense0.weight``,
``synthesis.layer0.weight``, ``truncation.w_avg``, ...) is converted to it by
:func:`convert_genforce_state_dict`.

The custom ops are standard PyTorch (:mod:`.stylegan2_ops`); the modulated convolution is the
non-grouped form. Synthesis always uses the checkpoint's constant noise buffers
(``noises.noise_<i>``), so an image is a deterministic function of its W+ latent.
"""

from __future__ import annotations

import argparse
import math
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import nn

from faceanonymixer.models.generator_base import STYLEGAN2_WPLUS_LAYOUT, Generator, LatentLayout
from faceanonymixer.models.stylegan2_ops import (
    fused_leaky_relu,
    make_kernel,
    modulated_conv2d,
    upfirdn2d,
)
from faceanonymixer.models.weights import check_sha256
from faceanonymixer.utils.errors import ModelFormatError

__all__ = [
    "KEY_TRUNCATION",
    "StyleGAN2Config",
    "StyleGAN2FaceGenerator",
    "StyleGAN2Generator",
    "convert_genforce_state_dict",
    "infer_config",
    "load_stylegan2",
    "rosinality_channels",
    "wplus_layout",
]

STYLE_DIM = 512
N_MLP = 8
#: the FIR taps of every StyleGAN2 up/down-sampling filter
BLUR_TAPS = (1, 3, 3, 1)
#: samples and seed of the mapping network's mean when a checkpoint carries no ``latent_avg``
MEAN_LATENT_SAMPLES = 4096
MEAN_LATENT_SEED = 0
#: truncation of the key's synthetic latent: the published code's fake-face pool uses psi 0.7
KEY_TRUNCATION = 0.7


def rosinality_channels(size: int, channel_multiplier: int = 2, *, narrow: int = 1) -> dict[int, int]:
    """Feature maps per resolution, as rosinality's table (512 up to 32 px, then 16384 * cm / res).

    ``narrow`` divides every entry (at least 1 channel): tiny models with the same layout, for tests.
    """
    if narrow < 1:
        raise ValueError("narrow must be a positive divisor")
    table = {}
    for log_res in range(2, int(math.log2(size)) + 1):
        res = 2**log_res
        width = 512 if res <= 32 else 16384 * channel_multiplier // res
        table[res] = max(1, width // narrow)
    return table


class PixelNorm(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(torch.mean(x.square(), dim=1, keepdim=True) + 1e-8)


class EqualLinear(nn.Module):
    """Linear layer with equalised learning rate (weight stored as N(0, 1) / lr_mul)."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        *,
        bias_init: float = 0.0,
        lr_mul: float = 1.0,
        activation: bool = False,
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim).div_(lr_mul))
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init)))
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.activation:
            return fused_leaky_relu(F.linear(x, self.weight * self.scale), self.bias * self.lr_mul)
        return F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)


class ConstantInput(nn.Module):
    def __init__(self, channels: int, size: int = 4) -> None:
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channels, size, size))

    def forward(self, batch: int) -> torch.Tensor:
        return self.input.expand(batch, -1, -1, -1)


class Blur(nn.Module):
    """FIR filter with a ``kernel`` buffer (scaled by ``upsample_factor``^2 after a transposed conv)."""

    kernel: torch.Tensor

    def __init__(self, taps: Sequence[float], pad: tuple[int, int], upsample_factor: int = 1) -> None:
        super().__init__()
        self.register_buffer("kernel", make_kernel(taps) * upsample_factor**2)
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upfirdn2d(x, self.kernel, pad=self.pad)


class Upsample(nn.Module):
    """Zero-insertion upsampling by ``factor`` followed by the FIR filter (``kernel`` buffer)."""

    kernel: torch.Tensor

    def __init__(self, taps: Sequence[float], factor: int = 2) -> None:
        super().__init__()
        self.factor = factor
        self.register_buffer("kernel", make_kernel(taps) * factor**2)
        excess = len(taps) - factor
        self.pad = ((excess + 1) // 2 + factor - 1, excess // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upfirdn2d(x, self.kernel, up=self.factor, pad=self.pad)


class ModulatedConv2d(nn.Module):
    """Style-modulated convolution; ``weight`` is (1, out, in, k, k) as in the checkpoints."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        style_dim: int,
        *,
        demodulate: bool = True,
        upsample: bool = False,
        blur_taps: Sequence[float] = BLUR_TAPS,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.demodulate, self.upsample = demodulate, upsample
        self.blur: Blur | None = None
        if upsample:
            factor = 2
            excess = (len(blur_taps) - factor) - (kernel_size - 1)
            pad = ((excess + 1) // 2 + factor - 1, excess // 2 + 1)
            self.blur = Blur(blur_taps, pad, upsample_factor=factor)
        self.scale = 1.0 / math.sqrt(in_channels * kernel_size**2)
        self.weight = nn.Parameter(torch.randn(1, out_channels, in_channels, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_channels, bias_init=1.0)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        style = self.modulation(w)
        out = modulated_conv2d(
            x, self.weight[0] * self.scale, style, demodulate=self.demodulate, upsample=self.upsample
        )
        if self.blur is not None:
            out = self.blur(out)
        return out


class NoiseInjection(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return x + self.weight * noise


class FusedLeakyReLU(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fused_leaky_relu(x, self.bias)


class StyledConv(nn.Module):
    """Modulated 3x3 convolution, constant noise, bias and leaky ReLU."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        style_dim: int,
        *,
        upsample: bool = False,
        blur_taps: Sequence[float] = BLUR_TAPS,
    ) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(
            in_channels, out_channels, kernel_size, style_dim, upsample=upsample, blur_taps=blur_taps
        )
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_channels)

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.activate(self.noise(self.conv(x, w), noise))


class ToRGB(nn.Module):
    """1x1 modulated convolution to RGB (no demodulation) plus the upsampled previous image."""

    def __init__(
        self,
        in_channels: int,
        style_dim: int,
        *,
        upsample: bool = True,
        blur_taps: Sequence[float] = BLUR_TAPS,
    ) -> None:
        super().__init__()
        self.upsample: Upsample | None = Upsample(blur_taps) if upsample else None
        self.conv = ModulatedConv2d(in_channels, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: torch.Tensor, w: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        out = self.conv(x, w) + self.bias
        if skip is not None and self.upsample is not None:
            out = out + self.upsample(skip)
        return out


class StyleGAN2Generator(nn.Module):
    """StyleGAN2 generator with rosinality's parameter names.

    ``mapping`` z (N, style_dim) -> w (N, style_dim); ``truncate`` pulls w towards ``latent_avg``;
    ``broadcast`` repeats w into W+ (N, n_latent, style_dim); ``synthesis`` W+ -> RGB
    (N, 3, size, size), nominally in [-1, 1] (not clamped, as in the reference code).

    ``channels`` (resolution -> feature maps) overrides rosinality's table, which is otherwise
    ``rosinality_channels(size, channel_multiplier, narrow=narrow)``. ``latent_avg`` is a
    non-persistent buffer: the state dict keeps exactly the checkpoint's keys.
    """

    latent_avg: torch.Tensor

    def __init__(
        self,
        size: int,
        style_dim: int = STYLE_DIM,
        n_mlp: int = N_MLP,
        channel_multiplier: int = 2,
        *,
        narrow: int = 1,
        channels: Mapping[int, int] | None = None,
        blur_taps: Sequence[float] = BLUR_TAPS,
        lr_mlp: float = 0.01,
    ) -> None:
        super().__init__()
        if size < 4 or size & (size - 1):
            raise ValueError(f"size must be a power of two of at least 4, not {size}")
        self.size, self.style_dim, self.n_mlp = size, style_dim, n_mlp
        self.log_size = int(math.log2(size))
        self.num_layers = (self.log_size - 2) * 2 + 1
        self.n_latent = self.log_size * 2 - 2
        table = (
            dict(channels)
            if channels is not None
            else rosinality_channels(size, channel_multiplier, narrow=narrow)
        )
        missing = [2**i for i in range(2, self.log_size + 1) if 2**i not in table]
        if missing:
            raise ValueError(f"no channel count for resolutions {missing}")
        self.channels = table
        self.channel_multiplier = _matching_multiplier(size, table)

        self.style = nn.Sequential(
            PixelNorm(),
            *(EqualLinear(style_dim, style_dim, lr_mul=lr_mlp, activation=True) for _ in range(n_mlp)),
        )
        self.input = ConstantInput(table[4])
        self.conv1 = StyledConv(table[4], table[4], 3, style_dim, blur_taps=blur_taps)
        self.to_rgb1 = ToRGB(table[4], style_dim, upsample=False, blur_taps=blur_taps)
        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        self.noises = nn.Module()
        for layer in range(self.num_layers):
            side = 2 ** ((layer + 5) // 2)
            self.noises.register_buffer(f"noise_{layer}", torch.randn(1, 1, side, side))
        in_channels = table[4]
        for log_res in range(3, self.log_size + 1):
            out_channels = table[2**log_res]
            self.convs.append(
                StyledConv(in_channels, out_channels, 3, style_dim, upsample=True, blur_taps=blur_taps)
            )
            self.convs.append(StyledConv(out_channels, out_channels, 3, style_dim, blur_taps=blur_taps))
            self.to_rgbs.append(ToRGB(out_channels, style_dim, blur_taps=blur_taps))
            in_channels = out_channels
        self.register_buffer("latent_avg", torch.zeros(style_dim), persistent=False)

    # ---- latents -----------------------------------------------------------------------------

    def mapping(self, z: torch.Tensor) -> torch.Tensor:
        """Gaussian codes (N, style_dim) -> W (N, style_dim)."""
        return self.style(z)

    def truncate(self, w: torch.Tensor, psi: float) -> torch.Tensor:
        """``latent_avg + psi * (w - latent_avg)`` for W or W+ latents (psi 1: w itself)."""
        if psi == 1.0:
            return w
        return torch.lerp(self.latent_avg.to(w.dtype), w, psi)

    def broadcast(self, w: torch.Tensor) -> torch.Tensor:
        """W (N, style_dim) -> W+ (N, n_latent, style_dim), the same row for every layer."""
        return w[:, None, :].repeat(1, self.n_latent, 1)

    @torch.no_grad()
    def mean_latent(
        self, n_samples: int = MEAN_LATENT_SAMPLES, *, seed: int = MEAN_LATENT_SEED
    ) -> torch.Tensor:
        """Mean of ``mapping`` over ``n_samples`` seeded Gaussian codes, (style_dim,)."""
        generator = torch.Generator().manual_seed(seed)
        z = torch.randn(n_samples, self.style_dim, generator=generator)
        reference = self.input.input
        return self.mapping(z.to(device=reference.device, dtype=reference.dtype)).mean(dim=0)

    # ---- images ------------------------------------------------------------------------------

    def synthesis(self, w_plus: torch.Tensor) -> torch.Tensor:
        """W+ (N, n_latent, style_dim) -> RGB (N, 3, size, size) with the constant noise buffers."""
        if w_plus.ndim != 3 or tuple(w_plus.shape[1:]) != (self.n_latent, self.style_dim):
            raise ValueError(
                f"expected W+ latents (N, {self.n_latent}, {self.style_dim}), got {tuple(w_plus.shape)}"
            )
        noises = [self.noises.get_buffer(f"noise_{layer}") for layer in range(self.num_layers)]
        out = self.conv1(self.input(w_plus.shape[0]), w_plus[:, 0], noises[0])
        skip = self.to_rgb1(out, w_plus[:, 1])
        row = 1
        for index, to_rgb in enumerate(self.to_rgbs):
            out = self.convs[2 * index](out, w_plus[:, row], noises[row])
            out = self.convs[2 * index + 1](out, w_plus[:, row + 1], noises[row + 1])
            skip = to_rgb(out, w_plus[:, row + 2], skip)
            row += 2
        return skip

    def forward(self, z: torch.Tensor, truncation: float = 1.0) -> torch.Tensor:
        """Gaussian codes -> images, one W for every layer, truncated by ``truncation``."""
        return self.synthesis(self.broadcast(self.truncate(self.mapping(z), truncation)))


def _matching_multiplier(size: int, channels: Mapping[int, int]) -> int | None:
    """The channel multiplier of rosinality's table that gives ``channels``, if any."""
    if size < 64:
        return 2 if all(channels[2**i] == 512 for i in range(2, int(math.log2(size)) + 1)) else None
    multiplier, remainder = divmod(channels[size] * size, 16384)
    if remainder or multiplier < 1 or rosinality_channels(size, multiplier) != dict(channels):
        return None
    return multiplier


# ---- checkpoints -------------------------------------------------------------------------------


@dataclass(frozen=True)
class StyleGAN2Config:
    """The shape of a generator, read from a rosinality-format state dict."""

    size: int
    style_dim: int
    n_mlp: int
    channels: Mapping[int, int]

    def build(self) -> StyleGAN2Generator:
        return StyleGAN2Generator(self.size, self.style_dim, self.n_mlp, channels=self.channels)


def infer_config(state: Mapping[str, torch.Tensor]) -> StyleGAN2Config:
    """Size, style width, mapping depth and channel table of a rosinality ``g_ema`` state dict."""
    try:
        style_dim = int(state["style.1.weight"].shape[1])
        n_mlp = 0
        while f"style.{n_mlp + 1}.weight" in state:
            n_mlp += 1
        stages = 0
        while f"to_rgbs.{stages}.conv.weight" in state:
            stages += 1
        log_size = stages + 2
        channels = {4: int(state["input.input"].shape[1])}
        for log_res in range(3, log_size + 1):
            channels[2**log_res] = int(state[f"convs.{2 * (log_res - 3)}.conv.weight"].shape[1])
    except (KeyError, IndexError, AttributeError) as error:
        raise ModelFormatError(f"not a StyleGAN2 (rosinality) generator state dict: no {error}") from error
    return StyleGAN2Config(size=2**log_size, style_dim=style_dim, n_mlp=n_mlp, channels=channels)


def _genforce_kernel(kernel: torch.Tensor) -> torch.Tensor:
    """genforce's (1, 1, k, k) filter, applied by cross-correlation -> a convolution kernel (k, k)."""
    if kernel.ndim != 4 or kernel.shape[:2] != (1, 1):
        raise ModelFormatError(
            f"genforce filter kernel of shape {tuple(kernel.shape)}, expected (1, 1, k, k)"
        )
    return torch.flip(kernel[0, 0], (0, 1)).clone()


def convert_genforce_state_dict(
    state: Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """genforce StyleGAN2 generator state dict ('skip' architecture) -> (rosinality ``g_ema``, w_avg).

    The layouts differ only in names and in four conventions: genforce keeps conv weights
    (out, in, k, k) without the leading 1, the upsampling convolutions' kernels spatially
    unflipped (it flips them at run time), the modulation bias without its +1 (added at run time),
    and the noise strength and RGB bias as a scalar and (3,). Every key must be used exactly once.
    """
    remaining = dict(state)

    def take(key: str) -> torch.Tensor:
        try:
            return remaining.pop(key)
        except KeyError:
            raise ModelFormatError(f"genforce StyleGAN2 state dict has no {key!r}") from None

    n_mlp = 0
    while f"mapping.dense{n_mlp}.weight" in remaining:
        n_mlp += 1
    outputs = 0
    while f"synthesis.output{outputs}.weight" in remaining:
        outputs += 1
    if n_mlp == 0 or outputs == 0:
        raise ModelFormatError("not a genforce StyleGAN2 generator state dict (no mapping or outputs)")
    converted: dict[str, torch.Tensor] = {}
    for index in range(n_mlp):
        converted[f"style.{index + 1}.weight"] = take(f"mapping.dense{index}.weight")
        converted[f"style.{index + 1}.bias"] = take(f"mapping.dense{index}.bias")
    w_avg = take("truncation.w_avg")
    converted["input.input"] = take("synthesis.early_layer.const")
    for layer in range(2 * outputs - 1):
        source, target = f"synthesis.layer{layer}", "conv1" if layer == 0 else f"convs.{layer - 1}"
        upsampling = layer % 2 == 1
        weight = take(f"{source}.weight")[None]
        converted[f"{target}.conv.weight"] = torch.flip(weight, (3, 4)) if upsampling else weight
        converted[f"{target}.conv.modulation.weight"] = take(f"{source}.style.weight")
        converted[f"{target}.conv.modulation.bias"] = take(f"{source}.style.bias") + 1.0
        converted[f"{target}.noise.weight"] = take(f"{source}.noise_strength").reshape(1)
        converted[f"{target}.activate.bias"] = take(f"{source}.bias")
        converted[f"noises.noise_{layer}"] = take(f"{source}.noise")
        if upsampling:
            converted[f"{target}.conv.blur.kernel"] = _genforce_kernel(take(f"{source}.filter.kernel"))
    upsample_kernel = _genforce_kernel(take("synthesis.upsample.kernel"))
    for block in range(outputs):
        source, target = f"synthesis.output{block}", "to_rgb1" if block == 0 else f"to_rgbs.{block - 1}"
        converted[f"{target}.conv.weight"] = take(f"{source}.weight")[None]
        converted[f"{target}.conv.modulation.weight"] = take(f"{source}.style.weight")
        converted[f"{target}.conv.modulation.bias"] = take(f"{source}.style.bias") + 1.0
        converted[f"{target}.bias"] = take(f"{source}.bias").reshape(1, -1, 1, 1)
        if block > 0:
            converted[f"{target}.upsample.kernel"] = upsample_kernel.clone()
    if remaining:
        raise ModelFormatError(f"genforce StyleGAN2 state dict has unexpected keys: {sorted(remaining)}")
    return converted, w_avg


def _read_checkpoint(source: str | Path | Mapping[str, Any], sha256: str | None) -> Mapping[str, Any]:
    if isinstance(source, Mapping):
        return source
    check_sha256(source, sha256)
    try:
        # rosinality's training checkpoints also pickle their argparse.Namespace
        with torch.serialization.safe_globals([argparse.Namespace]):
            checkpoint = torch.load(source, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as error:
        raise ModelFormatError(f"{source}: not a readable torch checkpoint ({error})") from error
    if not isinstance(checkpoint, Mapping):
        raise ModelFormatError(f"{source}: a checkpoint must be a dict, not {type(checkpoint).__name__}")
    return checkpoint


def _split_checkpoint(
    checkpoint: Mapping[str, Any],
) -> tuple[Mapping[str, torch.Tensor], torch.Tensor | None]:
    """(rosinality state dict, latent_avg or None) of a rosinality or genforce checkpoint."""
    if "g_ema" in checkpoint:
        return checkpoint["g_ema"], checkpoint.get("latent_avg")
    for key in ("generator_smooth", "generator"):
        if key in checkpoint:
            return convert_genforce_state_dict(checkpoint[key])
    if "input.input" in checkpoint:
        return checkpoint, None
    if "synthesis.early_layer.const" in checkpoint:
        return convert_genforce_state_dict(checkpoint)
    raise ModelFormatError(
        "not a StyleGAN2 checkpoint: expected 'g_ema' (rosinality) or 'generator_smooth'/'generator' "
        f"(genforce), found {sorted(checkpoint)[:8]}"
    )


def load_stylegan2(
    source: str | Path | Mapping[str, Any],
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    sha256: str | None = None,
) -> StyleGAN2Generator:
    """A generator from a rosinality or genforce checkpoint (a path, or the loaded dict), frozen.

    The shape (size, style width, mapping depth, channels) is read from the state dict, which
    must then load with ``strict=True``. ``latent_avg`` comes from the checkpoint (rosinality's
    ``latent_avg``, genforce's ``truncation.w_avg``) or else from the mapping network's mean over
    ``MEAN_LATENT_SAMPLES`` codes drawn with seed ``MEAN_LATENT_SEED``.
    """
    state, latent_avg = _split_checkpoint(_read_checkpoint(source, sha256))
    config = infer_config(state)
    with torch.device("meta"):  # no random initialisation: every value comes from the checkpoint
        model = config.build()
    model = model.to_empty(device=device).to(dtype=dtype)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ModelFormatError(f"StyleGAN2 state dict does not match its own layout: {error}") from error
    if latent_avg is None:
        model.latent_avg = model.mean_latent()
    else:
        if latent_avg.numel() != config.style_dim:
            raise ModelFormatError(
                f"latent_avg has shape {tuple(latent_avg.shape)}, expected {config.style_dim} values"
            )
        model.latent_avg = latent_avg.reshape(config.style_dim).to(device=device, dtype=dtype)
    return model.eval().requires_grad_(False)


# ---- the engine's Generator interface ---------------------------------------------------------


def wplus_layout(n_latent: int, width: int = STYLE_DIM) -> LatentLayout:
    """The published W+ mixing: rows 0-2 KEY, 3-7 OPTIMISED, the rest REAL (fewer rows: fewer REAL)."""
    if (n_latent, width) == STYLEGAN2_WPLUS_LAYOUT.shape:
        return STYLEGAN2_WPLUS_LAYOUT
    key = min(3, n_latent)
    optimised = min(5, n_latent - key)
    return LatentLayout.from_counts(width, key=key, optimised=optimised, real=n_latent - key - optimised)


class StyleGAN2FaceGenerator(Generator):
    """A StyleGAN2 generator behind the engine's interface, latents in W+.

    ``mapping`` gives the key's synthetic latent: w of a Gaussian code, truncated towards
    ``latent_avg`` by ``truncation`` (0.7, as the published fake-face pool), on every row.
    ``synthesize`` is the network's synthesis with its constant noise. ``landmark_template`` (dlib's
    five points in output pixels) must be measured on the checkpoint's samples; it is not guessed.
    Without one (the ``ffhq`` profile), faces are cut with the FFHQ recipe the network was trained on.
    """

    def __init__(
        self,
        network: StyleGAN2Generator,
        *,
        landmark_template: npt.ArrayLike | None = None,
        truncation: float = KEY_TRUNCATION,
        layout: LatentLayout | None = None,
    ) -> None:
        super().__init__()
        self.network = network
        self.layout = layout if layout is not None else wplus_layout(network.n_latent, network.style_dim)
        if self.layout.shape != (network.n_latent, network.style_dim):
            raise ValueError(
                f"layout {self.layout.shape} does not fit W+ ({network.n_latent}, {network.style_dim})"
            )
        template = None if landmark_template is None else np.array(landmark_template, dtype=np.float64)
        if template is not None and template.shape != (5, 2):
            raise ValueError(f"landmark_template must be (5, 2), not {template.shape}")
        self.landmark_template: npt.NDArray[np.float64] | None = template
        self.z_dim = network.style_dim
        self.image_size = network.size
        self.truncation = truncation

    def mapping(self, z: torch.Tensor) -> torch.Tensor:
        return self.network.broadcast(self.network.truncate(self.network.mapping(z), self.truncation))

    def synthesize(self, latent: torch.Tensor) -> torch.Tensor:
        return self.network.synthesis(latent)
