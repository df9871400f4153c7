"""Shared fixtures. Real face photos come from ``../shared/faces`` (never copied into the repo)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

#: the labelled photo sets beside the repository; FACEANONYMIXER_FACES points elsewhere
FACES_ROOT = Path(
    os.environ.get("FACEANONYMIXER_FACES", Path(__file__).resolve().parents[2] / "shared" / "faces")
)
#: the sets that may be used for evaluation (lfw_train is for training only)
EVALUATION_SETS = ("orl", "yale", "deepface", "fr_examples", "lfw")


@pytest.fixture(scope="session")
def faces_root() -> Path:
    if not FACES_ROOT.is_dir():
        pytest.skip(
            f"real face photos not found at {FACES_ROOT} (set FACEANONYMIXER_FACES to the shared folder)"
        )
    return FACES_ROOT
