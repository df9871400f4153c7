"""benchmarks/judge_protection.py: which identities and photos the judge protocol takes (the
harness's listing, and the script's options onto it), and the script around the package's run."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from PIL import Image
from script_loader import load_script

from faceanonymixer.evaluation.harness import EvalConfig, Photo, ProtectionRun, list_photos
from faceanonymixer.evaluation.pooling import load_embeddings

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def judge() -> ModuleType:
    return load_script(BENCHMARKS / "judge_protection.py")


@pytest.fixture()
def faces(tmp_path: Path) -> Path:
    """Five people (photos per person: 3, 1, 2, 3, 2), sorted a..e; each photo a flat colour."""
    root = tmp_path / "set"
    for number, (person, count) in enumerate(zip("abcde", (3, 1, 2, 3, 2), strict=True)):
        (root / person).mkdir(parents=True)
        for index in range(count):
            colour = np.full((4, 4, 3), (40 * number, 10 * index, 0), np.uint8)
            Image.fromarray(colour).save(root / person / f"{index}.png")
    return root


def people(config: EvalConfig) -> tuple[list[str], int]:
    listed = list_photos(config)
    return list(dict.fromkeys(photo.label for photo in listed)), len(listed)


def test_identities_are_taken_in_order_past_those_with_too_few_photos(faces: Path) -> None:
    chosen = EvalConfig(datasets=(faces,), max_identities=3, max_images=2, min_images=2)
    assert people(chosen) == (["set/a", "set/c", "set/d"], 6)  # two photos each
    # the package's default keeps one-photo identities
    assert people(EvalConfig(datasets=(faces,), max_identities=3)) == (["set/a", "set/b", "set/c"], 6)


def test_skipping_identities_gives_the_next_slice(faces: Path) -> None:
    first, _ = people(EvalConfig(datasets=(faces,), max_identities=2, min_images=2))
    rest, _ = people(EvalConfig(datasets=(faces,), max_identities=2, min_images=2, skip_identities=2))
    assert first == ["set/a", "set/c"]
    assert rest == ["set/d", "set/e"]  # the one-photo person is not counted among the skipped


def test_both_scripts_select_with_the_same_options_and_refuse_an_empty_selection(
    judge: ModuleType, faces: Path
) -> None:
    parser = argparse.ArgumentParser()
    judge.add_selection_arguments(parser, max_identities=2)
    config = judge.selection_config(parser.parse_args([str(faces), "--skip-identities", "1"]), seed=3)
    assert people(config)[0] == ["set/c", "set/d"] and config.seed == 3
    with pytest.raises(SystemExit, match="no identity has enough photos"):
        judge.selection_config(parser.parse_args([str(faces), "--min-images", "4"]))


class ColourJudge:
    """Embeds a photo as its first pixel's red and green (no face in a black photo)."""

    name = "facenet"
    threshold = None

    def embed(self, image: np.ndarray) -> np.ndarray | None:
        pixel = image[0, 0, :2].astype(np.float64)
        return pixel if pixel.any() else None


def test_the_script_scores_the_packages_run_and_keeps_the_embeddings(
    judge: ModuleType,
    faces: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Protection and judges replaced by fakes: under every key a photo keeps its colour, shifted
    by the key, so each key keeps people apart and a person's photos together."""
    seen: dict[str, Any] = {}

    def protect(config: EvalConfig, *, progress: Any = None) -> ProtectionRun:
        seen["config"] = config
        photos = []
        for item in list_photos(config):
            original = np.asarray(Image.open(item.path).convert("RGB"))
            photo = Photo(item.identity, item.path, original, original, set_name=item.set_name)
            for shift, key in ((1, "A"), (2, "B"), (3, "S")):
                photo.protected[key] = original + np.uint8(shift * 50)
                photo.seconds[key] = 0.5 * shift
            photos.append(photo)
        return ProtectionRun(photos, [], ("A", "B", "S"), 1, 1.0)

    monkeypatch.setattr(judge, "run_protection", protect)
    monkeypatch.setattr(judge, "load_judges", lambda names: [ColourJudge()])
    out, kept = tmp_path / "report" / "report.json", tmp_path / "runs" / "t0.npz"
    argv = [str(faces), "--min-images", "2", "--steps", "5", "--override", "target_gain=1.5"]
    argv += ["--judges", "facenet", "--out", str(out), "--embeddings-out", str(kept)]
    assert judge.main(argv) == 0

    config = seen["config"]
    assert config.optimisation == {"target_gain": 1.5, "steps": 5} and not config.baselines
    assert config.batch_size == 1 and config.min_images == 2
    report = json.loads(out.read_text())
    assert report["data"] == {"identities": 4, "photos": 10, "failures": 0, "failure_list": []}
    assert report["engine"]["seconds_per_photo"]["n"] == 30
    assert report["engine"]["seconds_per_photo_by_key"]["S"]["p50"] == 1.5
    facenet = report["judges"]["facenet"]
    assert facenet["threshold_source"] == "fmr 0.01, 30 impostor pairs"
    assert facenet["detection"]["original"]["found"] == 9  # person a's first photo is black
    assert facenet["measures"]["own_key_impostor_nonmatch"]["rate"] == 1.0
    assert "own key impostor non-match" in capsys.readouterr().out
    labels, embeddings = load_embeddings(kept)
    assert labels == [
        f"set/{person}" for person, count in zip("acde", (3, 2, 3, 2), strict=True) for _ in range(count)
    ]
    assert set(embeddings["facenet"]) == {"original", "A", "B", "S"}
