"""FLOPs of the real-size ``ffhq`` profile per optimisation step, and the time a protection takes.

    .venv/bin/python benchmarks/ffhq_flops.py [--batch-sizes 1 8] [--utilisation 0.4] [--json]

Counted from the architectures alone, no weights: the models are built on PyTorch's ``meta``
device (shapes only, no memory, no arithmetic) and ``torch.utils.flop_counter.FlopCounterMode``
counts every convolution (``aten.convolution``, transposed ones included), matrix product
(``aten.mm``/``addmm``: the linear layers) and their backward ops, at 2 FLOPs per multiply-add.

* StyleGAN2 config F synthesis (rosinality layout: 1024 px, 512-d W+ of 18 rows, channel
  multiplier 2) from the W+ latent; the mapping network is not in the loop (latents are in W).
  Its FIR up/down-sampling (``upfirdn2d``) is written as a depthwise ``conv2d`` and is counted.
* ArcFace IR-SE50 at 112 px on the generator output brought there by the published
  preprocessing (resize 1024 -> 256, crop [35:223, 32:220], average-pool to 112).
* e4e (Encoder4Editing, IR-SE50 trunk + feature pyramid) at 256 px: forward only, once per face.

One optimisation step per face (the published FaceAnonyMixer loop): synthesis forward, the
recognizer forward for the identity and anonymity losses (``--views`` passes; the published
loop has one, this repository's engine ``views`` of them), the attribute loss, then backward
to the latent. The published attribute loss compares FaRL ViT features; the ``ffhq`` profile
uses a perceptual network instead, which ``--attribute ir-se50`` (the default) stands in for
with a second IR-SE50 pass; ``--attribute none`` leaves it out. Once per face: e4e forward, the
original face's IR-SE50 embedding, and the final decode (synthesis forward).

Backward is backward *to the latent*: the networks are frozen (the loaders return them with
``requires_grad_(False)``), so no weight gradients are computed and every convolution's
backward costs what its forward does (backward == forward, not the 2x of training);
``--weight-grads`` counts a loop that leaves the weights trainable.

Not counted (FlopCounterMode has no formula for them; the table lists the largest of them in
elements touched, about one FLOP each): elementwise ops (bias, leaky ReLU, PReLU, sigmoid, the
style scaling and demodulation products, noise injection, skip additions), batch norm, pooling,
bilinear resizing, the L2 norm and the losses. They are memory-bound, not tensor-core work: the
last line gives their traffic per step if run unfused (eager), in bf16, at the datasheet HBM
bandwidth (H100 SXM 3.35 TB/s, H200 4.8 TB/s; ``--hbm-tbps``); that time is not in the table's.
If an op has no meta kernel the counts fall back to batch 1 on the CPU with random weights
(the output says so), scaled to the other batch sizes.

The time is FLOPs / (``--peak-tflops`` x ``--utilisation``). 989 TFLOP/s is NVIDIA's datasheet
dense BF16 tensor-core peak of the H100 SXM (1,979 is quoted with 2:4 sparsity), the same figure
as the H200's (``--gpu h100`` or ``--gpu h200``). The utilisation, 0.4 by default, is an
assumption, not a measurement; small batches of the 1024-px layers (32-64 channels) are
memory-bound and may reach much less.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, flop_registry

from faceanonymixer.models.e4e import E4E_INPUT, Encoder4Editing
from faceanonymixer.models.ir_se50 import IRSE50, arcface_preprocess
from faceanonymixer.models.stylegan2 import StyleGAN2Generator

GENERATOR_SIZE = 1024
PUBLISHED_STEPS = 50
#: NVIDIA datasheets, BF16 tensor core, dense (half the "with sparsity" figure): H100 SXM and H200
GPU_PEAK_TFLOPS = {"h100": 989.0, "h200": 989.0}
#: the same datasheets' HBM bandwidth, TB/s (H100 SXM HBM3, H200 HBM3e)
GPU_HBM_TBPS = {"h100": 3.35, "h200": 4.8}
BF16_BYTES = 2
DEFAULT_UTILISATION = 0.4
GIGA = 1e9

#: ops that only move, select or allocate data: no arithmetic, left out of the uncounted census
_DATA_MOVEMENT = frozenset(
    {
        "aten.empty",
        "aten.empty_like",
        "aten.zeros",
        "aten.zeros_like",
        "aten.ones_like",
        "aten.full",
        "aten.fill_",
        "aten.copy_",
        "aten.clone",
        "aten._to_copy",
        "aten.constant_pad_nd",
        "aten.flip",
        "aten.cat",
        "aten.stack",
        "aten.select_backward",
        "aten.slice_backward",
        "aten.masked_fill_",
        "aten.eq",
        # the IR-SE shortcut's MaxPool2d(1, stride) is a strided copy
        "aten.max_pool2d_with_indices",
        "aten.max_pool2d_with_indices_backward",
    }
)


class _UncountedCensus(TorchDispatchMode):
    """Arithmetic ops without a FLOP formula: elements (largest tensor) and element reads + writes."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: Counter[str] = Counter()
        self.accesses = 0

    def __torch_dispatch__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        out = func(*args, **(kwargs or {}))
        name = str(func.overloadpacket)
        if func.overloadpacket not in flop_registry and not func.is_view and name not in _DATA_MOVEMENT:
            results = out if isinstance(out, tuple | list) else (out,)
            sizes = [t.numel() for t in (*args, *results) if isinstance(t, torch.Tensor)]
            self.elements[name] += max(sizes, default=0)
            self.accesses += sum(sizes)
        return out


@dataclass(frozen=True)
class PassCount:
    """FLOPs of one network's forward and backward (to its input) for one batch."""

    forward: int
    backward: int
    #: op -> elements of arithmetic without a FLOP formula (forward and backward), ~1 FLOP each
    uncounted: dict[str, int]
    #: element reads + writes of those ops, run unfused (eager): their memory traffic
    uncounted_accesses: int

    @property
    def total(self) -> int:
        return self.forward + self.backward

    def scaled(self, factor: int) -> PassCount:
        """The same pass for ``factor`` times the batch: exact for the FLOPs, which are linear in it.

        The uncounted census only approximately: weight-sized elementwise ops do not grow with it.
        """
        return PassCount(
            self.forward * factor,
            self.backward * factor,
            {op: n * factor for op, n in self.uncounted.items()},
            self.uncounted_accesses * factor,
        )


def _count(run: Callable[[], torch.Tensor], *, backward: bool) -> PassCount:
    census = _UncountedCensus()
    # the census is entered last, so it sees each op before the counter (modes nest as a stack)
    with FlopCounterMode(display=False) as forward_counter, census:
        out = run()
    backward_flops = 0
    if backward:
        gradient = torch.ones_like(out)
        with FlopCounterMode(display=False) as backward_counter, census:
            out.backward(gradient)
        backward_flops = backward_counter.get_total_flops()
    return PassCount(
        forward_counter.get_total_flops(), backward_flops, dict(census.elements), census.accesses
    )


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def count_synthesis(generator: StyleGAN2Generator, batch: int = 1) -> PassCount:
    """W+ (batch, n_latent, style_dim) -> image, forward and backward to the latent."""
    w_plus = torch.randn(
        batch, generator.n_latent, generator.style_dim, device=_device_of(generator), requires_grad=True
    )
    return _count(lambda: generator.synthesis(w_plus), backward=True)


def count_recognizer(recognizer: IRSE50, batch: int = 1, image_size: int = GENERATOR_SIZE) -> PassCount:
    """Generator-size image -> published preprocessing -> embedding, forward and backward to the image."""
    images = torch.randn(batch, 3, image_size, image_size, device=_device_of(recognizer), requires_grad=True)
    return _count(lambda: recognizer(arcface_preprocess(images)), backward=True)


def count_encoder(encoder: Encoder4Editing, batch: int = 1) -> PassCount:
    """Aligned face (batch, 3, S, S) -> W+ codes, forward only (it runs once, without gradients)."""
    size = encoder.image_size
    images = torch.randn(batch, 3, size, size, device=_device_of(encoder))
    with torch.no_grad():
        return _count(lambda: encoder(images), backward=False)


@dataclass(frozen=True)
class FfhqModels:
    generator: StyleGAN2Generator
    recognizer: IRSE50
    encoder: Encoder4Editing


def build_ffhq_models(device: torch.device | str = "meta", *, weight_grads: bool = False) -> FfhqModels:
    """The ``ffhq`` profile's networks at their real sizes, eval mode, on ``device`` (random weights)."""
    with torch.device(device):
        generator = StyleGAN2Generator(GENERATOR_SIZE, channel_multiplier=2)
        recognizer = IRSE50(50, mode="ir_se")
        encoder = Encoder4Editing(50, "ir_se", n_styles=generator.n_latent, image_size=E4E_INPUT)
    for model in (generator, recognizer, encoder):
        model.eval().requires_grad_(weight_grads)
    return FfhqModels(generator, recognizer, encoder)


@dataclass(frozen=True)
class Workload:
    """What one protection runs, per face."""

    steps: int = PUBLISHED_STEPS
    #: recognizer passes for the identity and anonymity losses per step
    views: int = 1
    #: an extra IR-SE50 pass per step standing in for the attribute network
    attribute_pass: bool = True
    #: this repository's engine refines the encoder's inversion (synthesis + one recognizer pass)
    inversion_steps: int = 0

    @property
    def recognizer_passes(self) -> int:
        return self.views + int(self.attribute_pass)


@dataclass(frozen=True)
class ProtectionCount:
    batch: int
    synthesis: PassCount
    recognizer: PassCount
    encoder: PassCount
    workload: Workload

    @property
    def step(self) -> int:
        """One optimisation step for the whole batch: synthesis and recognizer passes, fwd + bwd."""
        return self.synthesis.total + self.workload.recognizer_passes * self.recognizer.total

    @property
    def inversion_step(self) -> int:
        return self.synthesis.total + self.recognizer.total

    @property
    def once(self) -> int:
        """e4e, the original face's embedding and the final decode, forward only."""
        return self.encoder.forward + self.recognizer.forward + self.synthesis.forward

    @property
    def total(self) -> int:
        work = self.workload
        return self.once + work.steps * self.step + work.inversion_steps * self.inversion_step


def count_protection(models: FfhqModels, batch: int, workload: Workload) -> ProtectionCount:
    image_size = models.generator.size
    return ProtectionCount(
        batch=batch,
        synthesis=count_synthesis(models.generator, batch),
        recognizer=count_recognizer(models.recognizer, batch, image_size),
        encoder=count_encoder(models.encoder, batch),
        workload=workload,
    )


def seconds(flops: float, peak_tflops: float, utilisation: float) -> float:
    return flops / (peak_tflops * 1e12 * utilisation)


def _count_all(
    batch_sizes: Sequence[int], workload: Workload, weight_grads: bool
) -> tuple[list[ProtectionCount], str]:
    try:
        models = build_ffhq_models("meta", weight_grads=weight_grads)
        return [count_protection(models, batch, workload) for batch in batch_sizes], "meta"
    except (NotImplementedError, RuntimeError) as error:
        # an op without a meta kernel: count batch 1 for real on the CPU and scale (FLOPs are linear)
        print(f"meta device failed ({error}); counting batch 1 on the CPU instead", file=sys.stderr)
        models = build_ffhq_models("cpu", weight_grads=weight_grads)
        one = count_protection(models, 1, workload)
        scaled = [
            ProtectionCount(
                batch,
                one.synthesis.scaled(batch),
                one.recognizer.scaled(batch),
                one.encoder.scaled(batch),
                workload,
            )
            for batch in batch_sizes
        ]
        return scaled, "cpu (batch 1, random weights, scaled linearly)"


def report(
    counts: Sequence[ProtectionCount],
    device: str,
    *,
    peak_tflops: float,
    utilisation: float,
    hbm_tbps: float,
    weight_grads: bool,
) -> dict[str, Any]:
    """Everything the table prints, JSON-ready (FLOPs as integers, times in seconds)."""
    first = counts[0]
    work = first.workload
    per_face = [
        {
            "model": "stylegan2_synthesis_1024",
            "forward": first.synthesis.forward // first.batch,
            "backward": first.synthesis.backward // first.batch,
        },
        {
            "model": "ir_se50_112",
            "forward": first.recognizer.forward // first.batch,
            "backward": first.recognizer.backward // first.batch,
        },
        {"model": "e4e_256", "forward": first.encoder.forward // first.batch, "backward": 0},
    ]
    uncounted: Counter[str] = Counter()
    for part in (first.synthesis, first.recognizer, first.encoder):
        uncounted.update(part.uncounted)
    batches = []
    for count in counts:
        step_accesses = (
            count.synthesis.uncounted_accesses + work.recognizer_passes * count.recognizer.uncounted_accesses
        )
        protection = seconds(count.total, peak_tflops, utilisation)
        batches.append(
            {
                "batch": count.batch,
                "step_flops": count.step,
                "once_flops": count.once,
                "protection_flops": count.total,
                "step_seconds": seconds(count.step, peak_tflops, utilisation),
                "protection_seconds": protection,
                "protection_seconds_per_face": protection / count.batch,
                # unfused elementwise traffic of one step in bf16, at full HBM bandwidth
                "step_elementwise_bytes": BF16_BYTES * step_accesses,
                "step_elementwise_seconds": BF16_BYTES * step_accesses / (hbm_tbps * 1e12),
            }
        )
    return {
        "counted_on": device,
        "flop_convention": "2 FLOPs per multiply-add; convolutions and matrix products only",
        "weight_grads": weight_grads,
        "workload": asdict(work) | {"recognizer_passes_per_step": work.recognizer_passes},
        "peak_tflops": peak_tflops,
        "utilisation": utilisation,
        "hbm_tbps": hbm_tbps,
        "per_face": per_face,
        "per_face_step_flops": first.step // first.batch,
        "per_face_once_flops": first.once // first.batch,
        "per_face_protection_flops": first.total // first.batch,
        "uncounted_elements_per_face": {op: n // first.batch for op, n in uncounted.most_common()},
        "batches": batches,
    }


_LABELS = {
    "stylegan2_synthesis_1024": "StyleGAN2 synthesis, W+ 18x512 -> 1024 px",
    "ir_se50_112": "IR-SE50 at 112 px (1024 -> 256 -> crop -> pool)",
    "e4e_256": "e4e encoder at 256 px (once, forward only)",
}


def print_table(result: dict[str, Any]) -> None:
    work = result["workload"]
    backward = "weights and latent" if result["weight_grads"] else "to the latent only, weights frozen"
    print(f"ffhq profile, counted on the {result['counted_on']} device by FlopCounterMode")
    print(f"({result['flop_convention']}; backward {backward})")
    print()
    print(f"{'per face':<56}{'fwd GFLOP':>10}{'bwd GFLOP':>11}{'fwd+bwd':>10}")
    for row in result["per_face"]:
        forward, backward_flops = row["forward"] / GIGA, row["backward"] / GIGA
        total = forward + backward_flops
        print(f"{_LABELS[row['model']]:<56}{forward:>10.2f}{backward_flops:>11.2f}{total:>10.2f}")
    views = f"{work['views']} identity view" + ("s" if work["views"] > 1 else "")
    attribute = " + attribute stand-in" if work["attribute_pass"] else ", attribute excluded"
    passes = f"{work['recognizer_passes_per_step']} x IR-SE50 ({views}{attribute})"
    steps = f"{work['steps']} steps" + (
        f" + {work['inversion_steps']} inversion steps" if work["inversion_steps"] else ""
    )
    for label, flops in (
        (f"one step: synthesis + {passes}", result["per_face_step_flops"]),
        ("once: e4e + original embedding + final decode", result["per_face_once_flops"]),
        (f"whole protection: once + {steps}", result["per_face_protection_flops"]),
    ):
        print(f"{label:<77}{flops / GIGA:>10.2f}")
    print()
    effective = result["peak_tflops"] * result["utilisation"]
    print(
        f"time at {result['peak_tflops']:g} TFLOP/s dense BF16 peak x {result['utilisation']:g} "
        f"utilisation (assumed) = {effective:g} TFLOP/s"
    )
    print(f"{'batch':>5}{'GFLOP/step':>12}{'ms/step':>10}{'protection s':>14}{'s/face':>9}")
    for row in result["batches"]:
        print(
            f"{row['batch']:>5}{row['step_flops'] / GIGA:>12.1f}{row['step_seconds'] * 1e3:>10.2f}"
            f"{row['protection_seconds']:>14.3f}{row['protection_seconds_per_face']:>9.3f}"
        )
    print()
    uncounted = result["uncounted_elements_per_face"]
    counted = sum(row["forward"] + row["backward"] for row in result["per_face"])
    total = sum(uncounted.values())
    print(
        f"not counted, per face: {len(uncounted)} arithmetic ops without a FLOP formula, {total / GIGA:.2f} G"
    )
    print(f"elements (~1 FLOP each, {total / counted:.1%} of the counted FLOPs); the largest:")
    print(
        "  "
        + ", ".join(f"{op.removeprefix('aten.')} {n / GIGA:.2f} G" for op, n in list(uncounted.items())[:5])
    )
    row = result["batches"][0]
    print(
        f"unfused (eager) they move {row['step_elementwise_bytes'] / row['batch'] / GIGA:.1f} GB per step "
        f"per face in bf16: {row['step_elementwise_seconds'] * 1e3 / row['batch']:.2f} ms at "
        f"{result['hbm_tbps']:g} TB/s HBM, not in the times above"
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8], help="faces per batch")
    parser.add_argument("--steps", type=int, default=PUBLISHED_STEPS, help="optimisation steps")
    parser.add_argument("--views", type=int, default=1, help="recognizer passes for identity/anonymity")
    parser.add_argument(
        "--attribute",
        choices=("ir-se50", "none"),
        default="ir-se50",
        help="attribute network per step: a second IR-SE50 pass, or excluded",
    )
    parser.add_argument(
        "--inversion-steps", type=int, default=0, help="refinement steps after e4e (published: 0)"
    )
    parser.add_argument(
        "--weight-grads", action="store_true", help="count weight gradients too (unfrozen networks)"
    )
    parser.add_argument(
        "--gpu", choices=sorted(GPU_PEAK_TFLOPS), default="h100", help="datasheet peak and bandwidth"
    )
    parser.add_argument("--peak-tflops", type=float, help="dense BF16 peak, overrides --gpu's")
    parser.add_argument("--hbm-tbps", type=float, help="memory bandwidth in TB/s, overrides --gpu's")
    parser.add_argument(
        "--utilisation", type=float, default=DEFAULT_UTILISATION, help="assumed fraction of the peak"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = parser.parse_args(argv)
    if min(args.batch_sizes) < 1 or args.views < 1 or args.steps < 0 or args.inversion_steps < 0:
        parser.error("batch sizes and views must be positive, steps not negative")
    if not 0 < args.utilisation <= 1:
        parser.error("--utilisation is a fraction in (0, 1]")
    workload = Workload(args.steps, args.views, args.attribute == "ir-se50", args.inversion_steps)
    counts, device = _count_all(args.batch_sizes, workload, args.weight_grads)
    result = report(
        counts,
        device,
        peak_tflops=args.peak_tflops or GPU_PEAK_TFLOPS[args.gpu],
        utilisation=args.utilisation,
        hbm_tbps=args.hbm_tbps or GPU_HBM_TBPS[args.gpu],
        weight_grads=args.weight_grads,
    )
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)


if __name__ == "__main__":
    main()
