"""Process events from the kernel's netlink process connector (fork, exec, exit),
with a polling fallback where the connector is unavailable (no root, no CONFIG_PROC_EVENTS).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

EventKind = Literal["fork", "exec", "exit", "comm", "scan"]


@dataclass(frozen=True)
class ProcEvent:
    kind: EventKind
    pid: int  # the thread group (process) id
    tid: int  # the thread id (== pid for the main thread)
    parent_pid: int = 0  # for fork
    timestamp_ns: int = 0  # kernel timestamp (connector) or monotonic_ns (poller)


class ProcessEventSource:
    """Base interface: fileno() for select(), read() returns the events available now."""

    name: str = "base"

    def fileno(self) -> int:
        raise NotImplementedError

    def read(self) -> list[ProcEvent]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


def open_event_source(poll_interval: float = 0.5) -> ProcessEventSource:
    """The netlink connector when it works, else a poller; the chosen one's ``name`` says
    which ('netlink' or 'poll') and ``fallback_reason`` why."""
    raise NotImplementedError
