"""Windows knobs over the Win32 boundary: a process's priority class, each thread's
priority and affinity, in the values core/knobs.py stores in the journal.

The core addresses knobs per thread and names a process's main thread by the pid (as
Linux does). Windows thread ids are never equal to a pid, so here a "thread" number that
is a pid names the process's first thread, and the process itself for priority_class:
the one process-wide knob is read on every thread but written only through the pid, so
a journal entry for another thread of the same process (the engine journals one per
thread) is a no-op both ways, and the entry for the pid puts the value back. When the
write through the pid was refused, the other threads' writes of the same value in the
same pass are refused with the same reason, so none of them is journaled as applied.

Values that read back different from what was written are refused here, never left in
force: Windows grants REALTIME_PRIORITY_CLASS only to a caller holding
SeIncreaseBasePriorityPrivilege (administrators) and silently gives HIGH to anyone else,
so a REALTIME request that comes back HIGH is undone and reported as PermissionError.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ainative.core.knobs import PRIORITY_CLASSES, THREAD_PRIORITY_NAMES
from ainative.platform.windows.win32 import (
    ERROR_INVALID_PARAMETER,
    PRIORITY_CLASS_NAMES,
    PRIORITY_CLASS_VALUES,
    Win32,
    Win32Error,
)

Getter = Callable[[int], Any]
Setter = Callable[[int, Any], None]


def mask_of(cpus: list[int]) -> int:
    mask = 0
    for c in cpus:
        mask |= 1 << int(c)
    return mask


def cpus_of(mask: int) -> list[int]:
    return [i for i in range(mask.bit_length()) if mask >> i & 1]


class WindowsKnobs:
    """The getter and setter of each Windows knob. ``thread_of(n)`` resolves a number the
    core passed (a pid standing for its first thread, or a thread id) to a real thread
    id; ``is_process(n)`` says whether n is such a pid."""

    def __init__(self, api: Win32, thread_of: Callable[[int], int],
                 is_process: Callable[[int], bool]) -> None:
        self.api = api
        self.thread_of = thread_of
        self.is_process = is_process
        # pid -> (the class a write through the pid was refused, why): the process's other
        # threads repeat that refusal instead of pretending to have applied it.
        self._refused: dict[int, tuple[str, str]] = {}

    def table(self) -> dict[str, tuple[Getter, Setter]]:
        return {
            "priority_class": (self.get_priority_class, self.set_priority_class),
            "thread_priority": (self.get_thread_priority, self.set_thread_priority),
            "affinity": (self.get_affinity, self.set_affinity),
        }

    def _pid(self, n: int) -> int:
        return n if self.is_process(n) else self.api.thread_process_id(n)

    # --- priority class (process-wide) ---

    def get_priority_class(self, n: int) -> str:
        value = self.api.get_priority_class(self._pid(n))
        name = PRIORITY_CLASS_NAMES.get(value)
        if name is None:
            raise Win32Error(value, f"GetPriorityClass: unknown priority class {value:#x}")
        return name

    def set_priority_class(self, n: int, name: Any) -> None:
        if name not in PRIORITY_CLASSES:
            raise ValueError(f"priority_class must be one of {list(PRIORITY_CLASSES)}, "
                             f"not {name!r}")
        if not self.is_process(n):
            # Another thread of a process: the class is written through its pid.
            pid = self.api.thread_process_id(n)
            refused = self._refused.get(pid)
            if refused is not None and refused[0] == name and \
                    self.get_priority_class(pid) != name:
                raise PermissionError(refused[1])
            return
        old = self.get_priority_class(n)
        try:
            self.api.set_priority_class(n, PRIORITY_CLASS_VALUES[name])
        except PermissionError as e:
            self._refused[n] = (name, str(e))
            raise
        now = self.get_priority_class(n)
        if now != name:
            # Windows gave something else (REALTIME without the privilege gives HIGH):
            # put the old class back so nothing unjournaled stays in force.
            self.api.set_priority_class(n, PRIORITY_CLASS_VALUES[old])
            why = (f"process {n}: Windows set priority class {now} when asked for {name} "
                   f"(REALTIME needs SeIncreaseBasePriorityPrivilege: run the daemon as an "
                   f"administrator); put back {old}")
            if len(self._refused) > 4096:
                self._refused.clear()
            self._refused[n] = (name, why)
            raise PermissionError(why)
        self._refused.pop(n, None)

    # --- thread priority ---

    def get_thread_priority(self, n: int) -> int:
        return self.api.get_thread_priority(self.thread_of(n))

    def set_thread_priority(self, n: int, value: Any) -> None:
        if isinstance(value, bool) or value not in THREAD_PRIORITY_NAMES:
            raise ValueError(f"thread_priority must be one of {sorted(THREAD_PRIORITY_NAMES)}, "
                             f"not {value!r}")
        self.api.set_thread_priority(self.thread_of(n), int(value))

    # --- affinity ---

    def get_affinity(self, n: int) -> list[int]:
        return cpus_of(self.api.get_thread_affinity(self.thread_of(n)))

    def set_affinity(self, n: int, cpus: Any) -> None:
        if not isinstance(cpus, list | tuple | frozenset | set) or not cpus:
            raise ValueError(f"affinity must be a non-empty list of CPUs, not {cpus!r}")
        tid = self.thread_of(n)
        mask = mask_of(sorted(int(c) for c in cpus))
        proc_mask, _system = self.api.process_affinity(self._pid(n))
        if mask & ~proc_mask:
            raise ValueError(f"CPUs {cpus_of(mask & ~proc_mask)} are outside process "
                             f"{self._pid(n)}'s affinity ({cpus_of(proc_mask)})")
        try:
            self.api.set_thread_affinity(tid, mask)
        except Win32Error as e:
            if e.code == ERROR_INVALID_PARAMETER:
                raise ValueError(f"thread {tid}: affinity {sorted(cpus)} refused "
                                 "(Win32 error 87)") from None
            raise
