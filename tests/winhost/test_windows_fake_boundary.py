"""The Windows backend's and pool's logic against an in-memory Win32 (a fake at the
boundary this Linux machine cannot reach): the paths Wine cannot show because it runs
everything as Administrator and has no working-set quota.

- REALTIME_PRIORITY_CLASS asked by a non-administrator: Windows silently sets HIGH; the
  backend must put the old class back and refuse, and the engine must journal the
  attempt as failed and leave the process as it was.
- VirtualLock beyond the minimum working set: Windows refuses with
  ERROR_WORKING_SET_QUOTA (1453); the arena must raise the working set first, report a
  refusal that still happens as LockFailed (the pool's "required"/"try" logic), and put
  the working set back. A second VirtualUnlock answers ERROR_NOT_LOCKED (158) on Windows.

The fake follows the documented Win32 behaviour (SetPriorityClass, VirtualLock); the
real calls run under Wine in tests/windows.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ainative.core.engine import Engine
from ainative.core.journal import Journal, make_validator
from ainative.core.rules import load_rules, parse_rules_text, validate
from ainative.core.signatures import match_libraries
from ainative.platform.base import ProcessGone, TaskId
from ainative.platform.windows.backend import WindowsBackend
from ainative.platform.windows.procs import ProcessTable, comm_of, uid_of
from ainative.platform.windows.win32 import (
    ERROR_INVALID_PARAMETER,
    ERROR_NOT_LOCKED,
    ERROR_WORKING_SET_QUOTA,
    PRIORITY_CLASS_VALUES,
    Win32Error,
    error,
)

PAGE = 4096


@dataclass
class FakeThread:
    created: int
    priority: int = 0
    affinity: int = 0b11


@dataclass
class FakeProcess:
    created: int
    priority_class: int = PRIORITY_CLASS_VALUES["normal"]
    affinity: int = 0b11
    threads: dict[int, FakeThread] = field(default_factory=dict)


class FakeWin32:
    """Win32 as documented, in memory: a non-administrator asking for REALTIME gets
    HIGH; VirtualLock locks at most the minimum working set less 8 pages."""

    def __init__(self, admin: bool = False) -> None:
        self.admin = admin
        self.procs: dict[int, FakeProcess] = {}
        self.ws = (200 << 10, 1380 << 10)  # Windows' default working-set limits
        self.ws_calls: list[tuple[int, int]] = []
        self.ws_refused = False
        self.locked: dict[int, int] = {}
        self.buffers: dict[int, ctypes.Array[ctypes.c_char]] = {}
        self.handles: dict[int, int] = {}

    def add(self, pid: int, tids: list[int]) -> FakeProcess:
        p = FakeProcess(created=1000 + pid)
        for i, t in enumerate(tids):
            p.threads[t] = FakeThread(created=2000 + i)
        self.procs[pid] = p
        return p

    def _p(self, pid: int) -> FakeProcess:
        if pid not in self.procs:
            raise error(ERROR_INVALID_PARAMETER, f"OpenProcess({pid})")
        return self.procs[pid]

    def _t(self, tid: int) -> FakeThread:
        for p in self.procs.values():
            if tid in p.threads:
                return p.threads[tid]
        raise error(ERROR_INVALID_PARAMETER, f"OpenThread({tid})")

    def get_priority_class(self, pid: int) -> int:
        return self._p(pid).priority_class

    def set_priority_class(self, pid: int, value: int) -> None:
        if value == PRIORITY_CLASS_VALUES["realtime"] and not self.admin:
            value = PRIORITY_CLASS_VALUES["high"]  # succeeds, silently downgraded
        self._p(pid).priority_class = value

    def get_thread_priority(self, tid: int) -> int:
        return self._t(tid).priority

    def set_thread_priority(self, tid: int, value: int) -> None:
        self._t(tid).priority = value

    def get_thread_affinity(self, tid: int) -> int:
        return self._t(tid).affinity

    def set_thread_affinity(self, tid: int, mask: int) -> None:
        self._t(tid).affinity = mask

    def process_affinity(self, pid: int) -> tuple[int, int]:
        return self._p(pid).affinity, 0b11

    def process_creation_time(self, pid: int) -> int:
        return self._p(pid).created

    def thread_creation_time(self, tid: int) -> int:
        return self._t(tid).created

    def thread_process_id(self, tid: int) -> int:
        return next(pid for pid, p in self.procs.items() if tid in p.threads) \
            if any(tid in p.threads for p in self.procs.values()) else int(
                self._t(tid).created)

    def image_path(self, pid: int) -> str:
        self._p(pid)
        return "C:\\Python311\\python.exe"

    def open_waitable(self, pid: int) -> int:
        self._p(pid)
        h = 100 + len(self.handles)
        self.handles[h] = pid
        return h

    def has_exited(self, handle: int) -> bool:
        return self.handles.get(handle) not in self.procs

    def close(self, handle: int) -> None:
        self.handles.pop(handle, None)

    def is_admin(self) -> bool:
        return self.admin

    def get_working_set(self) -> tuple[int, int]:
        return self.ws

    def set_working_set(self, minimum: int, maximum: int) -> None:
        if self.ws_refused:
            raise Win32Error(ERROR_WORKING_SET_QUOTA, "SetProcessWorkingSetSizeEx")
        self.ws_calls.append((minimum, maximum))
        self.ws = (minimum, maximum)

    def virtual_alloc(self, size: int) -> int:
        buf = ctypes.create_string_buffer(size)
        addr = ctypes.addressof(buf)
        self.buffers[addr] = buf
        return addr

    def virtual_free(self, address: int) -> None:
        del self.buffers[address]

    def virtual_lock(self, address: int, size: int) -> None:
        if sum(self.locked.values()) + size > self.ws[0] - 8 * PAGE:
            raise Win32Error(ERROR_WORKING_SET_QUOTA, f"VirtualLock of {size} bytes")
        self.locked[address] = size

    def virtual_unlock(self, address: int, size: int) -> None:
        if address not in self.locked:
            raise Win32Error(ERROR_NOT_LOCKED, "VirtualUnlock")
        del self.locked[address]


class FakeTable(ProcessTable):
    """Threads from the fake instead of psutil."""

    def threads(self, pid: int) -> list[int]:
        api = self.api
        assert isinstance(api, FakeWin32)
        if pid not in api.procs:
            raise ProcessGone(pid)
        return list(api.procs[pid].threads)


def _backend(admin: bool = False) -> tuple[WindowsBackend, FakeWin32]:
    api = FakeWin32(admin=admin)
    api.add(500, [504, 508, 512])
    return WindowsBackend(api, FakeTable(api)), api


def test_realtime_for_a_non_administrator_is_refused_and_the_old_class_put_back() -> None:
    b, api = _backend(admin=False)
    with pytest.raises(PermissionError, match=r"set priority class high") as e:
        b.set_knob(500, "priority_class", "realtime")
    assert "administrator" in str(e.value)
    assert api.procs[500].priority_class == PRIORITY_CLASS_VALUES["normal"]
    # An administrator gets what it asked for.
    b2, _api2 = _backend(admin=True)
    b2.set_knob(500, "priority_class", "realtime")
    assert b2.get_knob(500, "priority_class") == "realtime"


def test_the_engine_journals_a_downgraded_realtime_as_failed_and_changes_nothing(
        tmp_path: Path) -> None:
    b, api = _backend(admin=False)
    rs = load_rules(rules_dir=None)
    parse_rules_text('[classes.rt]\npriority_class = "realtime"\nthread_priority = "highest"\n',
                     "rt.toml", rs)
    validate(rs)
    j = Journal(str(tmp_path), validate=make_validator("ainative"))
    eng = Engine(b, j, rs.classes)
    from ainative.core.classifier import Decision

    d = Decision(TaskId(500, api.procs[500].created), "python", "rt", [], [])
    m = eng.manage(d)
    assert m is not None
    assert "priority_class" in m.errors and "HIGH" in m.errors["priority_class"].upper()
    assert api.procs[500].priority_class == PRIORITY_CLASS_VALUES["normal"]
    # The thread priority went on every thread, the main one through the pid.
    assert {t.priority for t in api.procs[500].threads.values()} == {2}
    assert {c.knob for c in j.in_force()} == {"thread_priority"}
    rep = eng.restore_all()
    assert rep.failed == 0 and rep.skipped_changed == 0, rep.details
    assert {t.priority for t in api.procs[500].threads.values()} == {0}
    assert not j.in_force()


def test_the_pid_stands_for_the_first_created_thread_and_threads_are_checked() -> None:
    b, api = _backend()
    assert b.list_threads(500) == [500, 508, 512]
    b.set_knob(500, "thread_priority", 1)
    assert api.procs[500].threads[504].priority == 1  # the oldest thread
    # priority_class through another thread is a no-op (written once, via the pid).
    b.set_knob(508, "priority_class", "below_normal")
    assert b.get_knob(508, "priority_class") == "normal"
    b.set_knob(500, "priority_class", "below_normal")
    assert b.get_knob(508, "priority_class") == "below_normal"
    with pytest.raises(ValueError, match="outside process 500's affinity"):
        b.set_knob(508, "affinity", [0, 5])
    b.set_knob(508, "affinity", [1])
    assert b.get_knob(508, "affinity") == [1]
    assert b.task_id(500, 508) == TaskId(508, 2001)
    with pytest.raises(ProcessGone):
        b.task_id(500, 999)
    with pytest.raises(ValueError, match="does not exist on Windows"):
        b.get_knob(500, "nice")


def test_the_lock_raises_the_working_set_first_and_puts_it_back() -> None:
    from ainative.mem.arena_windows import WindowsArena

    api = FakeWin32()
    before = api.ws
    size = 8 << 20  # far above the default 200 KiB minimum working set
    arena = WindowsArena(size, True, api=api)
    assert arena.info.locked and arena.info.lock_reason == "VirtualLock"
    assert api.ws_calls[0][0] >= before[0] + size
    arena.close()
    assert api.ws == before and not api.locked and not api.buffers
    arena.close()  # twice is fine (a second VirtualUnlock would be error 158)


def test_a_quota_refusal_is_lock_failed_with_the_fix_and_nothing_is_left() -> None:
    from ainative.mem.arena import LockFailed
    from ainative.mem.arena_windows import WindowsArena

    api = FakeWin32()
    api.ws_refused = True
    with pytest.raises(LockFailed, match="working set"):
        WindowsArena(8 << 20, True, api=api)
    assert not api.buffers and not api.locked
    # The working set was raised, yet VirtualLock still hits the quota (other locks).
    api = FakeWin32()
    api.locked[1] = 1 << 30
    with pytest.raises(LockFailed, match="1453") as e:
        WindowsArena(8 << 20, True, api=api)
    assert "lock='try'" in str(e.value)
    assert api.ws == (200 << 10, 1380 << 10) and not api.buffers
    # Unlocked when not asked to lock.
    arena = WindowsArena(1 << 20, False, api=api)
    assert not arena.info.locked and arena.info.lock_reason == "not requested"
    arena.close()


def test_windows_runtime_signatures_and_names() -> None:
    found = match_libraries([
        r"C:\Py\Lib\site-packages\onnxruntime\capi\onnxruntime_pybind11_state.pyd",
        r"C:\Windows\System32\NVCUDA.DLL", r"C:\x\cudart64_12.dll", r"C:\x\DirectML.dll",
        r"C:\x\torch\lib\torch_cpu.dll", r"C:\x\ggml-base.dll", r"C:\x\llama.dll",
        r"C:\x\openvino.dll", r"C:\Windows\System32\kernel32.dll"])
    assert set(found) == {"onnxruntime", "cuda-driver", "cuda-runtime", "directml",
                          "pytorch", "ggml/llama.cpp", "openvino"}
    assert match_libraries([r"C:\x\onnxruntime.dll"]) == {"onnxruntime": r"C:\x\onnxruntime.dll"}
    assert comm_of(r"C:\bin\llama-server.exe") == "llama-server"
    assert uid_of("NT AUTHORITY\\SYSTEM") == 0
    assert uid_of("VM\\alice") == uid_of("vm\\ALICE") != 0
