"""cgroups for ainative on both layouts: v2 (unified) and v1/hybrid.

ainative owns one subtree (default name "ainative") and creates one group per class
below it. It only ever moves processes it classified, and it remembers (through the
engine's journal) where each one came from so it can move it back.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CgroupSettings:
    """What a class asks of its group. None means 'leave the kernel default'."""

    # Relative CPU weight on the v2 scale (1..10000, default 100). On v1 it is mapped to
    # cpu.shares (2..262144, default 1024) as shares = weight * 1024 / 100, clamped.
    cpu_weight: int | None = None
    # cpu.idle=1 (v2 and v1 since 5.15): the group gets SCHED_IDLE-like treatment.
    cpu_idle: bool | None = None
    cpuset_cpus: str | None = None  # "0-1", "3"
    memory_low: int | None = None  # bytes; v2 memory.low, v1 has no equivalent (reported)


class CgroupManager:
    """Creates and owns ``<mount>/<root_name>/<group>`` in every hierarchy it needs.

    ``mount_base`` is /sys/fs/cgroup on a real machine; tests pass the same but a unique
    ``root_name`` so they never touch anything else.
    """

    def __init__(self, root_name: str = "ainative", mount_base: str = "/sys/fs/cgroup") -> None:
        raise NotImplementedError

    @property
    def layout(self) -> str:
        """'v2', 'v1' or 'hybrid' (v1 controllers plus a v2 mount without them)."""
        raise NotImplementedError

    def capabilities(self) -> dict[str, str]:
        """Each feature (cpu_weight, cpu_idle, cpuset, memory_low, freeze) -> where it works
        ('v2', 'v1:cpu', ...) or why not ('unavailable: ...')."""
        raise NotImplementedError

    def ensure_group(self, group: str, settings: CgroupSettings) -> dict[str, str]:
        """Create (or update) the group; return {hierarchy-key: absolute dir} it exists in."""
        raise NotImplementedError

    def current(self, pid: int) -> dict[str, str]:
        """{hierarchy-key: cgroup path relative to its mount} for the hierarchies we manage."""
        raise NotImplementedError

    def move(self, pid: int, group: str) -> dict[str, str]:
        """Move the whole process (all threads) into the group. Returns the paths it was in
        before (same shape as current()), for the journal."""
        raise NotImplementedError

    def move_back(self, pid: int, previous: dict[str, str]) -> None:
        """Move the process back where it was, hierarchy by hierarchy, skipping groups that
        no longer exist (then to the hierarchy root)."""
        raise NotImplementedError

    def members(self, group: str) -> set[int]:
        raise NotImplementedError

    def remove_all(self) -> None:
        """Remove the owned subtree if empty of processes (after restore)."""
        raise NotImplementedError
