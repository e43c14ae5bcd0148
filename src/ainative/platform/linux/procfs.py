"""Reading processes from /proc: identity, names, credentials, cgroups, threads,
mapped libraries and the opt-in environment variable.

Every reader raises ProcessGone when the process has exited, and PermissionError only
where the kernel refuses (another user's environ without root, say).
"""

from __future__ import annotations

from collections.abc import Iterator

from ainative.platform.base import ProcessInfo, TaskId


def list_pids() -> list[int]:
    raise NotImplementedError


def task_id(pid: int, tid: int | None = None) -> TaskId:
    """Identity of a process (or of one of its threads when tid is given)."""
    raise NotImplementedError


def read_process(pid: int) -> ProcessInfo:
    raise NotImplementedError


def list_threads(pid: int) -> list[int]:
    """TIDs under /proc/PID/task."""
    raise NotImplementedError


def iter_processes() -> Iterator[ProcessInfo]:
    """Every process readable now; those that vanish while being read are skipped."""
    raise NotImplementedError


def mapped_files(pid: int, max_bytes: int = 4 << 20) -> list[str]:
    """Distinct file paths mapped by the process (from /proc/PID/maps), reading at most
    max_bytes so a process with a huge map cannot stall the daemon."""
    raise NotImplementedError


def environ_value(pid: int, name: str, max_bytes: int = 1 << 20) -> str | None:
    raise NotImplementedError


def cpu_times(pid: int) -> tuple[float, float]:
    """(user, system) seconds."""
    raise NotImplementedError


def is_descendant(pid: int, ancestor: int) -> bool:
    """True when ancestor is a proper ancestor of pid (walking PPid)."""
    raise NotImplementedError
