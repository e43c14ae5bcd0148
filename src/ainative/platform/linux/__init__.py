"""Linux backend: procfs, the netlink process connector, scheduling knobs, cgroups.

Only ``ainative.platform`` imports this package; everything else reaches it through
``ainative.platform.get_platform()``.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ainative.platform import Platform


def linux_platform(*, cgroup_root: str = "ainative", poll_interval: float = 0.5,
                   cgroup_mount: str = "/sys/fs/cgroup") -> Platform:
    """The Linux platform. Refuses (MechanismUnavailable) when /proc numbers processes
    differently from the syscalls (a PID namespace without its own /proc): every pid the
    backend read would then name the wrong process."""
    from ainative.platform import Platform
    from ainative.platform.base import MechanismUnavailable
    from ainative.platform.linux import procfs
    from ainative.platform.linux.backend import LinuxBackend
    from ainative.platform.linux.connector import open_event_source
    from ainative.platform.linux.probe import probe_mechanisms

    problem = procfs.foreign_proc()
    if problem is not None:
        raise MechanismUnavailable(problem)

    return Platform(
        name="linux",
        backend=LinuxBackend(cgroup_root=cgroup_root, cgroup_mount=cgroup_mount),
        open_events=functools.partial(open_event_source, poll_interval),
        probe=probe_mechanisms,
    )
