"""``faceanonymixer demo``, the first of README's two commands, run for real as a subprocess.

A quick run (the sample photos at 5 optimisation steps) checks everything but the rates: the table,
the files, the revocation, the summary. The rates need the profile's 50 steps, so the full runs,
with no arguments at all (the sample photo from scikit-image's wheel, an output folder it names
itself) and on ``../shared/faces/deepface``, are marked slow. All start the real gRPC service
in-process, protect, revoke and re-enroll, and judge with dlib's own C++ face recognition. Run
with ``-s`` to see the rates. No run has a time limit: a busy machine makes them slower, not wrong.

The keys are random (the key store draws their material), so the rates vary from run to run; the
bounds come from 12 keys on the sample and 6 keys x 4 people on deepface, judged as the demo does
(summed up in :data:`BOUNDS`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from faceanonymixer.cli import demo as demo_module
from faceanonymixer.cli.demo import GRID_CELL, PersonRun, Photo, grid_size
from faceanonymixer.utils.errors import InvalidRequestError

#: optimisation steps of the quick run
QUICK_STEPS = 5
#: Lower bounds of the three rates of the acceptance criterion, per run. Measured with random keys:
#: one person's protected photos under one key lie 0.08-0.38 apart (all match: rate 1.0 in every
#: run); originals vs protected 0.72 or more (all non-match: 1.0). Key A vs its replacement B:
#: 0.46-0.9, and about 14 % of those pairs fall under 0.6 (the embedded DCGAN's synthetic
#: identities crowd together), so one person with one key pair gives 1.0 most runs but 0 in a few
#: percent: the sample run (one person) gets no bound on it, the deepface run (four people, four
#: key pairs) gets 0.25 (below it in 0.06 % of 5000 simulated runs; median 0.86). Both runs
#: assert instead that every A-vs-B distance exceeds every A-vs-A distance (by 0.1 or more in
#: every simulated run). Returning the originals fails the second bound; a replacement key that
#: gives the revoked key's faces fails the third and the separation; a protection that does not
#: depend on the key consistently fails the first.
BOUNDS = {
    "same_person_match_rate": {"sample": 0.9, "deepface": 0.9},
    "original_vs_protected_nonmatch_rate": {"sample": 0.9, "deepface": 0.9},
    "after_revocation_nonmatch_rate": {"sample": 0.0, "deepface": 0.25},
}


@dataclass
class DemoRun:
    name: str
    out: Path
    completed: subprocess.CompletedProcess[str]
    summary: dict[str, Any]


def run_demo_command(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "faceanonymixer.cli", "demo", *args],
        cwd=cwd,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        check=False,
    )


def report(name: str, summary: dict[str, Any]) -> None:
    print(f"\n{name}: {summary['images']['description']}; {summary['seconds']} s")
    for key in BOUNDS:
        print(
            f"  {key} = {summary[key]} over {summary['pairs'][key]} pairs, "
            f"distances {summary['distances'][key]}"
        )


def _run_in_empty_folder(name: str, cwd: Path, *args: str) -> DemoRun:
    completed = run_demo_command(*args, cwd=cwd)
    assert completed.returncode == 0, completed.stderr
    [out] = list(cwd.iterdir())
    summary = json.loads((out / "summary.json").read_text())
    report(name, summary)
    return DemoRun(name, out, completed, summary)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    """``faceanonymixer demo --steps 5`` in an empty folder: everything but the rates."""
    return _run_in_empty_folder("quick", tmp_path_factory.mktemp("demo-quick"), "--steps", str(QUICK_STEPS))


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    """``faceanonymixer demo`` with no arguments, in an empty folder."""
    return _run_in_empty_folder("sample", tmp_path_factory.mktemp("demo-sample"))


@pytest.fixture(scope="module")
def deepface_run(faces_root: Path, tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    out = tmp_path_factory.mktemp("demo-deepface") / "out"
    completed = run_demo_command(
        "--images", str(faces_root / "deepface"), "--out", str(out), "--json", cwd=out.parent
    )
    assert completed.returncode == 0, completed.stderr
    summary = json.loads((out / "summary.json").read_text())
    report("deepface", summary)
    return DemoRun("deepface", out, completed, summary)


@pytest.fixture(params=["sample", "deepface"])
def demo_run(request: pytest.FixtureRequest) -> DemoRun:
    return request.getfixturevalue(f"{request.param}_run")  # type: ignore[no-any-return]


# ---- the acceptance criterion ------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("measure", sorted(BOUNDS))
def test_rates_meet_their_bounds(demo_run: DemoRun, measure: str) -> None:
    summary = demo_run.summary
    assert summary["pairs"][measure] > 0
    bound = BOUNDS[measure][demo_run.name]
    assert summary[measure] is not None and summary[measure] >= bound, summary["distances"]


@pytest.mark.slow
def test_the_replacement_key_moves_farther_than_photos_of_one_key_spread(demo_run: DemoRun) -> None:
    distances = demo_run.summary["distances"]
    assert distances["after_revocation_nonmatch_rate"]["min"] > distances["same_person_match_rate"]["max"]
    assert (
        distances["original_vs_protected_nonmatch_rate"]["min"] > distances["same_person_match_rate"]["max"]
    )


def test_the_revoked_key_is_refused(quick_run: DemoRun) -> None:
    summary = quick_run.summary
    assert summary["revoked_key_refused"] is True
    for person in summary["people"]:
        assert person["revoked_key_refused"] is True
        assert person["key_a"] != person["key_b"]


@pytest.mark.slow
def test_every_person_has_their_own_key(deepface_run: DemoRun) -> None:
    keys = [person["key_a"] for person in deepface_run.summary["people"]]
    assert len(keys) == len(set(keys)) == 4


def test_the_summary_says_what_was_measured(quick_run: DemoRun) -> None:
    summary = quick_run.summary
    assert summary["judge"] == {**summary["judge"], "name": "dlib", "threshold": 0.6}
    assert summary["steps"] == QUICK_STEPS and summary["profile"] == "embedded"
    assert summary["seconds"] > 0
    assert summary["images"]["protected"] == summary["images"]["photos"]
    assert summary["images"]["skipped"] == []
    for measure in BOUNDS:  # every rate is there, measured over the pairs it names
        assert summary["pairs"][measure] > 0 and 0 <= summary[measure] <= 1


@pytest.mark.slow
def test_full_runs_use_the_profiles_steps(demo_run: DemoRun) -> None:
    assert demo_run.summary["steps"] == 50 and demo_run.summary["images"]["skipped"] == []


def test_the_sample_run_names_its_photos_and_their_licence(quick_run: DemoRun) -> None:
    summary = quick_run.summary
    assert quick_run.out.name.startswith("faceanonymixer-demo-")
    assert summary["images"]["source"] == "sample"
    assert (
        "public-domain" in summary["images"]["description"]
        and "ONE photo" in summary["images"]["description"]
    )
    assert summary["pairs"]["same_person_match_rate"] == 10  # 5 variations of one photo
    assert summary["pairs"]["after_revocation_nonmatch_rate"] == 25


def test_the_console_shows_the_table(quick_run: DemoRun) -> None:
    shown = quick_run.completed.stdout
    for _, label, _ in demo_module.MEASURES:
        assert label in shown
    assert "Revoked key A refused by the service: yes." in shown
    assert "{" not in shown.split("\n", 1)[0]  # not the JSON
    # the server's log lines went to server.log; progress lines only on a terminal
    assert quick_run.completed.stderr == ""
    assert "serving" in (quick_run.out / "server.log").read_text()


@pytest.mark.slow
def test_json_prints_the_summary_file(deepface_run: DemoRun) -> None:
    assert json.loads(deepface_run.completed.stdout) == deepface_run.summary


def test_the_grid_has_a_row_per_photo_and_three_columns(quick_run: DemoRun) -> None:
    photos = quick_run.summary["images"]["photos"]
    with Image.open(quick_run.out / "grid.png") as grid:
        assert grid.format == "PNG" and grid.mode == "RGB"
        assert grid.size == grid_size(photos)
        assert (quick_run.summary["grid"]["width"], quick_run.summary["grid"]["height"]) == grid.size
        assert grid.size[0] > 3 * GRID_CELL and grid.size[1] > photos * GRID_CELL
    leftovers = [path.name for path in quick_run.out.iterdir() if path.name.startswith(".")]
    assert leftovers == []  # the atomic writes left no temporary files


# ---- refusals (no server is started) -----------------------------------------------------------


def test_a_non_empty_out_folder_is_refused_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("precious")
    completed = run_demo_command("--out", str(tmp_path), cwd=tmp_path)
    assert completed.returncode == 2
    assert completed.stdout == ""
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "not empty" in lines[0]
    assert [path.name for path in tmp_path.iterdir()] == ["keep.txt"]


def test_a_missing_images_folder_is_refused_in_one_line(tmp_path: Path) -> None:
    completed = run_demo_command(
        "--images", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"), cwd=tmp_path
    )
    assert completed.returncode == 2
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:")
    assert not (tmp_path / "o").exists()


# ---- the pieces, without a server --------------------------------------------------------------


def test_unreadable_photos_are_listed_and_skipped(faces_root: Path, tmp_path: Path) -> None:
    person = tmp_path / "someone"
    person.mkdir()
    (person / "notes.jpg").write_bytes(b"not a photo at all")
    source = next((faces_root / "deepface" / "person00").iterdir())
    (person / source.name).write_bytes(source.read_bytes())
    photos = demo_module.folder_photos(tmp_path, max_people=4, max_images=3)
    assert [photo.name for photo in photos.photos] == [source.name]
    [unreadable] = photos.unreadable
    assert unreadable["photo"] == "notes.jpg" and "not an image" in unreadable["reason"]


class FakeClient:
    """Protects by inverting the photo; the second photo has no face; the revoked key is refused."""

    def __init__(self) -> None:
        from faceanonymixer_client.errors import KeyRevokedError, NoFaceError

        self.revoked: set[str] = set()
        self.no_face, self.key_revoked = NoFaceError, KeyRevokedError
        self.subject_calls: list[tuple[str, int]] = []

    def create_key(self, subject: str, **_: Any) -> Any:
        return type("KeyInfo", (), {"key_id": f"key-{subject}-{len(self.revoked)}"})()

    def protect_subject(self, images: list[np.ndarray], key_id: str, **_: Any) -> list[Any]:
        self.subject_calls.append((key_id, len(images)))
        return [self.no_face("no face found") if image.mean() < 1 else 255 - image for image in images]

    def revoke_key(self, key_id: str) -> Any:
        self.revoked.add(key_id)
        replacement = type("KeyInfo", (), {"key_id": key_id + "-b"})()
        return type("Revocation", (), {"replacement": replacement})()

    def protect(self, image: np.ndarray, key_id: str, **_: Any) -> np.ndarray:
        if key_id in self.revoked:
            raise self.key_revoked("revoked")
        return 255 - image


def test_photos_without_a_face_are_counted_and_skipped() -> None:
    grey, black = np.full((64, 64, 3), 128, np.uint8), np.zeros((64, 64, 3), np.uint8)
    person = PersonRun("p", [Photo("p", "a", grey), Photo("p", "b", black), Photo("p", "c", grey)])
    client = FakeClient()
    demo_module._protect_person(client, person, lambda _: None)
    assert person.revoked_key_refused
    assert [failure is None for failure in person.failures] == [True, False, True]
    assert "no face" in str(person.failures[1])
    assert client.subject_calls == [(person.key_a, 3), (person.key_b, 2)]  # B only for the usable ones
    assert person.protected_b[1] is None and person.protected_b[2] is not None


def test_pairs_count_only_protected_photos_the_judge_saw() -> None:
    person = PersonRun("p", [Photo("p", name, np.zeros((1, 1, 3), np.uint8)) for name in "abc"])
    person.failures = [None, None, "no face"]
    e = [np.zeros(2), np.ones(2), np.full(2, 5.0)]
    person.original, person.embedded_a, person.embedded_b = e, [e[0], None, e[2]], e
    distances = person.distances()
    assert distances["same_person_match_rate"] == []  # photo b has no embedding under A, c failed
    assert len(distances["original_vs_protected_nonmatch_rate"]) == 2  # (a, a), (b, a)
    assert len(distances["original_match_rate"]) == 3


def test_the_judge_describes_an_original_exactly_as_dlib_judge_does() -> None:
    from faceanonymixer.evaluation.judges import DlibJudge

    judge = DlibJudge()
    for photo in demo_module.sample_photos().photos[:2]:
        box = demo_module.face_box(judge, photo.pixels)
        assert box is not None
        expected = judge.embed(photo.pixels)
        assert expected is not None
        np.testing.assert_array_equal(demo_module.describe(judge, photo.pixels, box), expected)
        assert demo_module.detects_face_at(judge, photo.pixels, box)
        blank = np.full_like(photo.pixels, 128)
        assert not demo_module.detects_face_at(judge, blank, box)


def test_run_in_background_raises_a_start_up_failure_in_the_caller(tmp_path: Path) -> None:
    from faceanonymixer.keystore import KeyEncryptionKey
    from faceanonymixer.service.server import run_in_background
    from faceanonymixer.service.settings import ServiceSettings
    from faceanonymixer.utils.errors import ModelLoadError

    settings = ServiceSettings.load(
        None,
        listen="127.0.0.1:0",
        keystore=f"sqlite:///{tmp_path / 'keys.db'}",
        device="no-such-device",
        threads=1,
        shutdown_grace_seconds=1,
    )
    with (
        pytest.raises(ModelLoadError, match="no-such-device"),
        run_in_background(settings, KeyEncryptionKey.generate()),
    ):
        pytest.fail("the server should not have started")


def test_the_output_folder_is_new_or_empty(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    made = demo_module.prepare_out_dir(None)
    assert made.parent == tmp_path and made.is_dir() and made.name.startswith("faceanonymixer-demo-")
    assert demo_module.prepare_out_dir(tmp_path / "empty") == tmp_path / "empty"
    assert demo_module.prepare_out_dir(made) == made  # still empty
    (made / "x").write_text("x")
    with pytest.raises(InvalidRequestError, match="not empty"):
        demo_module.prepare_out_dir(made)
    with (
        tempfile.NamedTemporaryFile(dir=tmp_path) as file,
        pytest.raises(InvalidRequestError, match="not a folder"),
    ):
        demo_module.prepare_out_dir(Path(file.name))
