"""StyleGAN2's custom operations written with standard PyTorch ops (no CUDA/C++ extensions).

* :func:`upfirdn2d`: upsample by zero insertion, pad (or crop), FIR-filter, downsample; the
  semantics of the official ``upfirdn_2d`` (a true convolution: the kernel is flipped).
* :func:`fused_leaky_relu`: bias, leaky ReLU, gain, as the official ``fused_bias_act`` ("lrelu").
* :func:`modulated_conv2d`: the modulated (and demodulated) convolution in its non-grouped form:
  the style scales the *input* activations and the demodulation coefficients scale the *outputs*,
  so one ordinary convolution with the shared weight serves the whole batch. The same maths as
  the per-sample grouped convolution of the reference implementations, but it batches, exports
  to ONNX and never builds a (batch, out, in, k, k) weight.

Everything is differentiable, works on any device and dtype, and never reads a tensor's value on
the host.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["blur", "fused_leaky_relu", "make_kernel", "modulated_conv2d", "upfirdn2d"]

#: (pad_before, pad_after) on both axes, or (x_before, x_after, y_before, y_after)
Padding = tuple[int, int] | tuple[int, int, int, int]


def make_kernel(taps: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """A normalised 2-D FIR kernel: the outer product of 1-D ``taps`` (or a 2-D kernel), sum 1."""
    kernel = torch.as_tensor(taps, dtype=torch.float32)
    if kernel.ndim == 1:
        kernel = kernel[None, :] * kernel[:, None]
    return kernel / kernel.sum()


def upfirdn2d(
    x: torch.Tensor, kernel: torch.Tensor, up: int = 1, down: int = 1, pad: Padding = (0, 0)
) -> torch.Tensor:
    """Upsample ``x`` (N, C, H, W) by ``up``, pad, convolve each channel with ``kernel``, downsample.

    Output side: ``(H * up + pad_before + pad_after - kernel_side) // down + 1``. Negative padding
    crops. The kernel (kh, kw) is applied as a convolution (flipped), like the official op.
    """
    if len(pad) == 2:
        x0, x1, y0, y1 = pad[0], pad[1], pad[0], pad[1]
    else:
        x0, x1, y0, y1 = pad
    batch, channels, height, width = x.shape
    if up > 1:
        x = x.reshape(batch, channels, height, 1, width, 1)
        x = F.pad(x, (0, up - 1, 0, 0, 0, up - 1))
        x = x.reshape(batch, channels, height * up, width * up)
    x = F.pad(x, (max(x0, 0), max(x1, 0), max(y0, 0), max(y1, 0)))
    if min(x0, x1, y0, y1) < 0:
        x = x[
            :,
            :,
            max(-y0, 0) : x.shape[2] - max(-y1, 0),
            max(-x0, 0) : x.shape[3] - max(-x1, 0),
        ]
    kernel_h, kernel_w = kernel.shape
    weight = torch.flip(kernel, (0, 1)).to(dtype=x.dtype).reshape(1, 1, kernel_h, kernel_w)
    out = F.conv2d(x.reshape(batch * channels, 1, x.shape[2], x.shape[3]), weight, stride=down)
    return out.reshape(batch, channels, out.shape[2], out.shape[3])


def blur(x: torch.Tensor, kernel: torch.Tensor, pad: Padding) -> torch.Tensor:
    """FIR-filter each channel of ``x`` with ``kernel`` after padding (``upfirdn2d`` with no resampling)."""
    return upfirdn2d(x, kernel, pad=pad)


def fused_leaky_relu(
    x: torch.Tensor,
    bias: torch.Tensor | None = None,
    negative_slope: float = 0.2,
    scale: float = math.sqrt(2.0),
) -> torch.Tensor:
    """``leaky_relu(x + bias, negative_slope) * scale``, the bias along dimension 1."""
    if bias is not None:
        x = x + bias.reshape(1, bias.shape[0], *([1] * (x.ndim - 2)))
    return F.leaky_relu(x, negative_slope=negative_slope) * scale


def modulated_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    style: torch.Tensor,
    *,
    demodulate: bool = True,
    upsample: bool = False,
    eps: float = 1e-8,
) -> torch.Tensor:
    """StyleGAN2's modulated convolution, non-grouped.

    ``x`` (N, in, H, W), ``weight`` (out, in, k, k) with its equalised-lr scale already applied,
    ``style`` (N, in). Equals, per sample n, ``conv(x[n], weight * style[n] * d[n])`` with
    ``d[n, o] = rsqrt(sum_{i,kh,kw} (weight[o] * style[n])^2 + eps)`` when ``demodulate``.
    Without ``upsample`` the convolution is stride 1 with ``k // 2`` zero padding; with it, a
    stride-2 transposed convolution without padding (output ``2H + k - 2``), to be followed by
    the blur filter as in StyleGAN2.
    """
    batch, in_channels = style.shape
    out = x * style.reshape(batch, in_channels, 1, 1)
    if upsample:
        out = F.conv_transpose2d(out, weight.transpose(0, 1), stride=2)
    else:
        out = F.conv2d(out, weight, padding=weight.shape[-1] // 2)
    if demodulate:
        # sum_{i,kh,kw} (w[o,i,kh,kw] s[n,i])^2 = (s^2 @ sum_{kh,kw} w^2 ^T)[n, o]
        energy = style.square() @ weight.square().sum(dim=(2, 3)).transpose(0, 1)
        out = out * torch.rsqrt(energy + eps).reshape(batch, -1, 1, 1)
    return out
