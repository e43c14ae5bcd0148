"""An in-memory Backend for unit tests of the engine and the supervisor without root.

It models what the core relies on from a real kernel: processes with threads that
inherit every knob from their creator, PID reuse (a new start time, optionally within
the same tick: the same start time), pidfds that notice an exit, cgroup membership per
hierarchy, and permission errors. Tests that need the real kernel live in tests/linux
and tests/daemon; this one exists so that policy (apply, override, undo, inheritance,
crash replay) is checked quickly and exhaustively.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from ainative.platform.base import ProcessGone, ProcessInfo, TaskId

DEFAULTS: dict[str, Any] = {"nice": 0, "policy": [0, 0], "ioprio": [0, 4], "slice": 0,
                            "affinity": [0, 1]}
ROOT_CG = {"cpu": "/"}


@dataclass
class FakeThread:
    tid: int
    start: int
    knobs: dict[str, Any] = field(default_factory=lambda: copy.deepcopy(DEFAULTS))


@dataclass
class FakeProc:
    pid: int
    start: int
    ppid: int
    comm: str
    uid: int = 0
    exe: str | None = None
    cmdline: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    maps: list[str] = field(default_factory=list)
    cgroup: dict[str, str] = field(default_factory=lambda: dict(ROOT_CG))
    threads: dict[int, FakeThread] = field(default_factory=dict)
    alive: bool = True
    cpu: float = 0.0  # CPU seconds used so far (tests advance it to make a process busy)
    listening: list[str] = field(default_factory=list)  # e.g. ["unix /run/x.sock"]
    serial: int = 0  # which process object this is: a pidfd refers to one object


class FakeBackend:
    name = "fake"

    def __init__(self, cgroup_root: str = "ainative") -> None:
        self.procs: dict[int, FakeProc] = {}
        self.clock = 1000
        self.next_pid = 100
        self.cgroup_root = cgroup_root
        self.groups: dict[str, dict[str, Any]] = {}  # group path -> settings
        self.pins: dict[int, tuple[TaskId, int]] = {}
        self._serial = 0
        self._next_pin = 3
        self.writes: list[tuple[int, str, Any]] = []
        self.deny: set[tuple[int, str]] = set()  # (tid, knob) whose writes are refused
        self.pidfd = True
        self.peers: dict[int, set[int]] = {}  # server pid -> its local clients' pids
        self.missing: dict[str, str] = {}  # knob -> why, as missing_knobs() reports

    # --- test helpers: make the world ---

    def spawn(self, comm: str = "proc", *, ppid: int = 1, threads: int = 1, uid: int = 0,
              pid: int | None = None, same_tick: bool = False, **kw: Any) -> FakeProc:
        """A new process; it inherits its parent's knobs and cgroup like fork does."""
        if pid is None:
            pid = self.next_pid
            self.next_pid += 10
        if not same_tick:
            self.clock += 1
        parent = self.procs.get(ppid)
        self._serial += 1
        p = FakeProc(pid, self.clock, ppid, comm, uid=uid, serial=self._serial, **kw)
        base = (copy.deepcopy(parent.threads[ppid].knobs)
                if parent is not None and parent.alive else copy.deepcopy(DEFAULTS))
        if parent is not None and parent.alive and "cgroup" not in kw:
            p.cgroup = dict(parent.cgroup)
        p.threads[pid] = FakeThread(pid, self.clock, base)
        self.procs[pid] = p
        for _ in range(threads - 1):
            self.add_thread(pid)
        return p

    def add_thread(self, pid: int) -> int:
        p = self.procs[pid]
        tid = max(max(p.threads) + 1, pid + 1)
        p.threads[tid] = FakeThread(tid, self.clock, copy.deepcopy(p.threads[pid].knobs))
        return tid

    def exit(self, pid: int) -> None:
        self.procs[pid].alive = False
        del self.procs[pid]

    def value(self, pid: int, knob: str, tid: int | None = None) -> Any:
        if knob == "cgroup":
            return dict(self.procs[pid].cgroup)
        return self.procs[pid].threads[tid or pid].knobs[knob]

    # --- Backend ---

    def _proc(self, pid: int) -> FakeProc:
        p = self.procs.get(pid)
        if p is None or not p.alive:
            raise ProcessGone(pid)
        return p

    def _thread(self, tid: int) -> tuple[FakeProc, FakeThread]:
        for p in self.procs.values():
            if tid in p.threads:
                return p, p.threads[tid]
        raise ProcessGone(tid)

    def list_pids(self) -> list[int]:
        return sorted(self.procs)

    def read_process(self, pid: int) -> ProcessInfo:
        p = self._proc(pid)
        return ProcessInfo(TaskId(pid, p.start), p.ppid, p.comm, p.exe, list(p.cmdline),
                           p.uid, None, dict(p.cgroup),
                           policy=int(p.threads[pid].knobs["policy"][0]),
                           num_threads=len(p.threads))

    def process_name(self, pid: int) -> str:
        return self._proc(pid).comm

    def task_id(self, pid: int, tid: int | None = None) -> TaskId:
        p = self._proc(pid)
        t = p.threads.get(tid if tid is not None else pid)
        if t is None:
            raise ProcessGone(tid)
        return TaskId(t.tid, t.start)

    def list_threads(self, pid: int) -> list[int]:
        return sorted(self._proc(pid).threads)

    def mapped_files(self, pid: int) -> list[str]:
        return list(self._proc(pid).maps)

    def environ_value(self, pid: int, name: str) -> str | None:
        return self._proc(pid).env.get(name)

    def cpu_times(self, pid: int) -> tuple[float, float]:
        return self._proc(pid).cpu, 0.0

    def listening_sockets(self, pid: int) -> list[str]:
        return sorted(self._proc(pid).listening)

    def parent_pid(self, pid: int) -> int:
        return self._proc(pid).ppid

    def is_descendant(self, pid: int, ancestor: int) -> bool:
        cur = pid
        for _ in range(64):
            p = self.procs.get(cur)
            if p is None:
                return False
            cur = p.ppid
            if cur == ancestor:
                return True
        return False

    def get_knob(self, tid: int, knob: str) -> Any:
        if knob == "cgroup":
            return dict(self._proc(tid).cgroup)
        _p, t = self._thread(tid)
        return copy.deepcopy(t.knobs[knob])

    def set_knob(self, tid: int, knob: str, value: Any) -> None:
        if (tid, knob) in self.deny:
            raise PermissionError(f"EPERM: {knob} of {tid}")
        self.writes.append((tid, knob, copy.deepcopy(value)))
        if knob == "cgroup":
            self._proc(tid).cgroup.update(value)
            return
        _p, t = self._thread(tid)
        t.knobs[knob] = copy.deepcopy(value)

    def cgroup_prepare(self, group: str, settings: dict[str, Any]) -> dict[str, str]:
        path = self.cgroup_path(group)
        self.groups[path] = dict(settings)
        return {"cpu": path}

    def cgroup_path(self, group: str) -> str:
        return f"/{self.cgroup_root}.{group}"

    def cgroup_members(self) -> dict[int, dict[str, str]]:
        return {pid: dict(p.cgroup) for pid, p in self.procs.items()
                if any(v in self.groups for v in p.cgroup.values())}

    def cgroup_root_path(self) -> dict[str, str]:
        return dict(ROOT_CG)

    def cgroup_dirs(self, group: str) -> dict[str, str]:
        path = self.cgroup_path(group)
        return {"cpu": path} if path in self.groups else {}

    def cleanup(self) -> dict[str, str]:
        used = {v for p in self.procs.values() for v in p.cgroup.values()}
        for g in [g for g in self.groups if g not in used]:
            del self.groups[g]
        return {g: "not empty" for g in self.groups}

    def run_queue_wait_ns(self, pid: int, tid: int | None = None) -> int:
        self._proc(pid)
        return 0

    def rss_bytes(self, pid: int) -> int:
        self._proc(pid)
        return 0

    def rt_throttled(self) -> bool:
        return True

    def local_peers(self, servers: set[int], candidates: set[int]) -> set[int]:
        return {c for s in servers for c in self.peers.get(s, set())} & candidates

    def missing_knobs(self) -> dict[str, str]:
        return dict(self.missing)

    def pin(self, ident: TaskId) -> int | None:
        if not self.pidfd:
            return None
        if self.task_id(ident.pid) != ident:
            raise ProcessGone(ident.pid)
        fd = self._next_pin
        self._next_pin += 1
        self.pins[fd] = (ident, self.procs[ident.pid].serial)
        return fd

    def pinned_alive(self, pin: int) -> bool:
        ident, serial = self.pins[pin]
        p = self.procs.get(ident.pid)
        # A pidfd refers to one process object: a new one with the same pid (even the
        # same start time) is not it.
        return p is not None and p.alive and p.serial == serial

    def unpin(self, pin: int) -> None:
        self.pins.pop(pin, None)

    def reuse_pid(self, pid: int, comm: str = "reused") -> FakeProc:
        """The process with this pid exits and another one gets the pid in the same clock
        tick: same (pid, start time), a different process."""
        start = self.procs[pid].start
        self.exit(pid)
        self._serial += 1
        p = FakeProc(pid, start, 1, comm, serial=self._serial)
        p.threads[pid] = FakeThread(pid, start)
        self.procs[pid] = p
        return p
