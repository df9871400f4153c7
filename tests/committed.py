"""The committed weights a test needs, or a skip that names them (a partial checkout lacks them)."""

from __future__ import annotations

import pytest

from faceanonymixer.models.weights import CommittedWeights, committed_weights


def committed_entry(name: str, what: str) -> CommittedWeights:
    """The manifest entry ``name``, its file present; skips with ``what`` otherwise."""
    entry = committed_weights().get(name)
    if entry is None or not entry.path.is_file():
        pytest.skip(f"{what} is not committed (weights/manifest.json)")
    return entry
