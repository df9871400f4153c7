"""Verification accuracy of a recognizer on a folder-per-identity set (all pairs, Euclidean).

    python benchmarks/verification.py ../shared/faces/orl [--recognizer dlib]

Prints the number of aligned photos, genuine/impostor pair counts, the EER and its distance
threshold, and the match rates at the recognizer's own threshold.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from faceanonymixer import FaceAligner, load_recognizer
from faceanonymixer.evaluation.verification import equal_error_rate, match_rates, pair_distances
from faceanonymixer.faces.datasets import list_identity_images
from faceanonymixer.faces.embedding import embed_images


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("folder", type=Path)
    parser.add_argument("--recognizer", default="dlib")
    parser.add_argument("--max-identities", type=int)
    parser.add_argument("--max-images", type=int)
    args = parser.parse_args()

    started = time.perf_counter()
    items = list_identity_images(args.folder, max_identities=args.max_identities, max_images=args.max_images)
    recognizer = load_recognizer(args.recognizer)
    faces = embed_images(items, aligner=FaceAligner(), recognizer=recognizer)
    genuine, impostor = pair_distances(faces.embeddings, faces.labels)
    eer, eer_threshold = equal_error_rate(genuine, impostor)
    genuine_match, impostor_match = match_rates(genuine, impostor, recognizer.match_threshold)
    print(
        json.dumps(
            {
                "folder": str(args.folder),
                "recognizer": args.recognizer,
                "images": len(items),
                "aligned": len(faces.labels),
                "genuine_pairs": len(genuine),
                "impostor_pairs": len(impostor),
                "eer": round(eer, 5),
                "eer_threshold": round(eer_threshold, 4),
                "threshold": recognizer.match_threshold,
                "genuine_match_rate": round(genuine_match, 5),
                "impostor_match_rate": round(impostor_match, 5),
                "seconds": round(time.perf_counter() - started, 1),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
