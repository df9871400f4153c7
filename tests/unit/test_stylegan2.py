"""StyleGAN2 in pure PyTorch: the ops against explicit references, rosinality's exact state-dict
layout (config F on the meta device; tiny random checkpoints on disk), the genforce converter
against a reference of genforce's own forward pass, determinism, and the engine's interface."""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from faceanonymixer.models.generator_base import STYLEGAN2_WPLUS_LAYOUT, LatentRole
from faceanonymixer.models.stylegan2 import (
    KEY_TRUNCATION,
    ModulatedConv2d,
    StyleGAN2FaceGenerator,
    StyleGAN2Generator,
    convert_genforce_state_dict,
    infer_config,
    load_stylegan2,
    rosinality_channels,
)
from faceanonymixer.models.stylegan2_ops import fused_leaky_relu, make_kernel, upfirdn2d
from faceanonymixer.utils.errors import ModelFormatError

F64 = torch.float64
TIGHT = {"rtol": 1e-10, "atol": 1e-12}

# tiny but complete: 64 px (10 W+ rows), 8 mapping layers of width 16, 8 feature maps everywhere
TINY_SIZE, TINY_STYLE, TINY_NARROW = 64, 16, 64


# ---- references ----------------------------------------------------------------------------------


def reference_upfirdn2d(
    x: torch.Tensor, kernel: torch.Tensor, up: int, down: int, pad: tuple[int, int, int, int]
) -> torch.Tensor:
    """Zero insertion, explicit zero pad / crop, a true 2-D convolution tap by tap, then slicing."""
    x0, x1, y0, y1 = pad
    n, c, h, w = x.shape
    upsampled = x.new_zeros(n, c, h * up, w * up)
    upsampled[:, :, ::up, ::up] = x
    padded = x.new_zeros(n, c, h * up + max(y0, 0) + max(y1, 0), w * up + max(x0, 0) + max(x1, 0))
    padded[:, :, max(y0, 0) : max(y0, 0) + h * up, max(x0, 0) : max(x0, 0) + w * up] = upsampled
    padded = padded[
        :, :, max(-y0, 0) : padded.shape[2] - max(-y1, 0), max(-x0, 0) : padded.shape[3] - max(-x1, 0)
    ]
    kh, kw = kernel.shape
    out_h, out_w = padded.shape[2] - kh + 1, padded.shape[3] - kw + 1
    out = x.new_zeros(n, c, out_h, out_w)
    for a in range(kh):
        for b in range(kw):
            # convolution: out[i, j] = sum_{a, b} in[i + a, j + b] * k[kh - 1 - a, kw - 1 - b]
            out += padded[:, :, a : a + out_h, b : b + out_w] * kernel[kh - 1 - a, kw - 1 - b]
    return out[:, :, ::down, ::down]


def reference_modulated_conv(module: ModulatedConv2d, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The per-sample grouped convolution: one modulated (and demodulated) weight per sample."""
    batch, in_channels, height, width = x.shape
    style_dim = w.shape[1]
    style = w @ (module.modulation.weight / math.sqrt(style_dim)).T + module.modulation.bias
    weight = module.weight / math.sqrt(in_channels * module.kernel_size**2) * style[:, None, :, None, None]
    if module.demodulate:
        weight = weight / torch.sqrt(weight.square().sum(dim=(2, 3, 4), keepdim=True) + 1e-8)
    k, out_channels = module.kernel_size, module.out_channels
    grouped = x.reshape(1, batch * in_channels, height, width)
    if module.upsample:
        per_sample = weight.transpose(1, 2).reshape(batch * in_channels, out_channels, k, k)
        out = F.conv_transpose2d(grouped, per_sample, stride=2, groups=batch)
        out = out.reshape(batch, out_channels, out.shape[2], out.shape[3])
        return reference_upfirdn2d(out, make_kernel([1, 3, 3, 1]).to(F64) * 4, 1, 1, (1, 1, 1, 1))
    out = F.conv2d(
        grouped, weight.reshape(batch * out_channels, in_channels, k, k), padding=k // 2, groups=batch
    )
    return out.reshape(batch, out_channels, height, width)


def rosinality_g_ema_shapes(
    size: int, style_dim: int, n_mlp: int, channel: dict[int, int]
) -> dict[str, tuple]:
    """Every key of rosinality's Generator.state_dict() with its shape (model.py / convert_weight.py)."""
    shapes: dict[str, tuple] = {}
    for index in range(1, n_mlp + 1):
        shapes[f"style.{index}.weight"] = (style_dim, style_dim)
        shapes[f"style.{index}.bias"] = (style_dim,)
    shapes["input.input"] = (1, channel[4], 4, 4)

    def styled(name: str, cin: int, cout: int, up: bool) -> None:
        shapes[f"{name}.conv.weight"] = (1, cout, cin, 3, 3)
        shapes[f"{name}.conv.modulation.weight"] = (cin, style_dim)
        shapes[f"{name}.conv.modulation.bias"] = (cin,)
        shapes[f"{name}.noise.weight"] = (1,)
        shapes[f"{name}.activate.bias"] = (cout,)
        if up:
            shapes[f"{name}.conv.blur.kernel"] = (4, 4)

    def to_rgb(name: str, cin: int, up: bool) -> None:
        shapes[f"{name}.conv.weight"] = (1, 3, cin, 1, 1)
        shapes[f"{name}.conv.modulation.weight"] = (cin, style_dim)
        shapes[f"{name}.conv.modulation.bias"] = (cin,)
        shapes[f"{name}.bias"] = (1, 3, 1, 1)
        if up:
            shapes[f"{name}.upsample.kernel"] = (4, 4)

    styled("conv1", channel[4], channel[4], False)
    to_rgb("to_rgb1", channel[4], False)
    log_size = int(math.log2(size))
    cin = channel[4]
    for log_res in range(3, log_size + 1):
        cout = channel[2**log_res]
        styled(f"convs.{2 * (log_res - 3)}", cin, cout, True)
        styled(f"convs.{2 * (log_res - 3) + 1}", cout, cout, False)
        to_rgb(f"to_rgbs.{log_res - 3}", cout, True)
        cin = cout
    for layer in range(2 * (log_size - 2) + 1):
        side = 4 * 2 ** ((layer + 1) // 2)
        shapes[f"noises.noise_{layer}"] = (1, 1, side, side)
    return shapes


def randomise(model: StyleGAN2Generator, seed: int) -> StyleGAN2Generator:
    """Non-trivial values everywhere the checkpoint starts at zero (noise strengths, biases)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("noise.weight"):
                parameter.fill_(0.3)
            elif name.endswith("activate.bias") or re.fullmatch(r"to_rgb(1|s\.\d+)\.bias", name):
                parameter.copy_(0.1 * torch.randn(parameter.shape, generator=generator))
    return model


def tiny_model(seed: int = 0) -> StyleGAN2Generator:
    torch.manual_seed(seed)
    model = StyleGAN2Generator(TINY_SIZE, TINY_STYLE, 8, narrow=TINY_NARROW)
    return randomise(model, seed).eval().requires_grad_(False)


def tiny_w_plus(batch: int = 2, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 2 * int(math.log2(TINY_SIZE)) - 2, TINY_STYLE, generator=generator)


# ---- ops ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("up", "down", "pad", "kernel_shape"),
    [
        (1, 1, (1, 1, 1, 1), (4, 4)),  # blur after a transposed conv
        (2, 1, (2, 1, 2, 1), (4, 4)),  # ToRGB upsample
        (1, 2, (1, 1, 1, 1), (4, 4)),  # downsample (discriminator)
        (2, 2, (1, 2, 0, 3), (3, 5)),  # asymmetric pads and kernel
        (3, 1, (-1, 2, 2, -2), (2, 3)),  # negative padding crops
        (1, 3, (0, 0, 0, 0), (1, 1)),
    ],
)
def test_upfirdn2d_matches_explicit_reference(
    up: int, down: int, pad: tuple[int, int, int, int], kernel_shape: tuple[int, int]
) -> None:
    generator = torch.Generator().manual_seed(up * 10 + down)
    x = torch.randn(2, 3, 7, 9, generator=generator, dtype=F64)
    kernel = torch.rand(kernel_shape, generator=generator, dtype=F64)  # not symmetric: the flip matters
    torch.testing.assert_close(
        upfirdn2d(x, kernel, up, down, pad), reference_upfirdn2d(x, kernel, up, down, pad), **TIGHT
    )


def test_upfirdn2d_symmetric_padding_pair_and_gradients() -> None:
    x = torch.randn(1, 1, 3, 3, dtype=F64, requires_grad=True)
    kernel = make_kernel([1, 3, 3, 1]).to(F64) * 4
    torch.testing.assert_close(
        upfirdn2d(x, kernel, up=2, pad=(2, 1)),
        reference_upfirdn2d(x.detach(), kernel, 2, 1, (2, 1, 2, 1)),
        **TIGHT,
    )
    assert torch.autograd.gradcheck(lambda t: upfirdn2d(t, kernel, up=2, down=1, pad=(2, 1)), (x,))


def test_fused_leaky_relu() -> None:
    x = torch.randn(2, 5, 3, 3, dtype=F64)
    bias = torch.randn(5, dtype=F64)
    shifted = x + bias[None, :, None, None]
    expected = torch.where(shifted >= 0, shifted, 0.2 * shifted) * math.sqrt(2)
    torch.testing.assert_close(fused_leaky_relu(x, bias), expected, **TIGHT)
    torch.testing.assert_close(fused_leaky_relu(x[:, :, 0, 0], bias), expected[:, :, 0, 0], **TIGHT)


@pytest.mark.parametrize(
    ("upsample", "demodulate", "kernel_size"),
    [
        (False, True, 3),
        (False, False, 3),
        (True, True, 3),
        (True, False, 3),
        (False, False, 1),
        (False, True, 1),
    ],
)
def test_non_grouped_modulated_conv_matches_grouped_reference(
    upsample: bool, demodulate: bool, kernel_size: int
) -> None:
    torch.manual_seed(kernel_size + 2 * upsample + 4 * demodulate)
    module = ModulatedConv2d(5, 4, kernel_size, 6, demodulate=demodulate, upsample=upsample).to(F64)
    with torch.no_grad():
        module.modulation.bias.add_(0.3 * torch.randn(5, dtype=F64))
    x = torch.randn(3, 5, 6, 6, dtype=F64)
    w = torch.randn(3, 6, dtype=F64)
    out = module(x, w)
    assert out.shape == (3, 4, 12, 12) if upsample else (3, 4, 6, 6)
    torch.testing.assert_close(out, reference_modulated_conv(module, x, w), **TIGHT)


# ---- rosinality's layout -------------------------------------------------------------------------


def test_config_f_1024_has_rosinality_keys_shapes_and_parameter_count() -> None:
    with torch.device("meta"):
        model = StyleGAN2Generator(1024)  # config F: style 512, 8 mapping layers, multiplier 2
    channel = {4: 512, 8: 512, 16: 512, 32: 512, 64: 512, 128: 256, 256: 128, 512: 64, 1024: 32}
    expected = rosinality_g_ema_shapes(1024, 512, 8, channel)
    actual = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    assert actual == expected
    assert len(actual) == 171 and "latent_avg" not in actual
    parameters = sum(p.numel() for p in model.parameters())
    assert parameters == sum(
        math.prod(shape)
        for key, shape in expected.items()
        if not key.endswith("kernel") and "noises" not in key
    )
    assert abs(parameters - 30.0e6) < 0.5e6  # "30.0 M" in the StyleGAN2 paper; 30,370,060 here
    assert (model.n_latent, model.num_layers, model.channel_multiplier) == (18, 17, 2)
    assert model.channels == rosinality_channels(1024) == channel
    face = StyleGAN2FaceGenerator(model, landmark_template=np.zeros((5, 2)))
    assert face.layout == STYLEGAN2_WPLUS_LAYOUT
    assert (face.z_dim, face.image_size) == (512, 1024)


def test_other_resolutions_and_multipliers() -> None:
    with torch.device("meta"):
        config_e_256 = StyleGAN2Generator(256, channel_multiplier=1)
    expected = rosinality_g_ema_shapes(
        256, 512, 8, {4: 512, 8: 512, 16: 512, 32: 512, 64: 256, 128: 128, 256: 64}
    )
    assert {k: tuple(v.shape) for k, v in config_e_256.state_dict().items()} == expected
    assert (config_e_256.n_latent, config_e_256.channel_multiplier) == (14, 1)
    assert infer_config(config_e_256.state_dict()).channels == config_e_256.channels


# ---- tiny rosinality checkpoints -----------------------------------------------------------------


def test_tiny_checkpoint_loads_strictly_and_round_trips_bit_for_bit(tmp_path: Path) -> None:
    model = tiny_model()
    state = model.state_dict()
    tiny_channels = rosinality_channels(TINY_SIZE, narrow=TINY_NARROW)
    assert set(state) == set(rosinality_g_ema_shapes(TINY_SIZE, TINY_STYLE, 8, tiny_channels))
    latent_avg = torch.randn(TINY_STYLE)
    path = tmp_path / "stylegan2-tiny.pt"
    torch.save({"g_ema": state, "latent_avg": latent_avg}, path)

    loaded = load_stylegan2(path)
    assert set(loaded.state_dict()) == set(state)
    assert (loaded.size, loaded.style_dim, loaded.n_mlp, loaded.channels) == (
        TINY_SIZE,
        TINY_STYLE,
        8,
        tiny_channels,
    )
    assert torch.equal(loaded.latent_avg, latent_avg)
    assert not any(p.requires_grad for p in loaded.parameters()) and not loaded.training

    w_plus = tiny_w_plus()
    image = model.synthesis(w_plus)
    assert image.shape == (2, 3, TINY_SIZE, TINY_SIZE)
    assert torch.equal(loaded.synthesis(w_plus), image)
    assert torch.equal(loaded.synthesis(w_plus), loaded.synthesis(w_plus))  # constant noise

    from_memory = load_stylegan2({"g_ema": state, "latent_avg": latent_avg})
    assert torch.equal(from_memory.synthesis(w_plus), image)
    assert not any(from_memory.state_dict()[k].data_ptr() == v.data_ptr() for k, v in state.items())

    again = tmp_path / "again.pt"
    torch.save({"g_ema": loaded.state_dict(), "latent_avg": loaded.latent_avg}, again)
    reloaded = load_stylegan2(again)
    assert all(torch.equal(reloaded.state_dict()[k], v) for k, v in state.items())
    assert torch.equal(reloaded.synthesis(w_plus), image)
    z = torch.randn(3, TINY_STYLE)
    assert torch.equal(
        reloaded(z, truncation=0.5), model.synthesis(model.broadcast(loaded.truncate(model.mapping(z), 0.5)))
    )


def test_batching_does_not_change_a_sample() -> None:
    model = tiny_model()
    w_plus = tiny_w_plus(3)
    together = model.synthesis(w_plus)
    for index in range(3):
        torch.testing.assert_close(model.synthesis(w_plus[index : index + 1]), together[index : index + 1])


def test_gradients_reach_every_w_plus_row() -> None:
    model = tiny_model()
    w_plus = tiny_w_plus().requires_grad_(True)
    model.synthesis(w_plus).square().sum().backward()
    assert w_plus.grad is not None
    assert bool((w_plus.grad.abs().sum(dim=(0, 2)) > 0).all())


def test_strict_loading_refuses_missing_and_unexpected_keys() -> None:
    state = dict(tiny_model().state_dict())
    with pytest.raises(ModelFormatError, match="noise_3"):
        load_stylegan2({"g_ema": {k: v for k, v in state.items() if k != "noises.noise_3"}})
    with pytest.raises(ModelFormatError, match="Unexpected"):
        load_stylegan2({"g_ema": {**state, "upsamples.0.kernel": torch.ones(4, 4)}})
    with pytest.raises(ModelFormatError, match="size mismatch"):
        load_stylegan2({"g_ema": {**state, "convs.1.activate.bias": torch.zeros(3)}})
    with pytest.raises(ModelFormatError, match="not a StyleGAN2 checkpoint"):
        load_stylegan2({"state_dict": {}})


def test_training_checkpoint_without_latent_avg(tmp_path: Path) -> None:
    """rosinality's train.py also saves g, d, the optimisers and its argparse.Namespace."""
    model = tiny_model()
    state = model.state_dict()
    path = tmp_path / "010000.pt"
    optimiser = torch.optim.Adam([torch.nn.Parameter(torch.zeros(2))])
    torch.save(
        {
            "g": state,
            "d": {},
            "g_ema": state,
            "g_optim": optimiser.state_dict(),
            "d_optim": {},
            "args": argparse.Namespace(size=TINY_SIZE),
        },
        path,
    )
    loaded = load_stylegan2(path)
    # the mapping network's seeded mean (4096 codes, seed 0), the same on every load
    assert torch.equal(loaded.latent_avg, model.mean_latent())
    assert torch.equal(load_stylegan2(path).latent_avg, loaded.latent_avg)


def test_sha256_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "g.pt"
    torch.save({"g_ema": tiny_model().state_dict()}, path)
    with pytest.raises(ModelFormatError, match="SHA-256"):
        load_stylegan2(path, sha256="0" * 64)


# ---- genforce --------------------------------------------------------------------------------------


def genforce_state(
    size: int, style_dim: int, n_mlp: int, nf: dict[int, int], seed: int
) -> dict[str, torch.Tensor]:
    """A random genforce StyleGAN2Generator state dict ('skip', const input, no label), float64.

    Keys and ranks as genforce's models/stylegan2_generator.py registers them (as in FALCO's copy).
    """
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return scale * torch.randn(shape, generator=generator, dtype=F64)

    state = {}
    for index in range(n_mlp):
        state[f"mapping.dense{index}.weight"] = rand(style_dim, style_dim, scale=100.0)  # randn / lr_mul
        state[f"mapping.dense{index}.bias"] = rand(style_dim)
    state["truncation.w_avg"] = rand(style_dim)
    state["synthesis.early_layer.const"] = rand(1, nf[4], 4, 4)

    def conv(name: str, cin: int, cout: int, res: int, up: bool) -> None:
        state[f"{name}.weight"] = rand(cout, cin, 3, 3)
        state[f"{name}.bias"] = rand(cout, scale=0.1)
        state[f"{name}.style.weight"] = rand(cin, style_dim)
        state[f"{name}.style.bias"] = rand(cin, scale=0.2)
        state[f"{name}.noise"] = rand(1, 1, res, res)
        state[f"{name}.noise_strength"] = rand(scale=0.3).reshape(())
        if up:  # deliberately asymmetric, so that a missing flip shows
            state[f"{name}.filter.kernel"] = torch.rand(1, 1, 4, 4, generator=generator, dtype=F64) / 4

    def output(name: str, cin: int) -> None:
        state[f"{name}.weight"] = rand(3, cin, 1, 1)
        state[f"{name}.bias"] = rand(3, scale=0.1)
        state[f"{name}.style.weight"] = rand(cin, style_dim)
        state[f"{name}.style.bias"] = rand(cin, scale=0.2)

    for log_res in range(2, int(math.log2(size)) + 1):
        res, block = 2**log_res, log_res - 2
        if res > 4:
            conv(f"synthesis.layer{2 * block - 1}", nf[res // 2], nf[res], res, True)
        conv(f"synthesis.layer{2 * block}", nf[res], nf[res], res, False)
        output(f"synthesis.output{block}", nf[res])
    state["synthesis.upsample.kernel"] = torch.rand(1, 1, 4, 4, generator=generator, dtype=F64)
    return state


def genforce_reference(state: dict[str, torch.Tensor], z: torch.Tensor | None, wp: torch.Tensor) -> tuple:
    """genforce's forward written out: mapping of z, and the 'skip' synthesis of wp, per sample."""
    style_dim = state["truncation.w_avg"].shape[0]
    mapped = None
    if z is not None:
        mapped = z / torch.sqrt(z.square().mean(dim=1, keepdim=True) + 1e-8)
        index = 0
        while f"mapping.dense{index}.weight" in state:
            weight = state[f"mapping.dense{index}.weight"] * (0.01 / math.sqrt(style_dim))
            mapped = F.leaky_relu(F.linear(mapped, weight, state[f"mapping.dense{index}.bias"] * 0.01), 0.2)
            mapped = mapped * math.sqrt(2)
            index += 1

    def filtered(x: torch.Tensor, kernel: torch.Tensor, scale: int, pad: tuple[int, int]) -> torch.Tensor:
        channels = x.shape[1]
        if scale > 1:  # genforce's UpsamplingLayer: zero insertion, pad, cross-correlation
            x = F.pad(
                x.reshape(-1, channels, x.shape[2], 1, x.shape[3], 1), (0, scale - 1, 0, 0, 0, scale - 1)
            )
            x = x.reshape(-1, channels, x.shape[2] * scale, x.shape[4] * scale)
        x = F.pad(x.reshape(-1, 1, x.shape[2], x.shape[3]), (pad[0], pad[1], pad[0], pad[1]))
        x = F.conv2d(x, kernel)
        return x.reshape(-1, channels, x.shape[2], x.shape[3])

    def block(name: str, x: torch.Tensor, w: torch.Tensor, up: bool, rgb: bool) -> torch.Tensor:
        weight = state[f"{name}.weight"]
        _, cin, k, _ = weight.shape
        weight = weight / math.sqrt(cin * k * k)
        style = (
            F.linear(w, state[f"{name}.style.weight"] / math.sqrt(style_dim), state[f"{name}.style.bias"])
            + 1.0
        )
        outs = []
        for n in range(x.shape[0]):
            modulated = weight * style[n][None, :, None, None]
            if not rgb:
                modulated = modulated / torch.sqrt(modulated.square().sum(dim=(1, 2, 3), keepdim=True) + 1e-8)
            if up:
                y = F.conv_transpose2d(x[n : n + 1], modulated.flip(2, 3).transpose(0, 1), stride=2)
                y = filtered(y, state[f"{name}.filter.kernel"], 1, (1, 1))
            else:
                y = F.conv2d(x[n : n + 1], modulated, padding=k // 2)
            outs.append(y)
        y = torch.cat(outs)
        if not rgb:
            y = y + state[f"{name}.noise"] * state[f"{name}.noise_strength"]
        y = y + state[f"{name}.bias"].reshape(1, -1, 1, 1)
        return y if rgb else F.leaky_relu(y, 0.2) * math.sqrt(2)

    x = state["synthesis.early_layer.const"].repeat(wp.shape[0], 1, 1, 1)
    image = x
    for layer in range(wp.shape[1] - 1):
        x = block(f"synthesis.layer{layer}", x, wp[:, layer], layer % 2 == 1, False)
        if layer % 2 == 0:
            rgb = block(f"synthesis.output{layer // 2}", x, wp[:, layer + 1], False, True)
            image = (
                rgb if layer == 0 else rgb + filtered(image, state["synthesis.upsample.kernel"], 2, (2, 1))
            )
    return mapped, image


def test_genforce_checkpoint_converts_and_matches_genforce_forward() -> None:
    nf = {4: 8, 8: 8, 16: 6, 32: 4}
    state = genforce_state(32, 12, 3, nf, seed=3)
    decoy = genforce_state(32, 12, 3, nf, seed=4)
    checkpoint = {"generator": decoy, "discriminator": {}, "generator_smooth": state}
    model = load_stylegan2(checkpoint, dtype=F64)  # the published loader prefers generator_smooth
    assert (model.size, model.style_dim, model.n_mlp, model.n_latent) == (32, 12, 3, 8)
    assert model.channels == nf
    assert torch.equal(model.latent_avg, state["truncation.w_avg"])

    generator = torch.Generator().manual_seed(5)
    z = torch.randn(2, 12, generator=generator, dtype=F64)
    wp = torch.randn(2, 8, 12, generator=generator, dtype=F64)
    mapped, image = genforce_reference(state, z, wp)
    torch.testing.assert_close(model.mapping(z), mapped, **TIGHT)
    torch.testing.assert_close(model.synthesis(wp), image, **TIGHT)


def test_genforce_conversion_is_strict() -> None:
    nf = {4: 4, 8: 4}
    state = genforce_state(8, 4, 2, nf, seed=0)
    converted, w_avg = convert_genforce_state_dict(state)
    assert set(converted) == set(rosinality_g_ema_shapes(8, 4, 2, nf))
    assert torch.equal(w_avg, state["truncation.w_avg"])
    with pytest.raises(ModelFormatError, match=r"layer1\.noise_strength"):
        convert_genforce_state_dict(
            {k: v for k, v in state.items() if k != "synthesis.layer1.noise_strength"}
        )
    with pytest.raises(ModelFormatError, match="unexpected keys"):
        convert_genforce_state_dict({**state, "mapping.label_weight": torch.zeros(1, 4)})


# ---- the engine's interface ---------------------------------------------------------------------


def test_face_generator_interface() -> None:
    network = tiny_model()
    network.latent_avg = torch.randn(TINY_STYLE)
    template = np.arange(10, dtype=np.float64).reshape(5, 2)
    face = StyleGAN2FaceGenerator(network, landmark_template=template)
    roles = face.layout.roles
    assert roles == (LatentRole.KEY,) * 3 + (LatentRole.OPTIMISED,) * 5 + (LatentRole.REAL,) * 2
    assert (face.z_dim, face.image_size, face.truncation) == (TINY_STYLE, TINY_SIZE, KEY_TRUNCATION)
    assert np.array_equal(face.landmark_template, template)

    z = torch.randn(2, TINY_STYLE)
    latent = face.mapping(z)
    assert latent.shape == (2, 10, TINY_STYLE)
    w = network.mapping(z)
    expected = network.latent_avg + KEY_TRUNCATION * (w - network.latent_avg)
    torch.testing.assert_close(latent, expected[:, None].expand(-1, 10, -1))
    image = face.synthesize(latent)
    assert image.shape == (2, 3, TINY_SIZE, TINY_SIZE)
    assert torch.equal(image, network.synthesis(latent))
    with pytest.raises(ValueError, match="W\\+"):
        face.synthesize(latent[:, :9])
    with pytest.raises(ValueError, match="landmark_template"):
        StyleGAN2FaceGenerator(network, landmark_template=np.zeros((4, 2)))


@pytest.mark.gpu
def test_cuda_matches_cpu() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    model = tiny_model()
    w_plus = tiny_w_plus(4)
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    on_gpu = model.to("cuda").synthesis(w_plus.to("cuda")).cpu()
    torch.testing.assert_close(on_gpu, tiny_model().synthesis(w_plus), rtol=1e-4, atol=1e-4)
