"""benchmarks/judge_protection.py: which identities and photos the acceptance protocol takes."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from PIL import Image
from script_loader import load_script

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "judge_protection.py"


@pytest.fixture(scope="module")
def judge() -> ModuleType:
    return load_script(SCRIPT)


@pytest.fixture()
def faces(tmp_path: Path) -> Path:
    """Five people (photos per person: 3, 1, 2, 3, 2), sorted a..e."""
    root = tmp_path / "set"
    for person, count in zip("abcde", (3, 1, 2, 3, 2), strict=True):
        (root / person).mkdir(parents=True)
        for index in range(count):
            Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / person / f"{index}.png")
    return root


def people(items: list[tuple[str, Path]]) -> list[str]:
    return list(dict.fromkeys(label for label, _ in items))


def test_identities_are_taken_in_order_past_those_with_too_few_photos(judge: ModuleType, faces: Path) -> None:
    items = judge.collect_identities([faces], max_identities=3, max_images=2, min_images=2)
    assert people(items) == ["set/a", "set/c", "set/d"]
    assert len(items) == 6  # two photos each


def test_skipping_identities_gives_the_next_slice(judge: ModuleType, faces: Path) -> None:
    first = judge.collect_identities([faces], max_identities=2, max_images=None, min_images=2)
    rest = judge.collect_identities(
        [faces], max_identities=2, max_images=None, min_images=2, skip_identities=2
    )
    assert people(first) == ["set/a", "set/c"]
    # the one-photo person is not counted among the skipped
    assert people(rest) == ["set/d", "set/e"]
    assert not set(first) & set(rest)


def test_saved_embeddings_come_back_to_be_rescored(judge: ModuleType, tmp_path: Path) -> None:
    labels = ["set/a", "set/a", "set/b"]
    original = np.array([[0.0, 0.0], [0.4, 0.0], [2.0, 0.0]])
    protected = np.array([[5.0, 0.0], [np.nan, np.nan], [5.5, 0.0]])
    path = tmp_path / "embeddings.npz"
    settings = {"original": original, "A": protected, "B": protected + 1.0, "S": protected + 2.0}
    judge.save_embeddings(path, labels, {"facenet": settings})
    loaded_labels, loaded = judge.load_embeddings(path)
    assert loaded_labels == labels
    np.testing.assert_array_equal(loaded["facenet"]["A"], protected)  # NaN rows (no face) kept
    # the one pair of protected photos of different people, (a0 under A, b under A), at 0.5
    assert judge.judge_measures(labels, loaded["facenet"], 0.6)["own_key_impostor_nonmatch"]["rate"] == 0.0
    assert judge.judge_measures(labels, loaded["facenet"], 0.4)["own_key_impostor_nonmatch"]["rate"] == 1.0


def test_both_scripts_select_with_the_same_options_and_refuse_an_empty_selection(
    judge: ModuleType, faces: Path
) -> None:
    import argparse

    parser = argparse.ArgumentParser()
    judge.add_selection_arguments(parser, max_identities=2)
    args = parser.parse_args([str(faces), "--skip-identities", "1"])
    assert people(judge.selected_identities(args)) == ["set/c", "set/d"]
    with pytest.raises(SystemExit, match="no identity has enough photos"):
        judge.selected_identities(parser.parse_args([str(faces), "--min-images", "4"]))
