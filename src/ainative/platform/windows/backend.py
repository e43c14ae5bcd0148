"""The Windows backend: the core's Backend interface over psutil and Win32.

Threads: the core names a process's main thread by its pid (Linux's convention, which
the engine relies on: the main thread's values are the baseline). A Windows thread id
never equals a pid, so ``list_threads`` gives the pid for the process's first-created
thread and real ids for the others, and every knob call resolves the pid back to that
thread (knobs.py).

Identity across pid reuse: TaskId(pid, creation time) from GetProcessTimes, 100 ns
resolution; ``pin`` holds a process handle (SYNCHRONIZE), which keeps the pid from being
reused until it is closed, and answers "exited?" with WaitForSingleObject(handle, 0).

No cgroups on Windows: the engine leaves out the cgroup knob (core.knobs.knobs_for), and
the group methods here report none.
"""

from __future__ import annotations

import errno
from typing import Any

from ainative.platform.base import ProcessGone, ProcessInfo, TaskId
from ainative.platform.windows.knobs import Getter, Setter, WindowsKnobs
from ainative.platform.windows.procs import ProcessTable
from ainative.platform.windows.win32 import Win32


class WindowsBackend:
    name = "windows"

    def __init__(self, api: Win32 | None = None, procs: ProcessTable | None = None) -> None:
        if api is None:
            from ainative.platform.windows.win32 import Kernel32

            api = Kernel32()
        self.api = api
        self.procs = procs if procs is not None else ProcessTable(api)
        # pid -> (its creation time, its first thread's id): the thread the pid stands for.
        self._main: dict[int, tuple[int, int]] = {}
        self._knobs = WindowsKnobs(api, self._thread_of, self._is_process)
        self._table = self._knobs.table()

    # --- the pid-for-main-thread convention ---

    def _is_process(self, n: int) -> bool:
        try:
            self.api.process_creation_time(n)
            return True
        except (ProcessGone, OSError):
            return False

    def main_thread(self, pid: int) -> int:
        """The id of pid's first-created thread (cached while the process lives)."""
        born = self.api.process_creation_time(pid)
        hit = self._main.get(pid)
        if hit is not None and hit[0] == born:
            return hit[1]
        best: tuple[int, int] | None = None
        for tid in self.procs.threads(pid):
            try:
                t = self.api.thread_creation_time(tid)
            except (ProcessGone, OSError):
                continue
            if best is None or (t, tid) < best:
                best = (t, tid)
        if best is None:
            raise ProcessGone(f"process {pid} has no threads left")
        if len(self._main) > 4096:
            self._main.clear()
        self._main[pid] = (born, best[1])
        return best[1]

    def _thread_of(self, n: int) -> int:
        return self.main_thread(n) if self._is_process(n) else n

    # --- processes ---

    def list_pids(self) -> list[int]:
        return self.procs.list_pids()

    def read_process(self, pid: int) -> ProcessInfo:
        return self.procs.read_process(pid)

    def process_name(self, pid: int) -> str:
        return self.procs.process_name(pid)

    def task_id(self, pid: int, tid: int | None = None) -> TaskId:
        if tid is None or tid == pid:
            return TaskId(pid, self.api.process_creation_time(pid))
        owner = self.api.thread_process_id(tid)
        if owner != pid:
            raise ProcessGone(f"thread {tid} is not in process {pid}")
        return TaskId(tid, self.api.thread_creation_time(tid))

    def list_threads(self, pid: int) -> list[int]:
        main = self.main_thread(pid)
        return [pid] + [t for t in self.procs.threads(pid) if t != main]

    def mapped_files(self, pid: int) -> list[str]:
        return self.procs.modules(pid)

    def environ_value(self, pid: int, name: str) -> str | None:
        return self.procs.environ_value(pid, name)

    def cpu_times(self, pid: int) -> tuple[float, float]:
        return self.procs.cpu_times(pid)

    def parent_pid(self, pid: int) -> int:
        return self.procs.parent_pid(pid)

    def is_descendant(self, pid: int, ancestor: int) -> bool:
        return self.procs.is_descendant(pid, ancestor)

    def run_queue_wait_ns(self, pid: int, tid: int | None = None) -> int:
        raise OSError(errno.ENOSYS, "Windows keeps no per-thread run-queue wait that user "
                      "space can read (only a kernel ETW session's CSwitch ReadyTime)")

    def rss_bytes(self, pid: int) -> int:
        return self.procs.rss_bytes(pid)

    def listening_sockets(self, pid: int) -> list[str]:
        return self.procs.listening_sockets(pid)

    # --- identity that survives pid reuse ---

    def pin(self, ident: TaskId) -> int | None:
        handle = self.api.open_waitable(ident.pid)
        try:
            if self.task_id(ident.pid) != ident:
                raise ProcessGone(f"pid {ident.pid} now names another process")
            if self.api.has_exited(handle):
                raise ProcessGone(f"process {ident.pid} has exited")
        except BaseException:
            self.api.close(handle)
            raise
        return handle

    def pinned_alive(self, pin: int) -> bool:
        return not self.api.has_exited(pin)

    def unpin(self, pin: int) -> None:
        try:
            self.api.close(pin)
        except OSError:
            pass

    # --- knobs ---

    def knob_table(self) -> dict[str, tuple[Getter, Setter]]:
        """Each knob's (getter, setter), keyed like core.knobs.KNOBS; a test checks that
        this is exactly core.knobs.knobs_for("windows")."""
        return dict(self._table)

    def get_knob(self, tid: int, knob: str) -> Any:
        entry = self._table.get(knob)
        if entry is None:
            raise ValueError(f"knob {knob!r} does not exist on Windows")
        return entry[0](tid)

    def set_knob(self, tid: int, knob: str, value: Any) -> None:
        entry = self._table.get(knob)
        if entry is None:
            raise ValueError(f"knob {knob!r} does not exist on Windows")
        entry[1](tid, value)

    # --- cgroups: none on Windows ---

    def cgroup_prepare(self, group: str, settings: dict[str, Any]) -> dict[str, str]:
        raise NotImplementedError("Windows has no cgroups")

    def cgroup_path(self, group: str) -> str:
        return ""

    def cgroup_dirs(self, group: str) -> dict[str, str]:
        return {}

    def cgroup_members(self) -> dict[int, dict[str, str]]:
        return {}

    def cgroup_root_path(self) -> dict[str, str]:
        return {}

    def cleanup(self) -> dict[str, str]:
        return {}

    def local_peers(self, servers: set[int], candidates: set[int]) -> set[int]:
        # The closed loop's fence and weight are Linux mechanisms; on Windows nothing
        # is demoted by it, so no client needs sparing.
        return set()

    def missing_knobs(self) -> dict[str, str]:
        return {}  # knobs_for already leaves out the Linux knobs

    def rt_throttled(self) -> bool:
        # Nothing throttles a REALTIME-class thread on Windows. (The engine asks only
        # about Linux realtime policies, which this backend does not set.)
        return False
