"""The first-run demo: find and align faces, embed them, and show who matches whom.

For now it exercises the foundation (alignment and dlib's descriptor in PyTorch); the
protection step joins it when the engine lands.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from rich.console import Console
from rich.table import Table

from faceanonymixer.datasets import list_identity_images
from faceanonymixer.embedding import embed_images
from faceanonymixer.evaluation.verification import match_rates, pair_distances


@dataclass
class DemoResult:
    folder: Path
    identities: int
    images: int
    aligned: int
    failures: list[tuple[Path, str]]
    genuine: np.ndarray
    impostor: np.ndarray
    threshold: float
    seconds: float

    def to_json(self) -> dict[str, Any]:
        genuine_match, impostor_match = match_rates(self.genuine, self.impostor, self.threshold)
        return {
            "folder": str(self.folder),
            "identities": self.identities,
            "images": self.images,
            "aligned": self.aligned,
            "failures": [{"path": str(p), "reason": r} for p, r in self.failures],
            "threshold": self.threshold,
            "genuine_pairs": len(self.genuine),
            "impostor_pairs": len(self.impostor),
            "genuine_match_rate": genuine_match,
            "impostor_match_rate": impostor_match,
            "mean_genuine_distance": float(self.genuine.mean()) if len(self.genuine) else None,
            "mean_impostor_distance": float(self.impostor.mean()) if len(self.impostor) else None,
            "seconds": round(self.seconds, 2),
        }

    def render(self, stream: TextIO) -> None:
        console = Console(file=stream)
        summary = self.to_json()
        console.print(
            f"Aligned {self.aligned}/{self.images} photos of {self.identities} people from {self.folder} "
            f"in {self.seconds:.1f} s"
        )
        for path, reason in self.failures:
            console.print(f"  skipped {path.name}: {reason}")
        table = Table(title=f"dlib descriptor (PyTorch), match when distance < {self.threshold}")
        table.add_column("pairs")
        table.add_column("count", justify="right")
        table.add_column("mean distance", justify="right")
        table.add_column("matched", justify="right")
        for name, values, rate in (
            ("same person", self.genuine, summary["genuine_match_rate"]),
            ("different people", self.impostor, summary["impostor_match_rate"]),
        ):
            mean = f"{values.mean():.3f}" if len(values) else "-"
            table.add_row(name, str(len(values)), mean, "-" if rate is None else f"{rate:.1%}")
        console.print(table)


def _threshold(value: float | None) -> float:
    if value is None:
        raise ValueError("the demo needs a recognizer with a match threshold")
    return float(value)


def run_alignment_demo(folder: Path, *, max_identities: int = 5, max_images: int = 4) -> DemoResult:
    from faceanonymixer.alignment import FaceAligner
    from faceanonymixer.recognizers import load_recognizer

    started = time.perf_counter()
    items = list_identity_images(folder, max_identities=max_identities, max_images=max_images)
    if not items:
        raise FileNotFoundError(f"no images found under {folder} (expected <identity>/<image> files)")
    recognizer = load_recognizer("dlib")
    faces = embed_images(items, aligner=FaceAligner(), recognizer=recognizer)
    genuine, impostor = pair_distances(faces.embeddings, faces.labels) if faces.labels else (np.zeros(0),) * 2
    return DemoResult(
        folder=folder,
        identities=len({label for label, _ in items}),
        images=len(items),
        aligned=len(faces.labels),
        failures=faces.failures,
        genuine=genuine,
        impostor=impostor,
        threshold=_threshold(recognizer.match_threshold),
        seconds=time.perf_counter() - started,
    )
