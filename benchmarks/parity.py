"""How far the PyTorch port of dlib's face descriptor is from dlib's C++, on real faces.

    python benchmarks/parity.py ../shared/faces [--per-set 5]

Aligns the first photo of the first ``--per-set`` identities of each evaluation set, embeds the
same chips with both implementations, and prints the L2 differences and descriptor norms.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import dlib
import numpy as np

from faceanonymixer import FaceAligner, load_recognizer
from faceanonymixer.faces.datasets import list_identity_images
from faceanonymixer.faces.embedding import embed_chips
from faceanonymixer.models.dlib_face_resnet import default_weights_path
from faceanonymixer.utils.errors import FaceAnonyMixerError

SETS = ("lfw", "deepface", "orl", "yale", "fr_examples")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("faces_root", type=Path)
    parser.add_argument("--per-set", type=int, default=5)
    args = parser.parse_args()

    aligner = FaceAligner()
    chips = []
    for name in SETS:
        for _, path in list_identity_images(args.faces_root / name, max_images=1)[: args.per_set]:
            try:
                chips.append(aligner.align(path).image)
            except FaceAnonyMixerError:
                continue
    ours = embed_chips(load_recognizer("dlib", device="cpu"), chips)
    reference = dlib.face_recognition_model_v1(str(default_weights_path()))
    theirs = np.array([np.array(reference.compute_face_descriptor(chip)) for chip in chips])
    differences = np.linalg.norm(ours - theirs, axis=1)
    print(
        json.dumps(
            {
                "chips": len(chips),
                "max_l2_difference": float(differences.max()),
                "mean_l2_difference": float(differences.mean()),
                "descriptor_norm_min": float(np.linalg.norm(theirs, axis=1).min()),
                "descriptor_norm_max": float(np.linalg.norm(theirs, axis=1).max()),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
