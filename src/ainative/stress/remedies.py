"""What a user would do by hand instead of running ainative: raise the workload's priority
(``nice -n -10``), make it realtime (``chrt -f 10``), or demote the hogs into a cgroup
with the smallest CPU share."""

from __future__ import annotations

import os
import shutil
import time

from ainative.platform import get_platform
from ainative.platform.base import MechanismUnavailable, ProcessGone

# Command prefixes that start the workload under a remedy.
PREFIXES = {"nice": ["nice", "-n", "-10"], "chrt": ["chrt", "-f", "10"]}
_GROUP = "hogs"


class RemedyError(Exception):
    pass


def prefix(scenario: str) -> list[str]:
    """The command prefix for scenario (empty when it has none); the tool must exist."""
    argv = PREFIXES.get(scenario, [])
    if argv and shutil.which(argv[0]) is None:
        raise RemedyError(f"{argv[0]} is not installed (util-linux / coreutils)")
    return list(argv)


class HogCgroup:
    """A group of our own, ``<name>.hogs`` under a unique name, holding the hogs at
    cpu.shares=2 (v1) or cpu.weight=1 (v2); removed again by remove().

    It goes through the platform's backend like the daemon's own groups do: a backend
    whose cgroup root is ``name``, asked for weight 0, which each layout clamps to the
    least it allows."""

    def __init__(self, name: str | None = None, mount_base: str = "/sys/fs/cgroup") -> None:
        root = name or f"ainative-stress-hogs-{os.getpid()}"
        try:
            self._backend = get_platform(cgroup_root=root, cgroup_mount=mount_base).backend
        except MechanismUnavailable as e:
            raise RemedyError(str(e)) from None
        self.dir = self._backend.cgroup_path(_GROUP)  # until it exists: the relative path
        self.is_v2 = False
        self.knob = ("cpu.shares", "2")
        try:
            self._paths = self._backend.cgroup_prepare(_GROUP, {"cpu_weight": 0})
        except (OSError, ValueError) as e:
            self._paths = {}
            mounted = bool(self._backend.cgroup_root_path())
            self.remove()
            if not mounted:
                raise RemedyError("no cgroup hierarchy with the cpu controller is mounted "
                                  f"({e})") from None
            raise RemedyError(f"cannot set up the hog cgroup {self.dir}: {e}") from None
        if not self._paths:
            raise RemedyError("no cgroup hierarchy with the cpu controller is mounted")
        self.is_v2 = "0" in self._paths
        self.dir = next(iter(self._backend.cgroup_dirs(_GROUP).values()), self.dir)
        self.knob = ("cpu.weight", "1") if self.is_v2 else ("cpu.shares", "2")

    def add(self, pids: list[int]) -> int:
        """Move pids in (gone ones are skipped); returns how many moved."""
        moved = 0
        for pid in pids:
            try:
                self._backend.set_knob(pid, "cgroup", self._paths)
                moved += 1
            except ProcessGone:
                continue
            except (OSError, ValueError) as e:
                raise RemedyError(f"cannot move {pid} into {self.dir}: {e}") from e
        return moved

    def members(self) -> list[int]:
        return sorted(self._backend.cgroup_members())

    def remove(self, timeout_s: float = 5.0) -> None:
        """Move anything left back to the root and remove the group; never raises."""
        deadline = time.monotonic() + timeout_s
        root = {k: "/" for k in self._paths} or self._backend.cgroup_root_path()
        while self._backend.cgroup_dirs(_GROUP):
            left = self.members()
            for pid in left:
                try:
                    self._backend.set_knob(pid, "cgroup", root)
                except (ProcessGone, OSError, ValueError):
                    pass
            # Killed processes take a moment to leave; the group stays busy until then.
            if not self.members() and not self._backend.cleanup():
                return
            if time.monotonic() > deadline:
                return
            time.sleep(0.05)
