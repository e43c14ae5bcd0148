"""The thin interface between the core and a platform. The core never imports a
platform module directly; it is handed an object with these methods.

Knob values are plain JSON values so the journal can store them:
  nice -> int, policy -> [policy, rt_priority], ioprio -> [class, level],
  affinity -> sorted list of CPUs, cgroup -> {hierarchy: path} (process-wide).
"""

from __future__ import annotations

from typing import Any, Protocol

from ainative.platform.base import ProcessInfo, TaskId

THREAD_KNOBS = ("nice", "policy", "ioprio", "affinity")
PROCESS_KNOBS = ("cgroup",)


class Backend(Protocol):
    name: str

    def list_pids(self) -> list[int]: ...
    def read_process(self, pid: int) -> ProcessInfo: ...
    def task_id(self, pid: int, tid: int | None = None) -> TaskId: ...
    def list_threads(self, pid: int) -> list[int]: ...
    def mapped_files(self, pid: int) -> list[str]: ...
    def environ_value(self, pid: int, name: str) -> str | None: ...
    def cpu_times(self, pid: int) -> tuple[float, float]: ...
    def is_descendant(self, pid: int, ancestor: int) -> bool: ...

    def get_knob(self, tid: int, knob: str) -> Any: ...
    def set_knob(self, tid: int, knob: str, value: Any) -> None: ...

    def cgroup_prepare(self, group: str, settings: dict[str, Any]) -> dict[str, str]:
        """Create/update ainative's group for a class; return its {hierarchy: path}."""
        ...

    def cgroup_path(self, group: str) -> str:
        """Where cgroup_prepare would put a class's group (no side effects: for dry runs)."""
        ...

    def rt_throttled(self) -> bool:
        """True when the kernel throttles realtime tasks (so FIFO/RR cannot starve it)."""
        ...
