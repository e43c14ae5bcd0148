"""The thin interface between the core and a platform. The core never imports a
platform module directly; it is handed an object with these methods (through
``ainative.platform.get_platform()``).

Knob values are plain JSON values so the journal can store them; which knobs there are,
their scope and their values' shapes are in one table, ``ainative.core.knobs.KNOBS``.
"""

from __future__ import annotations

from typing import Any, Protocol

from ainative.platform.base import ProcessInfo, TaskId


class Backend(Protocol):
    name: str

    def list_pids(self) -> list[int]: ...
    def read_process(self, pid: int) -> ProcessInfo: ...
    def process_name(self, pid: int) -> str: ...
    def task_id(self, pid: int, tid: int | None = None) -> TaskId: ...
    def list_threads(self, pid: int) -> list[int]: ...
    def mapped_files(self, pid: int) -> list[str]: ...
    def environ_value(self, pid: int, name: str) -> str | None: ...
    def cpu_times(self, pid: int) -> tuple[float, float]: ...
    def parent_pid(self, pid: int) -> int: ...
    def is_descendant(self, pid: int, ancestor: int) -> bool: ...

    def run_queue_wait_ns(self, pid: int, tid: int | None = None) -> int:
        """Time the thread (the main one without tid) has waited runnable for a CPU."""
        ...

    def rss_bytes(self, pid: int) -> int:
        """Resident memory of the process, in bytes."""
        ...

    def listening_sockets(self, pid: int) -> list[str]:
        """What the process listens on, sorted, each once: "tcp 0.0.0.0:8080",
        "tcp [::1]:8080", "unix /run/x.sock", "unix @abstract" (TCP over IPv4 and IPv6,
        Unix stream and seqpacket sockets, in the process's own network namespace); []
        when none. The evidence that a process running an AI runtime serves requests
        rather than running a batch. Cheap when it holds no socket (no table is read);
        ProcessGone when it has exited, PermissionError when its fds may not be read."""
        ...

    # --- identity that survives PID reuse ---

    def pin(self, ident: TaskId) -> int | None:
        """A handle (a pidfd, O_CLOEXEC) on exactly the process ident names: opened first,
        then its start time compared with ident's. Raises ProcessGone (and keeps nothing
        open) when the pid now names another process or the process has exited. None when
        the platform has no such handles: callers fall back to start-time identity."""
        ...

    def pinned_alive(self, pin: int) -> bool:
        """True while the pinned process has not exited. Until it has, its PID cannot be
        reused, so a change made right after a True answer reaches the right process."""
        ...

    def unpin(self, pin: int) -> None:
        """Release a pin (never raises)."""
        ...

    # --- knobs ---

    def get_knob(self, tid: int, knob: str) -> Any: ...
    def set_knob(self, tid: int, knob: str, value: Any) -> None: ...

    # --- cgroups ---

    def cgroup_prepare(self, group: str, settings: dict[str, Any]) -> dict[str, str]:
        """Create/update ainative's group for a class; return its {hierarchy: path}."""
        ...

    def cgroup_path(self, group: str) -> str:
        """Where cgroup_prepare would put a class's group (no side effects: for dry runs)."""
        ...

    def cgroup_dirs(self, group: str) -> dict[str, str]:
        """{hierarchy: absolute directory} where a class's group exists now (for reports)."""
        ...

    def cgroup_members(self) -> dict[int, dict[str, str]]:
        """Every pid now inside one of this backend's own groups -> its current
        {hierarchy: path}: children that inherited a group, for putting them back."""
        ...

    def cgroup_root_path(self) -> dict[str, str]:
        """{hierarchy: "/"} for the managed hierarchies: the safe place for a process
        when nothing better is known ({} without cgroups)."""
        ...

    def cleanup(self) -> dict[str, str]:
        """Remove what the backend created for itself (empty cgroups) after a restore.
        Never raises; returns {what: why} for each thing it could not remove (logged)."""
        ...

    def rt_throttled(self) -> bool:
        """True when the kernel throttles realtime tasks (so FIFO/RR cannot starve it)."""
        ...

    def local_peers(self, servers: set[int], candidates: set[int]) -> set[int]:
        """Those of ``candidates`` connected to a socket of one of ``servers`` (pids)
        over a Unix socket or loopback TCP: a serving process's local clients."""
        ...

    def missing_knobs(self) -> dict[str, str]:
        """Knobs of this platform that this machine lacks, each with why (a kernel too
        old for custom slices); the engine leaves them out and shows why."""
        ...
