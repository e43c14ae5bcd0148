"""Per-thread scheduling knobs on Linux: nice, policy, I/O priority, CPU affinity.

Every function takes a thread id (a TID; a PID names the main thread). Linux applies
all of these per thread, which is why the engine walks /proc/PID/task.
Raise ProcessGone when the thread no longer exists, PermissionError when not allowed.
"""

from __future__ import annotations


def get_nice(tid: int) -> int:
    raise NotImplementedError


def set_nice(tid: int, value: int) -> None:
    raise NotImplementedError


def get_policy(tid: int) -> tuple[int, int]:
    """(policy, rt_priority)."""
    raise NotImplementedError


def set_policy(tid: int, policy: int, rt_priority: int = 0) -> None:
    """SCHED_RESET_ON_FORK is set for FIFO/RR so children of a realtime task do not inherit it."""
    raise NotImplementedError


def get_ioprio(tid: int) -> tuple[int, int]:
    """(class, level) as ioprio_get(IOPRIO_WHO_PROCESS, tid) returns it."""
    raise NotImplementedError


def set_ioprio(tid: int, io_class: int, level: int) -> None:
    raise NotImplementedError


def get_affinity(tid: int) -> frozenset[int]:
    raise NotImplementedError


def set_affinity(tid: int, cpus: frozenset[int]) -> None:
    raise NotImplementedError
