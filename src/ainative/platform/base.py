"""Types shared by the core and every platform backend: identities, process snapshots,
process events and the event-source interface, mechanism reports, and the exceptions a
backend raises. Nothing here touches the operating system, so the core can import it on
any platform.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

# Scheduling policies, numbered as Linux numbers them (os.SCHED_*).
SCHED_OTHER = 0
SCHED_FIFO = 1
SCHED_RR = 2
SCHED_BATCH = 3
SCHED_IDLE = 5

POLICY_NAMES = {
    SCHED_OTHER: "other",
    SCHED_FIFO: "fifo",
    SCHED_RR: "rr",
    SCHED_BATCH: "batch",
    SCHED_IDLE: "idle",
}
POLICY_BY_NAME = {v: k for k, v in POLICY_NAMES.items()}

# I/O priority classes (ioprio_set(2)).
IOPRIO_CLASS_NONE = 0
IOPRIO_CLASS_RT = 1
IOPRIO_CLASS_BE = 2
IOPRIO_CLASS_IDLE = 3

IOPRIO_CLASS_NAMES = {
    IOPRIO_CLASS_NONE: "none",
    IOPRIO_CLASS_RT: "rt",
    IOPRIO_CLASS_BE: "be",
    IOPRIO_CLASS_IDLE: "idle",
}
IOPRIO_CLASS_BY_NAME = {v: k for k, v in IOPRIO_CLASS_NAMES.items()}


@dataclass(frozen=True, order=True)
class TaskId:
    """A process or thread identified so that PID reuse cannot be mistaken for it.

    ``start_time`` is field 22 of /proc/PID/stat (clock ticks since boot); a reused
    PID has a different start time.
    """

    pid: int
    start_time: int

    def to_json(self) -> dict[str, int]:
        return {"pid": self.pid, "start_time": self.start_time}

    @classmethod
    def from_json(cls, d: dict[str, int]) -> TaskId:
        return cls(int(d["pid"]), int(d["start_time"]))


@dataclass
class ProcessInfo:
    """What discovery knows about one process at one moment."""

    ident: TaskId
    ppid: int
    comm: str
    exe: str | None
    cmdline: list[str]
    uid: int
    user: str | None
    # cgroup paths per hierarchy, as in /proc/PID/cgroup: {"0": "/a/b"} for v2,
    # {"cpu,cpuacct": "/x", ...} for v1 controllers.
    cgroups: dict[str, str] = field(default_factory=dict)
    is_kernel_thread: bool = False
    policy: int = SCHED_OTHER
    num_threads: int = 1

    @property
    def pid(self) -> int:
        return self.ident.pid

    @property
    def cgroup_path(self) -> str:
        """One path to match rules against: the v2 path if there is one, else cpu's."""
        if "0" in self.cgroups:
            return self.cgroups["0"]
        for key, path in self.cgroups.items():
            if "cpu" in key.split(","):
                return path
        return next(iter(self.cgroups.values()), "/")


class ProcessGone(Exception):
    """The process or thread exited (or its PID now names another one)."""


class MechanismUnavailable(Exception):
    """A kernel mechanism is not offered here (no permission, not built, not mounted)."""


@dataclass(frozen=True)
class Mechanism:
    """One kernel mechanism as the start-up probe found it: usable or not, and why."""

    name: str
    available: bool
    detail: str


EventKind = Literal["fork", "exec", "exit", "comm", "scan"]


@dataclass(frozen=True)
class ProcEvent:
    """A process event. kind "scan" carries no process: events were lost (an overrun)
    and only a rescan of every process can tell what changed."""

    kind: EventKind
    pid: int  # the thread group (process) id
    tid: int  # the thread id (== pid for the main thread)
    parent_pid: int = 0  # for fork
    timestamp_ns: int = 0  # kernel timestamp (connector) or monotonic_ns (poller)


class EventSource(Protocol):
    """Where process events come from: fileno() for select(), read() returns the events
    available now (never blocks), close() stops it.

    ``name`` says which source it is ("netlink", "poll"); ``fallback_reason`` why the
    better one could not be used (None when it is the best there is); ``overruns`` how
    many times the kernel dropped events (each one answered by a "scan" event).
    """

    name: str
    fallback_reason: str | None
    overruns: int

    def fileno(self) -> int: ...
    def read(self) -> list[ProcEvent]: ...
    def close(self) -> None: ...
