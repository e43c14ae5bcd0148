"""The Linux backend: the core's Backend interface over procfs, knobs and cgroups."""

from __future__ import annotations

from typing import Any

from ainative.platform.base import ProcessInfo, TaskId
from ainative.platform.linux import knobs, procfs
from ainative.platform.linux.cgroups import CgroupManager, CgroupSettings, group_path


class LinuxBackend:
    name = "linux"

    def __init__(self, cgroup_root: str = "ainative",
                 cgroup_mount: str = "/sys/fs/cgroup") -> None:
        self.cgroup_root = cgroup_root
        self.cgroup_mount = cgroup_mount
        self._cg: CgroupManager | None = None
        self._cg_error: str | None = None

    @property
    def cgroups(self) -> CgroupManager:
        if self._cg is None:
            if self._cg_error is not None:
                raise OSError(self._cg_error)
            try:
                self._cg = CgroupManager(self.cgroup_root, self.cgroup_mount)
            except (OSError, ValueError, NotImplementedError) as e:
                self._cg_error = f"cgroups unavailable: {e}"
                raise OSError(self._cg_error) from e
        return self._cg

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

    def is_descendant(self, pid: int, ancestor: int) -> bool:
        return procfs.is_descendant(pid, ancestor)

    # --- knobs ---

    def get_knob(self, tid: int, knob: str) -> Any:
        if knob == "nice":
            return knobs.get_nice(tid)
        if knob == "policy":
            return list(knobs.get_policy(tid))
        if knob == "ioprio":
            return list(knobs.get_ioprio(tid))
        if knob == "affinity":
            return sorted(knobs.get_affinity(tid))
        if knob == "cgroup":
            return self.cgroups.current(tid)
        raise ValueError(f"unknown knob {knob!r}")

    def set_knob(self, tid: int, knob: str, value: Any) -> None:
        if knob == "nice":
            knobs.set_nice(tid, int(value))
        elif knob == "policy":
            knobs.set_policy(tid, int(value[0]), int(value[1]))
        elif knob == "ioprio":
            knobs.set_ioprio(tid, int(value[0]), int(value[1]))
        elif knob == "affinity":
            knobs.set_affinity(tid, frozenset(int(c) for c in value))
        elif knob == "cgroup":
            self.cgroups.move_back(tid, dict(value))
        else:
            raise ValueError(f"unknown knob {knob!r}")

    def cgroup_prepare(self, group: str, settings: dict[str, Any]) -> dict[str, str]:
        cg = self.cgroups
        made = cg.ensure_group(group, CgroupSettings(
            cpu_weight=settings.get("cpu_weight"), cpu_idle=settings.get("cpu_idle"),
            cpuset_cpus=settings.get("cpuset"), memory_low=settings.get("memory_low")))
        # The paths as /proc/PID/cgroup will show them once a process is inside.
        return {k: cg.group_path(group) for k in made}

    def cgroup_path(self, group: str) -> str:
        return group_path(self.cgroup_root, group)

    def cleanup(self) -> None:
        if self._cg is not None:
            self._cg.remove_all()

    def rt_throttled(self) -> bool:
        try:
            with open("/proc/sys/kernel/sched_rt_runtime_us") as fh:
                return int(fh.read().strip()) >= 0
        except (OSError, ValueError):
            return False
