"""How many CPU threads torch may use: one setting everywhere.

``--threads N`` on the commands, ``threads=N`` in the Python API and the service's settings, and
``FACEANONYMIXER_THREADS`` in the environment all mean the same: N > 0 threads, always; 0 (the
default) chooses per call: every core this process may use while the others are idle, one thread
while other work is running.

Why not torch's default (every core, always): torch's OpenMP threads spin at each barrier, and
when another process holds a core the spinning thread waits a whole scheduler slice for its
partner. One photo took 8.3 s at two threads beside two busy processes against 1.2 s alone (3.2 s
at one thread); see docs/decisions/2026-12-07-threads.md.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

THREADS_ENV = "FACEANONYMIXER_THREADS"
#: the setting's value that chooses per call
AUTO = 0
_LOADAVG = Path("/proc/loadavg")


class ThreadsSettingError(ValueError):
    """``threads`` is not a whole number of threads (0 or more)."""


def threads_setting(threads: int | None = None) -> int:
    """The threads setting: ``threads`` when given, else ``FACEANONYMIXER_THREADS``, else 0 (auto)."""
    if threads is None:
        raw = os.environ.get(THREADS_ENV, "").strip()
        if not raw:
            return AUTO
        try:
            threads = int(raw)
        except ValueError:
            raise ThreadsSettingError(f"{THREADS_ENV}={raw!r} is not a whole number of threads") from None
    if threads < 0:
        raise ThreadsSettingError(f"threads must be 0 (auto) or more, not {threads}")
    return threads


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, which container limits set)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def other_runnable_tasks() -> int:
    """Runnable tasks on the machine besides the caller, read now from ``/proc/loadavg``.

    The fourth field counts tasks running or waiting for a CPU at this instant (the load averages
    lag by a minute). 0 where the file cannot be read (not Linux).
    """
    try:
        running = _LOADAVG.read_text().split()[3].split("/")[0]
        return max(0, int(running) - 1)
    except (OSError, IndexError, ValueError):
        return 0


def threads_for_call(setting: int, *, share: int | None = None) -> int:
    """Threads for the next piece of work: ``setting`` when positive; for 0, the cores of
    ``share`` (default: every usable core) that no other task is running on, at least one."""
    if setting > 0:
        return setting
    cores = share if share is not None else usable_cores()
    return max(1, min(cores, usable_cores() - other_runnable_tasks()))


@contextmanager
def torch_threads(setting: int, *, share: int | None = None) -> Iterator[int]:
    """Run the body with :func:`threads_for_call` torch threads, then restore the previous count.

    torch's thread count belongs to the calling thread (OpenMP), so engines in worker threads
    each set their own.
    """
    import torch

    previous = torch.get_num_threads()
    chosen = threads_for_call(setting, share=share)
    if chosen != previous:
        torch.set_num_threads(chosen)
    try:
        yield chosen
    finally:
        if chosen != previous:
            torch.set_num_threads(previous)
