"""May this process lock memory, and how much? RLIMIT_MEMLOCK and CAP_IPC_LOCK."""

from __future__ import annotations

import sys
from dataclasses import dataclass

if sys.platform != "win32":
    import resource

CAP_IPC_LOCK = 14


class MemlockError(Exception):
    """Locking the pool is not allowed; the message names the limit and the fix."""


def _status_field(name: str) -> str | None:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(name + ":"):
                return line.split(":", 1)[1].strip()
    return None


def has_cap_ipc_lock() -> bool:
    cap = _status_field("CapEff")
    return bool(cap and int(cap, 16) >> CAP_IPC_LOCK & 1)


def locked_bytes() -> int:
    """VmLck of this process."""
    v = _status_field("VmLck")
    return int(v.split()[0]) * 1024 if v else 0


@dataclass(frozen=True)
class LockLimits:
    soft: int | None  # None: unlimited
    hard: int | None
    cap_ipc_lock: bool
    locked_now: int

    def allows(self, nbytes: int) -> bool:
        return self.cap_ipc_lock or self.soft is None or self.locked_now + nbytes <= self.soft

    def room(self) -> int | None:
        """Bytes that may still be locked (None: no limit)."""
        if self.cap_ipc_lock or self.soft is None:
            return None
        return max(0, self.soft - self.locked_now)

    def explain(self, nbytes: int) -> str:
        soft = "unlimited" if self.soft is None else f"{self.soft >> 10} KiB"
        hard = "unlimited" if self.hard is None else f"{self.hard >> 10} KiB"
        return (f"locking {nbytes >> 10} KiB is not allowed: RLIMIT_MEMLOCK is {soft} (hard "
                f"{hard}), {self.locked_now >> 10} KiB already locked, and the process lacks "
                "CAP_IPC_LOCK. Fix: raise the limit (`ulimit -l unlimited` in the shell that "
                "starts it, `LimitMEMLOCK=infinity` in a systemd unit, a memlock line in "
                "/etc/security/limits.conf), or grant CAP_IPC_LOCK (setcap cap_ipc_lock+ep, "
                "AmbientCapabilities=CAP_IPC_LOCK), or create the pool with lock='try' to "
                "get an unlocked pool that says so.")


def _lim(v: int) -> int | None:
    return None if v == resource.RLIM_INFINITY else v


def lock_limits() -> LockLimits:
    """How much this process may lock now: the limit, the privilege, what is locked."""
    if sys.platform == "win32":  # the working set, not an rlimit (mem/arena_windows.py)
        from ainative.mem.arena_windows import windows_lock_limits

        return windows_lock_limits()
    soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    return LockLimits(_lim(soft), _lim(hard), has_cap_ipc_lock(), locked_bytes())
