"""What a user would do by hand instead of running ainative: raise the workload's priority
(``nice -n -10``), make it realtime (``chrt -f 10``), or demote the hogs into a cgroup
with the smallest CPU share."""

from __future__ import annotations

import os
import shutil
import time

from ainative.platform.linux.cgroups import read_file, write_file

# Command prefixes that start the workload under a remedy.
PREFIXES = {"nice": ["nice", "-n", "-10"], "chrt": ["chrt", "-f", "10"]}


class RemedyError(Exception):
    pass


def prefix(scenario: str) -> list[str]:
    """The command prefix for scenario (empty when it has none); the tool must exist."""
    argv = PREFIXES.get(scenario, [])
    if argv and shutil.which(argv[0]) is None:
        raise RemedyError(f"{argv[0]} is not installed (util-linux / coreutils)")
    return list(argv)


class HogCgroup:
    """A group of our own, under a unique name, holding the hogs at cpu.shares=2 (v1) or
    cpu.weight=1 (v2); removed again by remove()."""

    def __init__(self, name: str | None = None, mount_base: str = "/sys/fs/cgroup") -> None:
        from ainative.platform.linux.cgroups import discover

        hier = [h for h in discover(mount_base) if "cpu" in h.controllers]
        if not hier:
            raise RemedyError("no cgroup hierarchy with the cpu controller is mounted")
        h = hier[0]
        self.root = h.mount
        self.is_v2 = h.is_v2
        self.dir = os.path.join(self.root, name or f"ainative-stress-hogs-{os.getpid()}")
        try:
            if self.is_v2:
                sc = os.path.join(self.root, "cgroup.subtree_control")
                if "cpu" not in read_file(sc).split():
                    write_file(sc, "+cpu")
            os.makedirs(self.dir, exist_ok=True)
            self.knob = ("cpu.weight", "1") if self.is_v2 else ("cpu.shares", "2")
            write_file(os.path.join(self.dir, self.knob[0]), self.knob[1])
        except OSError as e:
            self.remove()
            raise RemedyError(f"cannot set up the hog cgroup at {self.dir}: {e}") from e

    def add(self, pids: list[int]) -> int:
        """Move pids in (gone ones are skipped); returns how many moved."""
        moved = 0
        for pid in pids:
            try:
                write_file(os.path.join(self.dir, "cgroup.procs"), str(pid))
                moved += 1
            except ProcessLookupError:
                continue
            except OSError as e:
                raise RemedyError(f"cannot move {pid} into {self.dir}: {e}") from e
        return moved

    def members(self) -> list[int]:
        try:
            return [int(p) for p in read_file(os.path.join(self.dir, "cgroup.procs")).split()]
        except OSError:
            return []

    def remove(self, timeout_s: float = 5.0) -> None:
        """Move anything left back to the root and remove the group; never raises."""
        deadline = time.monotonic() + timeout_s
        while os.path.isdir(self.dir):
            for pid in self.members():
                try:
                    write_file(os.path.join(self.root, "cgroup.procs"), str(pid))
                except OSError:
                    pass
            try:
                os.rmdir(self.dir)
                return
            except FileNotFoundError:
                return
            except OSError:
                # Killed processes take a moment to leave; EBUSY until they have.
                if time.monotonic() > deadline:
                    return
                time.sleep(0.05)
