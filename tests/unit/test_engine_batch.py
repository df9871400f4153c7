"""The one batch path (faceanonymixer.engine.batch) with a stand-in engine: order, per-photo
errors, one engine call for every subject, stop checks and progress."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from faceanonymixer.engine.batch import SubjectPhotos, prepare_photos, protect_batch, protect_prepared
from faceanonymixer.engine.protection_key import ProtectionKey
from faceanonymixer.utils.errors import NoFaceError, ProtectionCancelledError

KEY_A = ProtectionKey(bytes(range(32)))
KEY_B = ProtectionKey(bytes(range(1, 33)))


@dataclass
class _Face:
    photo: str


@dataclass
class _Result:
    photo: str
    key: ProtectionKey


class StandInEngine:
    """Prepares any photo whose name does not start with "bad"; protects by naming photo and key."""

    def __init__(self) -> None:
        self.prepared: list[str] = []
        self.calls: list[list[tuple[ProtectionKey, list[str]]]] = []
        self.keywords: list[dict[str, Any]] = []

    def prepare(self, photo: str) -> _Face:
        self.prepared.append(photo)
        if photo.startswith("bad"):
            raise NoFaceError(f"no face in {photo}")
        return _Face(photo)

    def protect(self, subjects: list[Any], **keywords: Any) -> list[list[_Result]]:
        self.calls.append([(s.key, [f.photo for f in s.faces]) for s in subjects])
        self.keywords.append(keywords)
        return [[_Result(f.photo, s.key) for f in s.faces] for s in subjects]


def test_a_photo_that_fails_fails_alone_and_the_rest_are_protected_in_one_call() -> None:
    engine = StandInEngine()
    rows = protect_batch(
        engine,  # type: ignore[arg-type]
        [
            SubjectPhotos(["a1", "bad", "a2"], KEY_A),
            SubjectPhotos(["bad2"], KEY_B),
            SubjectPhotos(["b1"], KEY_B),
        ],
    )
    assert [[o.result.photo if o.result else type(o.error).__name__ for o in row] for row in rows] == [
        ["a1", "NoFaceError", "a2"],
        ["NoFaceError"],
        ["b1"],
    ]
    # one engine call; the subject whose only photo failed is not in it
    assert engine.calls == [[(KEY_A, ["a1", "a2"]), (KEY_B, ["b1"])]]
    assert rows[0][0].result is not None and rows[0][0].result.key == KEY_A
    assert rows[2][0].result is not None and rows[2][0].result.key == KEY_B
    assert all(o.optimise_seconds > 0 for row in rows for o in row if o.result is not None)
    assert all(o.optimise_seconds == 0 for row in rows for o in row if o.error is not None)


def test_stop_at_first_error_prepares_no_further_photo_and_protects_nothing() -> None:
    engine = StandInEngine()
    rows = protect_batch(
        engine,  # type: ignore[arg-type]
        [SubjectPhotos(["a1", "bad", "a2"], KEY_A), SubjectPhotos(["b1"], KEY_B)],
        stop_at_first_error=True,
    )
    assert engine.prepared == ["a1", "bad"]
    assert engine.calls == []
    assert [type(o.error).__name__ if o.error else "ok" for o in rows[0]] == ["ok", "NoFaceError"]
    assert len(rows) == 1


def test_the_stop_check_runs_before_each_photo() -> None:
    engine = StandInEngine()
    checks = iter([False, True])
    with pytest.raises(ProtectionCancelledError):
        protect_batch(
            engine,  # type: ignore[arg-type]
            [SubjectPhotos(["a1", "a2", "a3"], KEY_A)],
            should_stop=lambda: next(checks),
        )
    assert engine.prepared == ["a1"]
    assert engine.calls == []


def test_progress_counts_photos_across_subjects() -> None:
    heard: list[tuple[int, int]] = []
    protect_batch(
        StandInEngine(),  # type: ignore[arg-type]
        [SubjectPhotos(["a1", "a2"], KEY_A), SubjectPhotos(["b1"], KEY_B)],
        on_photo=lambda done, total: heard.append((done, total)),
    )
    assert heard == [(1, 3), (2, 3), (3, 3)]


def test_prepared_photos_are_protected_again_under_other_keys() -> None:
    engine = StandInEngine()
    outcomes = prepare_photos(engine, ["a1", "b1"])  # type: ignore[arg-type]
    for key in (KEY_A, KEY_B):
        protect_prepared(engine, [(key, [outcome]) for outcome in outcomes], optimisation=None)  # type: ignore[arg-type]
        assert [o.result.key for o in outcomes if o.result] == [key, key]
    assert engine.prepared == ["a1", "b1"]  # prepared once
    assert len(engine.calls) == 2 and engine.keywords[0]["optimisation"] is None
