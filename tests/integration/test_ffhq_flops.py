"""benchmarks/ffhq_flops.py: FLOP counts of the ``ffhq`` networks on the meta device.

Tiny configurations (a sixty-fourth / a quarter of the channels, 64 px) for the counting
functions; the generator's forward count is checked against a count written out by hand from
the architecture, so a convolution the counter missed (the FIR blurs are depthwise convs) shows.
One in-process run of the CLI on the real sizes (about two seconds on the meta device).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from script_loader import load_script

from faceanonymixer.models.e4e import Encoder4Editing
from faceanonymixer.models.ir_se50 import IRSE50
from faceanonymixer.models.stylegan2 import StyleGAN2Generator, rosinality_channels

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "ffhq_flops.py"
META = torch.device("meta")
TINY_SIZE, TINY_STYLE, TINY_NARROW = 64, 16, 64


@pytest.fixture(scope="module")
def flops() -> ModuleType:
    return load_script(SCRIPT)


def tiny_generator(*, weight_grads: bool = False) -> StyleGAN2Generator:
    with META:
        generator = StyleGAN2Generator(TINY_SIZE, TINY_STYLE, narrow=TINY_NARROW)
    return generator.requires_grad_(weight_grads)


def tiny_recognizer() -> IRSE50:
    with META:
        recognizer = IRSE50(width=0.25)
    return recognizer.eval().requires_grad_(False)


def tiny_encoder() -> Encoder4Editing:
    with META:
        encoder = Encoder4Editing(width=0.25, image_size=TINY_SIZE)
    return encoder.eval().requires_grad_(False)


def synthesis_macs(size: int, style_dim: int, channels: dict[int, int]) -> int:
    """Multiply-adds of one synthesis, from the layer list (rosinality's skip architecture)."""
    rgb, taps = 3, 4 * 4  # ToRGB width; the 4x4 FIR of every up/down-sampling
    c4 = channels[4]
    # conv1: modulation, 3x3 conv at 4 px, demodulation energies; to_rgb1: modulation, 1x1 conv
    macs = style_dim * c4 + 16 * c4 * c4 * 9 + c4 * c4 + style_dim * c4 + 16 * c4 * rgb
    for log_res in range(3, int(math.log2(size)) + 1):
        res = 2**log_res
        cin, cout = channels[res // 2], channels[res]
        # upsampling StyledConv: transposed 3x3 conv over the input grid, then the blur at res
        macs += style_dim * cin + (res // 2) ** 2 * cin * cout * 9 + cin * cout + res * res * cout * taps
        macs += style_dim * cout + res * res * cout * cout * 9 + cout * cout
        # ToRGB: modulation, 1x1 conv, and the upsampled skip (3 channels through the FIR)
        macs += style_dim * cout + res * res * cout * rgb + res * res * rgb * taps
    return macs


@pytest.fixture(scope="module")
def tiny_models(flops: ModuleType) -> Any:
    return flops.FfhqModels(tiny_generator(), tiny_recognizer(), tiny_encoder())


@pytest.fixture(scope="module")
def tiny(flops: ModuleType, tiny_models: Any) -> Any:
    """One protection's counts for the tiny models, batch 1, the default (published) workload."""
    return flops.count_protection(tiny_models, 1, flops.Workload())


def test_generator_forward_matches_the_hand_count(tiny: Any) -> None:
    channels = rosinality_channels(TINY_SIZE, narrow=TINY_NARROW)
    assert tiny.synthesis.forward == 2 * synthesis_macs(TINY_SIZE, TINY_STYLE, channels)


def test_counts_are_positive(tiny: Any) -> None:
    synthesis, recognizer, encoder = tiny.synthesis, tiny.recognizer, tiny.encoder
    assert min(synthesis.forward, synthesis.backward, recognizer.forward, recognizer.backward) > 0
    assert encoder.forward > 0 and encoder.backward == 0  # e4e runs once, without gradients


def test_backward_to_the_latent_costs_a_forward_with_weight_grads_two(flops: ModuleType, tiny: Any) -> None:
    frozen = tiny.synthesis
    trainable = flops.count_synthesis(tiny_generator(weight_grads=True))
    # frozen: only input gradients, each conv's backward the size of its forward
    assert 0.9 < frozen.backward / frozen.forward < 1.1
    # trainable: input and weight gradients (the FIR blurs' fixed kernels have none)
    assert trainable.forward == frozen.forward
    assert 1.7 < trainable.backward / trainable.forward < 2.1


def test_flops_are_linear_in_the_batch(flops: ModuleType, tiny_models: Any, tiny: Any) -> None:
    two = flops.count_protection(tiny_models, 2, flops.Workload())
    for one_pass, two_pass in (
        (tiny.synthesis, two.synthesis),
        (tiny.recognizer, two.recognizer),
        (tiny.encoder, two.encoder),
    ):
        assert (two_pass.forward, two_pass.backward) == (2 * one_pass.forward, 2 * one_pass.backward)
        # the elementwise census grows less: weight-sized ops do not depend on the batch
        assert one_pass.uncounted_accesses < two_pass.uncounted_accesses <= 2 * one_pass.uncounted_accesses
    assert (two.step, two.once, two.total) == (2 * tiny.step, 2 * tiny.once, 2 * tiny.total)


def test_no_convolution_or_matrix_product_escapes_the_counter(tiny: Any) -> None:
    uncounted = set(tiny.synthesis.uncounted) | set(tiny.recognizer.uncounted) | set(tiny.encoder.uncounted)
    assert {"aten.mul", "aten.leaky_relu", "aten.native_batch_norm"} <= uncounted
    names = {op.removeprefix("aten.").lstrip("_") for op in uncounted}
    products = {"mm", "addmm", "bmm", "baddbmm", "matmul", "linear", "einsum", "dot", "mv"}
    assert not [name for name in names if name.startswith("conv") or name in products]


def test_protection_adds_steps_and_once(flops: ModuleType, tiny: Any) -> None:
    synthesis, recognizer = tiny.synthesis, tiny.recognizer
    assert tiny.workload == flops.Workload(steps=50, views=1, attribute_pass=True, inversion_steps=0)
    assert tiny.step == synthesis.total + 2 * recognizer.total
    assert tiny.once == tiny.encoder.forward + recognizer.forward + synthesis.forward
    assert tiny.total == tiny.once + 50 * tiny.step
    without = dataclasses.replace(tiny, workload=flops.Workload(attribute_pass=False))
    assert tiny.step - without.step == recognizer.total
    refined = dataclasses.replace(tiny, workload=flops.Workload(inversion_steps=20))
    assert refined.total == tiny.total + 20 * (synthesis.total + recognizer.total)


def test_cli_json_on_the_real_sizes(flops: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    flops.main(["--json", "--batch-sizes", "1", "2", "--utilisation", "0.5", "--gpu", "h200"])
    result = json.loads(capsys.readouterr().out)
    assert result["counted_on"] == "meta"
    generator, recognizer, encoder = result["per_face"]
    size, style = flops.GENERATOR_SIZE, 512
    assert generator["forward"] == 2 * synthesis_macs(size, style, rosinality_channels(size, 2))
    assert generator["backward"] == generator["forward"]
    assert recognizer["forward"] > 0 and encoder["backward"] == 0
    one, two = result["batches"]
    assert two["protection_flops"] == 2 * one["protection_flops"]
    assert one["protection_flops"] == result["per_face_protection_flops"]
    assert one["protection_seconds"] == pytest.approx(one["protection_flops"] / (989e12 * 0.5))


def test_table_and_argument_checks(flops: ModuleType, tiny: Any, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        flops.main(["--utilisation", "1.5"])
    capsys.readouterr()
    result = flops.report(
        [tiny], "meta", peak_tflops=989.0, utilisation=0.4, hbm_tbps=3.35, weight_grads=False
    )
    flops.print_table(result)
    table = capsys.readouterr().out
    assert "whole protection: once + 50 steps" in table and "395.6 TFLOP/s" in table


def test_falls_back_to_the_cpu_without_meta_kernels(
    flops: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def build(device: torch.device | str = "meta", *, weight_grads: bool = False) -> Any:
        if str(device) == "meta":
            raise NotImplementedError("no meta kernel for aten.something")
        with torch.device(device):
            generator = StyleGAN2Generator(TINY_SIZE, TINY_STYLE, narrow=TINY_NARROW)
            recognizer = IRSE50(width=0.25)
            encoder = Encoder4Editing(width=0.25, image_size=TINY_SIZE)
        models = (generator.requires_grad_(False), recognizer.eval(), encoder.eval())
        return flops.FfhqModels(*(model.requires_grad_(False) for model in models))

    monkeypatch.setattr(flops, "build_ffhq_models", build)
    counts, device = flops._count_all([1, 3], flops.Workload(), False)
    assert device.startswith("cpu") and "meta device failed" in capsys.readouterr().err
    one, three = counts
    channels = rosinality_channels(TINY_SIZE, narrow=TINY_NARROW)
    assert one.synthesis.forward == 2 * synthesis_macs(TINY_SIZE, TINY_STYLE, channels)
    assert (three.batch, three.total) == (3, 3 * one.total)
