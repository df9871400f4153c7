"""Descriptor throughput on this machine: the PyTorch port of dlib's ResNet vs dlib's C++.

    python benchmarks/recognizer.py [--seconds 5] [--threads N]

Both get the same 150x150 chips (random pixels: the cost does not depend on content);
batch 1 calls one chip at a time, batch 16 passes 16 chips in one call (dlib's list overload).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import dlib
import numpy as np
import torch

from faceanonymixer.faces.embedding import chips_to_tensor
from faceanonymixer.models.dlib_face_resnet import default_weights_path
from faceanonymixer.models.recognizers import load_recognizer


def images_per_second(run_batch: Callable[[], object], batch: int, seconds: float) -> float:
    run_batch()  # warm-up
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        run_batch()
        done += batch
    return done / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="time per measurement")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    chips = list(np.random.default_rng(0).integers(0, 256, (16, 150, 150, 3), dtype=np.uint8))
    ours = load_recognizer("dlib", device="cpu")
    theirs = dlib.face_recognition_model_v1(str(default_weights_path()))

    print(f"CPU, torch {torch.__version__} ({args.threads} threads), dlib {dlib.__version__}")
    print(f"{'batch':>5}  {'PyTorch port':>14}  {'dlib C++':>14}")
    for batch in (1, 16):
        tensor = chips_to_tensor(chips[:batch])
        with torch.inference_mode():
            torch_rate = images_per_second(lambda t=tensor: ours(t), batch, args.seconds)
        # dlib takes one chip, or a list of chips for a batch
        dlib_input = chips[0] if batch == 1 else chips[:batch]
        dlib_rate = images_per_second(
            lambda x=dlib_input: theirs.compute_face_descriptor(x), batch, args.seconds
        )
        print(f"{batch:>5}  {torch_rate:>10.1f} im/s  {dlib_rate:>10.1f} im/s")


if __name__ == "__main__":
    main()
