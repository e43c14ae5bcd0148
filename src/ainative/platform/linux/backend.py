"""The Linux backend: the core's Backend interface over procfs, knobs and cgroups.

Identity across PID reuse: a TaskId's start time has clock-tick resolution (10 ms), so a
PID freed and reused within one tick looks the same. ``pin`` closes that gap with a pidfd:
opened first, then checked against the start time, it names exactly one process, and
while that process has not exited (``pinned_alive``) its PID cannot be given to another.
"""

from __future__ import annotations

import errno
import os
import select
from collections.abc import Callable
from typing import Any

from ainative import log
from ainative.platform.base import ProcessGone, ProcessInfo, TaskId
from ainative.platform.linux import knobs, peers, procfs
from ainative.platform.linux.cgroups import CgroupManager, CgroupSettings, group_path

# pidfd_open's flag for a thread that is not a thread-group leader (Linux 6.9; = O_EXCL).
_PIDFD_THREAD = os.O_EXCL


class LinuxBackend:
    name = "linux"

    def __init__(self, cgroup_root: str = "ainative",
                 cgroup_mount: str = "/sys/fs/cgroup") -> None:
        self.cgroup_root = cgroup_root
        self.cgroup_mount = cgroup_mount
        self._cg: CgroupManager | None = None
        self._cg_error: str | None = None
        self._cg_errno: int | None = None
        self._knobs = self.knob_table()

    @property
    def cgroups(self) -> CgroupManager:
        """The cgroup manager, made on first use; OSError (one line, with the errno of the
        first failure) when cgroups cannot be used here."""
        if self._cg is None:
            if self._cg_error is not None:
                raise self._unavailable()
            try:
                self._cg = CgroupManager(self.cgroup_root, self.cgroup_mount)
            except (OSError, ValueError, NotImplementedError) as e:
                why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
                self._cg_error = f"cgroups unavailable: {why}"
                self._cg_errno = e.errno if isinstance(e, OSError) else None
                raise self._unavailable() from e
        return self._cg

    def _unavailable(self) -> OSError:
        # One argument keeps str() a plain sentence; errno still says which failure.
        err = OSError(self._cg_error)
        err.errno = self._cg_errno or errno.ENOENT
        return err

    # --- processes ---

    def list_pids(self) -> list[int]:
        return procfs.list_pids()

    def read_process(self, pid: int) -> ProcessInfo:
        return procfs.read_process(pid)

    def process_name(self, pid: int) -> str:
        return procfs.process_name(pid)

    def task_id(self, pid: int, tid: int | None = None) -> TaskId:
        return procfs.task_id(pid, tid)

    def list_threads(self, pid: int) -> list[int]:
        return procfs.list_threads(pid)

    def mapped_files(self, pid: int) -> list[str]:
        return procfs.mapped_files(pid)

    def environ_value(self, pid: int, name: str) -> str | None:
        return procfs.environ_value(pid, name)

    def cpu_times(self, pid: int) -> tuple[float, float]:
        return procfs.cpu_times(pid)

    def parent_pid(self, pid: int) -> int:
        return procfs.parent_pid(pid)

    def is_descendant(self, pid: int, ancestor: int) -> bool:
        return procfs.is_descendant(pid, ancestor)

    def run_queue_wait_ns(self, pid: int, tid: int | None = None) -> int:
        return procfs.read_schedstat(pid, tid)[1]

    def rss_bytes(self, pid: int) -> int:
        return procfs.rss_bytes(pid)

    def listening_sockets(self, pid: int) -> list[str]:
        return procfs.listening_sockets(pid)

    # --- identity that survives PID reuse ---

    def pin(self, ident: TaskId) -> int | None:
        try:
            try:
                fd = os.pidfd_open(ident.pid)
            except OSError as e:
                # A thread other than the leader: EINVAL before 6.9, ENOENT since; only
                # 6.9+ can pin one (PIDFD_THREAD).
                if e.errno not in (errno.EINVAL, errno.ENOENT):
                    raise
                fd = os.pidfd_open(ident.pid, _PIDFD_THREAD)
        except ProcessLookupError as e:
            raise ProcessGone(f"process {ident.pid} has exited") from e
        except (AttributeError, OSError) as e:
            if isinstance(e, AttributeError) or e.errno in (errno.ENOSYS, errno.EINVAL):
                return None  # no pidfds here: callers fall back to start-time identity
            raise
        try:
            # Opened first, checked second: if the start time still matches now, the fd
            # names the process ident meant (unless it had already exited, checked next).
            now = procfs.task_id(ident.pid)
            if now != ident:
                raise ProcessGone(f"pid {ident.pid} now names another process")
            if not self.pinned_alive(fd):
                raise ProcessGone(f"process {ident.pid} has exited")
        except BaseException:
            os.close(fd)
            raise
        return fd

    def pinned_alive(self, pin: int) -> bool:
        p = select.poll()
        p.register(pin, select.POLLIN)
        # Readable once the process has exited; POLLNVAL for a closed fd: not alive either.
        return not p.poll(0)

    def unpin(self, pin: int) -> None:
        try:
            os.close(pin)
        except OSError:
            pass

    # --- knobs ---

    def _cgroup_set(self, tid: int, value: Any) -> None:
        if not isinstance(value, dict):
            raise ValueError(f"cgroup value must be {{hierarchy: path}}, not "
                             f"{type(value).__name__}")
        self.cgroups.move_back(tid, dict(value))

    def knob_table(self) -> dict[str, tuple[Callable[[int], Any], Callable[[int, Any], None]]]:
        """Each knob's (getter, setter) here, keyed like core.knobs.KNOBS; a test checks
        that every knob the core knows has both."""
        return {
            "nice": (knobs.get_nice, lambda t, v: knobs.set_nice(t, int(v))),
            "policy": (lambda t: list(knobs.get_policy(t)),
                       lambda t, v: knobs.set_policy(t, int(v[0]), int(v[1]))),
            "ioprio": (lambda t: list(knobs.get_ioprio(t)),
                       lambda t, v: knobs.set_ioprio(t, int(v[0]), int(v[1]))),
            "slice": (knobs.get_slice, lambda t, v: knobs.set_slice(t, int(v))),
            "affinity": (lambda t: sorted(knobs.get_affinity(t)),
                         lambda t, v: knobs.set_affinity(t, frozenset(int(c) for c in v))),
            "cgroup": (lambda t: self.cgroups.current(t), self._cgroup_set),
        }

    def get_knob(self, tid: int, knob: str) -> Any:
        entry = self._knobs.get(knob)
        if entry is None:
            raise ValueError(f"unknown knob {knob!r}")
        return entry[0](tid)

    def set_knob(self, tid: int, knob: str, value: Any) -> None:
        entry = self._knobs.get(knob)
        if entry is None:
            raise ValueError(f"unknown knob {knob!r}")
        entry[1](tid, value)

    # --- cgroups ---

    def cgroup_prepare(self, group: str, settings: dict[str, Any]) -> dict[str, str]:
        cg = self.cgroups
        made = cg.ensure_group(group, CgroupSettings(
            cpu_weight=settings.get("cpu_weight"), cpu_idle=settings.get("cpu_idle"),
            cpuset_cpus=settings.get("cpuset"), memory_low=settings.get("memory_low")))
        # The paths as /proc/PID/cgroup will show them once a process is inside.
        return {k: cg.group_path(group) for k in made}

    def cgroup_path(self, group: str) -> str:
        return group_path(self.cgroup_root, group)

    def cgroup_dirs(self, group: str) -> dict[str, str]:
        try:
            return self.cgroups.group_dirs(group)
        except OSError:
            return {}

    def cgroup_members(self) -> dict[int, dict[str, str]]:
        try:
            return self.cgroups.owned_members()
        except OSError:
            return {}

    def cgroup_root_path(self) -> dict[str, str]:
        try:
            return self.cgroups.root_paths()
        except OSError:
            return {}

    def cleanup(self) -> dict[str, str]:
        try:
            cg = self.cgroups
        except OSError:
            return {}  # no cgroups here: nothing can have been created
        failed = cg.remove_all()
        for path, why in failed.items():
            log.warn("cgroup_not_removed", path=path, reason=why)
        return failed

    def local_peers(self, servers: set[int], candidates: set[int]) -> set[int]:
        return peers.local_peers(servers, candidates)

    def missing_knobs(self) -> dict[str, str]:
        try:
            if knobs.default_slice_ns():
                return {}
            why = "this kernel has no custom EEVDF slices (Linux 6.12+)"
        except OSError as e:
            why = f"sched_getattr failed: {e}"
        return {"slice": why}

    def rt_throttled(self) -> bool:
        try:
            with open("/proc/sys/kernel/sched_rt_runtime_us") as fh:
                return int(fh.read().strip()) >= 0
        except (OSError, ValueError):
            return False
