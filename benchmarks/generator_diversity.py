"""How far apart a generator's faces are to independent recognizers: the ceiling on separation.

    python benchmarks/generator_diversity.py SET_DIR --max-identities 10 --max-images 3 \\
        --judges dlib,facenet [--profile embedded] [--state CHECKPOINT] [--seed 0] [--out report.json]
    python benchmarks/generator_diversity.py ../shared/faces/utk_dev --per-cell 20 --min-images 1

Protected faces of different people can only be as far apart, to a recognizer the engine never
optimises through, as the generator's faces are. This measures that on the same photos and
judges as ``judge_protection.py`` (the same selection options), without any key or
optimisation. Per photo, four images, each the face pasted back into the photo as the engine
pastes a protected one:

``unprotected``     the photo itself;
``crop``            the photo's own aligned crop at the generator's resolution (what resolution
                    alone costs);
``reconstruction``  G(E(crop)): the profile's encoder and generator, no refinement (how well real
                    people stay apart once they pass through the generator);
``sample``          G(z) for a Gaussian z drawn per photo from ``--seed`` (how alike the
                    generator's own faces are: random pairs of faces should rarely match).

Per judge and variant: impostor non-match (pairs of photos of different people), genuine match
(pairs of one person's photos) and own-photo match (each image against the photo it was made
from: does the generator render *this* person, or only someone of their group?), with their mean
distances and the share of faces found, and the
impostor non-match within each labelled group (``--per-cell`` on ``utk_dev``: the evaluation's
race x gender cells, the same people as ``faceanonymixer eval --per-cell``); FaceNet's
threshold is taken at ``--fmr`` of the unprotected impostor pairs, as in ``judge_protection.py``
(:mod:`faceanonymixer.evaluation.operating`).
``--state`` measures a ``models train-generator`` checkpoint instead of the profile's weights (its
generator and encoder), e.g. to follow a training run.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from judge_protection import add_selection_arguments, selection_config
from PIL import Image

from faceanonymixer.engine.protection import FEATHER, PreparedFace, ProtectionEngine
from faceanonymixer.evaluation.harness import list_photos
from faceanonymixer.evaluation.judges import load_judges
from faceanonymixer.evaluation.metrics import rate_entry
from faceanonymixer.evaluation.operating import operating_threshold, verification_rates
from faceanonymixer.evaluation.pairs import (
    faces_found,
    pair_distances_between,
    same_identity_pairs,
    stack_embeddings,
)
from faceanonymixer.faces.alignment import paste_back
from faceanonymixer.faces.imageio import RGBImage
from faceanonymixer.models.dcgan import DCGANGenerator
from faceanonymixer.utils.errors import FaceAnonyMixerError
from faceanonymixer.utils.files import write_atomic

VARIANTS = ("unprotected", "crop", "reconstruction", "sample")


def load_training_state(engine: ProtectionEngine, path: Path) -> int:
    """Put a ``models train-generator`` checkpoint's generator and encoder into ``engine``; its step."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    generator, encoder = engine.generator, engine.inverter.encoder
    if not isinstance(generator, DCGANGenerator) or not isinstance(encoder, torch.nn.Module):
        raise SystemExit(
            f"--state holds a DCGAN and its encoder; profile {engine.profile.profile_id!r} has neither"
        )
    generator.network.load_state_dict(payload["generator"])
    encoder.load_state_dict(payload["encoder"])
    return int(payload["step"])


def pasted(
    engine: ProtectionEngine, faces: Sequence[PreparedFace], generated: torch.Tensor
) -> list[RGBImage]:
    """Generated faces (N, 3, size, size) in [-1, 1] upscaled and pasted back as the engine does."""
    size = engine.profile.output_size or engine.generator.image_size
    pixels = ((generated + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [
        paste_back(
            face.photo,
            face.crop,
            np.asarray(Image.fromarray(native).resize((size, size), Image.Resampling.BICUBIC)),
            feather=FEATHER,
        )
        for face, native in zip(faces, pixels, strict=True)
    ]


def variant_images(
    engine: ProtectionEngine, faces: Sequence[PreparedFace], seed: int
) -> dict[str, list[RGBImage]]:
    crops = torch.stack([torch.from_numpy(face.crop.image).permute(2, 0, 1) for face in faces]).float()
    crops = crops / 127.5 - 1.0
    codes = torch.randn(len(faces), engine.generator.z_dim, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        reconstructions = engine.generator.synthesize(engine.passes.invert(crops))
        samples = engine.generator.synthesize(engine.generator.mapping(codes))
    return {
        "unprotected": [face.photo for face in faces],
        "crop": pasted(engine, faces, crops),
        "reconstruction": pasted(engine, faces, reconstructions),
        "sample": pasted(engine, faces, samples),
    }


def variant_measures(
    labels: Sequence[str], embeddings: np.ndarray, photos: np.ndarray, threshold: float | None
) -> dict[str, Any]:
    """``embeddings`` of one variant's images; ``photos``: those of the photos they were made from."""
    own, skipped = pair_distances_between(embeddings, photos, *same_identity_pairs(labels, diagonal="only"))
    return {
        "found": faces_found(embeddings)["rate"],
        **verification_rates(labels, embeddings, threshold),
        "own_photo_match": rate_entry(own, threshold, kind="match", skipped=skipped),
    }


def cell_rates(
    labels: Sequence[str],
    cells: Sequence[str | None],
    embeddings: dict[str, np.ndarray],
    threshold: float | None,
) -> dict[str, dict[str, float | None]]:
    """Per labelled group: each variant's impostor non-match among the group's photos."""
    rates: dict[str, dict[str, float | None]] = {}
    for cell in sorted({cell for cell in cells if cell is not None}):
        rows = [index for index, of in enumerate(cells) if of == cell]
        mine = [labels[index] for index in rows]
        rates[cell] = {
            name: verification_rates(mine, embeddings[name][rows], threshold)["impostor_nonmatch"]["rate"]
            for name in VARIANTS
        }
    return rates


def _rate(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:.3f}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_selection_arguments(parser, max_identities=10, max_images=3)
    parser.add_argument("--judges", default="dlib,facenet")
    parser.add_argument("--fmr", type=float, default=1e-2)
    parser.add_argument("--profile", default="embedded")
    parser.add_argument("--state", type=Path, help="a models train-generator checkpoint to measure instead")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    chosen = list_photos(selection_config(args))
    engine = ProtectionEngine(args.profile)
    step = load_training_state(engine, args.state) if args.state else None
    labels, cells, faces = [], [], []
    for photo in chosen:
        try:
            faces.append(engine.prepare(photo.path))
        except FaceAnonyMixerError as error:  # a photo without a face is reported and skipped
            print(f"skipped {photo.path}: {error}", file=sys.stderr)
            continue
        labels.append(photo.label)
        cells.append(photo.labels.cell if photo.labels else None)
    images = variant_images(engine, faces, args.seed)
    report: dict[str, Any] = {
        "profile": args.profile,
        "state": str(args.state) if args.state else None,
        "training_step": step,
        "photos": len(faces),
        "identities": len(set(labels)),
        "judges": {},
    }
    for judge in load_judges(args.judges.split(",")):
        judge_name = judge.name
        embeddings = {
            name: stack_embeddings([judge.embed(image) for image in images[name]]) for name in VARIANTS
        }
        chosen_threshold = operating_threshold(judge_name, labels, embeddings["unprotected"], fmr=args.fmr)
        threshold = chosen_threshold.threshold
        report["judges"][judge_name] = {
            "threshold": threshold,
            **{
                name: variant_measures(labels, embeddings[name], embeddings["unprotected"], threshold)
                for name in VARIANTS
            },
            "cells": cell_rates(labels, cells, embeddings, threshold),
        }
        print(
            f"{judge_name} (threshold {threshold:.4f}): impostor non-match / genuine match / "
            "own-photo match / found"
        )
        for name in VARIANTS:
            measures = report["judges"][judge_name][name]
            own = measures["own_photo_match"]
            print(
                f"  {name:15s} {measures['impostor_nonmatch']['rate']:.3f} "
                f"(mean {measures['impostor_nonmatch']['mean_distance']:.3f})  "
                f"{_rate(measures['genuine_match']['rate'])}  "
                f"{_rate(own['rate'])} (mean {own['mean_distance']:.3f})  {measures['found']:.2f}"
            )
        for cell, rates in report["judges"][judge_name]["cells"].items():
            print(f"  {cell:22s} " + "  ".join(f"{name} {_rate(rates[name])}" for name in VARIANTS))
    if args.out:
        write_atomic(args.out, (json.dumps(report, indent=2) + "\n").encode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
