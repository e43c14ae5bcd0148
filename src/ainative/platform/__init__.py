"""Platform backends: everything that talks to one operating system lives below here.

The core (classification, journal, engine, daemon) only uses the types in ``base``, the
``Backend`` interface in ``backend``, and the one ``Platform`` that :func:`get_platform`
picks from ``sys.platform`` (as psutil picks _pslinux or _pswindows once at import):
its backend, its process-event source and its mechanism probe. No module outside this
package imports a platform's own modules (``ainative.platform.linux``), so a second
platform is a new subpackage and one more branch in get_platform.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

from ainative.platform.backend import Backend
from ainative.platform.base import EventSource, Mechanism, MechanismUnavailable

__all__ = ["Platform", "ask_own_slice", "get_platform", "own_slice_ns", "pid_alive"]


@dataclass(frozen=True)
class Platform:
    """One operating system's implementation, chosen once.

    ``open_events()`` opens the process-event source (on Linux the netlink connector, or
    the /proc poller with its ``fallback_reason``); ``probe()`` reports which kernel
    mechanisms work here, each with a sentence saying why."""

    name: str
    backend: Backend
    open_events: Callable[[], EventSource]
    probe: Callable[[], list[Mechanism]]


def get_platform(*, cgroup_root: str = "ainative", poll_interval: float = 0.5,
                 cgroup_mount: str = "/sys/fs/cgroup") -> Platform:
    """The platform this process runs on. Raises MechanismUnavailable (one line) where
    ainative has no backend."""
    if sys.platform.startswith("linux"):
        from ainative.platform.linux import linux_platform

        return linux_platform(cgroup_root=cgroup_root, poll_interval=poll_interval,
                              cgroup_mount=cgroup_mount)
    if sys.platform == "win32":
        from ainative.platform.windows import windows_platform

        return windows_platform(poll_interval=poll_interval)
    raise MechanismUnavailable(f"ainative has no backend for {sys.platform} yet")


def own_slice_ns() -> int | None:
    """This thread's EEVDF slice in ns (0: the kernel's default); None where there is no
    such thing (not Linux, a kernel before 6.12) or it cannot be read."""
    if not sys.platform.startswith("linux"):
        return None
    from ainative.platform.linux import knobs

    try:
        return knobs.get_slice(0) if knobs.default_slice_ns() else None
    except OSError:
        return None


def ask_own_slice(ns: int) -> bool:
    """Ask the kernel for an EEVDF slice of ns for this thread (threads and children
    started after inherit it); any user may. False where it cannot be had: not Linux,
    a kernel before 6.12, a realtime policy."""
    if not sys.platform.startswith("linux"):
        return False
    from ainative.platform.base import ProcessGone
    from ainative.platform.linux import knobs

    try:
        knobs.set_slice(0, ns)
    except (OSError, ProcessGone):
        return False
    return True


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and has not exited: a zombie (exited, not yet
    reaped) is gone. The one such check (the daemon's scope, its metrics' sweep, the trace
    recorder's --pid); one signal-0 call and, where there is a /proc, one small read."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's: it exists
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except FileNotFoundError:
        return not os.path.isdir("/proc/self")  # no /proc here: signal 0 said it exists
    except (OSError, IndexError):
        return False
