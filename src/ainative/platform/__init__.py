"""Platform backends: everything that talks to one operating system lives below here.

The core (classification, journal, engine, daemon) only uses the types in ``base``, the
``Backend`` interface in ``backend``, and the one ``Platform`` that :func:`get_platform`
picks from ``sys.platform`` (as psutil picks _pslinux or _pswindows once at import):
its backend, its process-event source and its mechanism probe. No module outside this
package imports a platform's own modules (``ainative.platform.linux``), so a second
platform is a new subpackage and one more branch in get_platform.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

from ainative.platform.backend import Backend
from ainative.platform.base import EventSource, Mechanism, MechanismUnavailable

__all__ = ["Platform", "get_platform"]


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
    raise MechanismUnavailable(f"ainative has no backend for {sys.platform} yet")
