"""The threads setting: one name everywhere, 0 choosing per call from the machine's load."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from faceanonymixer.utils import threads
from faceanonymixer.utils.threads import ThreadsSettingError, threads_for_call, threads_setting, torch_threads


@pytest.fixture
def loadavg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Write a fake /proc/loadavg with ``running`` runnable tasks (the caller among them)."""
    path = tmp_path / "loadavg"
    monkeypatch.setattr(threads, "_LOADAVG", path)
    monkeypatch.setattr(threads, "usable_cores", lambda: 4)

    def write(running: int) -> None:
        path.write_text(f"1.00 0.50 0.25 {running}/300 12345\n")

    return write


def test_the_setting_comes_from_the_argument_then_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FACEANONYMIXER_THREADS", raising=False)
    assert threads_setting() == 0
    monkeypatch.setenv("FACEANONYMIXER_THREADS", "3")
    assert threads_setting() == 3
    assert threads_setting(2) == 2
    monkeypatch.setenv("FACEANONYMIXER_THREADS", "many")
    with pytest.raises(ThreadsSettingError, match="FACEANONYMIXER_THREADS"):
        threads_setting()
    with pytest.raises(ThreadsSettingError, match="0 \\(auto\\) or more"):
        threads_setting(-1)


def test_a_fixed_count_is_used_whatever_the_load(loadavg) -> None:  # type: ignore[no-untyped-def]
    loadavg(9)
    assert threads_for_call(3) == 3


def test_auto_takes_the_idle_cores_and_one_thread_on_a_busy_machine(loadavg) -> None:  # type: ignore[no-untyped-def]
    loadavg(1)  # only the caller runs
    assert threads_for_call(0) == 4
    assert threads_for_call(0, share=2) == 2  # a worker's share of the cores
    loadavg(3)  # two other tasks hold two of the four cores
    assert threads_for_call(0) == 2
    loadavg(7)
    assert threads_for_call(0) == 1


def test_an_unreadable_load_counts_as_idle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads, "_LOADAVG", tmp_path / "missing")
    assert threads.other_runnable_tasks() == 0


def test_torch_threads_sets_the_count_for_the_block_and_restores_it() -> None:
    before = torch.get_num_threads()
    wanted = 1 if before != 1 else 2
    with torch_threads(wanted) as chosen:
        assert chosen == wanted == torch.get_num_threads()
    assert torch.get_num_threads() == before
