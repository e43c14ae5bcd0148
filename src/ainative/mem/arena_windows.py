"""The pool's arena on Windows: VirtualAlloc, then VirtualLock after raising the
process's minimum working set, with the Linux arena's interface (mem/arena.py selects it
on Windows), errors (LockFailed, so the pool's "required"/"try" logic is the same) and
info (ArenaInfo).

Why the working set first: Windows lets a process lock at most its minimum working set
(less a few pages); the default minimum is about 200 KiB, so a bigger VirtualLock fails
with ERROR_WORKING_SET_QUOTA (1453) unless SetProcessWorkingSetSizeEx raised it first.
The raise is soft (QUOTA_LIMITS_HARDWS_*_DISABLE) and undone when the arena closes.
Large pages (MEM_LARGE_PAGES) need SeLockMemoryPrivilege and are not used; NUMA binding
is not offered here.
"""

from __future__ import annotations

import ctypes
import errno
from collections.abc import Callable
from dataclasses import dataclass

from ainative.mem.arena import ArenaInfo, LockFailed
from ainative.mem.limits import LockLimits
from ainative.platform.windows.win32 import ERROR_WORKING_SET_QUOTA, Win32, Win32Error

# Pages the working set needs beyond the locked range (the image, stacks, the heap).
WS_SLACK = 4 << 20
MIN_WS = 20 * 4096  # the smallest minimum working set Windows accepts (20 pages)


def _api(api: Win32 | None) -> Win32:
    if api is not None:
        return api
    from ainative.platform.windows.win32 import Kernel32

    return Kernel32()


class WindowsArena:
    def __init__(self, size: int, lock: bool, hugepages: str | bool = "auto",
                 numa_node: int | None = None, *, api: Win32 | None = None) -> None:
        self.api = _api(api)
        self.size = size
        self.address = 0
        self.before_unmap: Callable[[], object] | None = None
        # The working set before and after this arena raised it (for putting it back).
        self._raised: tuple[int, int, int, int] | None = None
        if hugepages is True:
            raise OSError(errno.ENOTSUP, "huge pages asked for, but large pages on Windows "
                          "need SeLockMemoryPrivilege (MEM_LARGE_PAGES), which ainative "
                          "does not use: pass hugepages='auto' or False")
        if numa_node is not None:
            raise ValueError(f"NUMA node {numa_node}: binding is not offered on Windows "
                             "(pass numa_node=None)")
        self.address = self.api.virtual_alloc(size)
        self.info = ArenaInfo(False, "not requested", False,
                              "large pages not used on Windows", None,
                              "no NUMA binding on Windows")
        try:
            if lock:
                self._lock()
            # Touch every page now (VirtualLock faulted them in; writing makes them
            # private), so the hot path never faults.
            ctypes.memset(self.address, 0, size)
        except BaseException:
            self.close()
            raise

    def _lock(self) -> None:
        lo, hi = self.api.get_working_set()
        add = self.size + WS_SLACK
        new_lo, new_hi = lo + add, max(hi, lo + add) + WS_SLACK
        try:
            self.api.set_working_set(new_lo, new_hi)
        except OSError as e:
            raise LockFailed(errno.ENOMEM, f"raising the minimum working set to {new_lo} "
                             f"bytes for a {self.size}-byte lock was refused ({e})") from e
        self._raised = (lo, hi, new_lo, new_hi)
        try:
            self.api.virtual_lock(self.address, self.size)
        except Win32Error as e:
            self._lower_working_set()
            if e.code == ERROR_WORKING_SET_QUOTA:
                raise LockFailed(errno.ENOMEM, (
                    f"VirtualLock of {self.size} bytes: working-set quota exceeded (Win32 "
                    f"error 1453) with the minimum working set raised to {new_lo} bytes; "
                    "free memory or use a smaller pool, or lock='try'")) from e
            raise LockFailed(errno.EIO, f"VirtualLock of {self.size} bytes: {e}") from e
        self.info.locked, self.info.lock_reason = True, "VirtualLock"

    def _lower_working_set(self) -> None:
        if self._raised is None:
            return
        lo0, hi0, lo1, hi1 = self._raised
        self._raised = None
        try:
            lo, hi = self.api.get_working_set()
            if (lo, hi) == (lo1, hi1):
                self.api.set_working_set(lo0, hi0)  # nobody changed it since: as it was
            else:  # another pool raised it too: take back only this arena's share
                self.api.set_working_set(max(lo - (lo1 - lo0), MIN_WS),
                                         max(hi - (hi1 - hi0), 2 * MIN_WS))
        except OSError:
            pass  # a larger working set than needed is harmless

    def block(self, offset: int, nbytes: int) -> ctypes.Array[ctypes.c_char]:
        """A ctypes object over the range, holding the arena (as the Linux arena's)."""
        from ainative.mem.arena import block_of

        return block_of(self, self.address, self.size, offset, nbytes)

    def close(self) -> None:
        if self.address:
            if self.before_unmap is not None:
                self.before_unmap()
                self.before_unmap = None
            if self.info.locked:
                try:
                    self.api.virtual_unlock(self.address, self.size)
                except OSError:
                    pass  # VirtualFree releases the pages, locked or not
            self.api.virtual_free(self.address)
            self.address = 0
            self._lower_working_set()

    def __del__(self) -> None:
        if getattr(self, "address", 0):
            self.close()


@dataclass(frozen=True)
class WindowsLockLimits(LockLimits):
    """Windows has no RLIMIT_MEMLOCK: what may be locked is the working set, which the
    arena raises itself, so nothing is refused up front; a refusal comes from VirtualLock
    and says so."""

    def explain(self, nbytes: int) -> str:
        return (f"locking {nbytes >> 10} KiB failed: Windows locks at most a process's "
                "minimum working set, which ainative raised first (SetProcessWorkingSetSizeEx) "
                "and Windows still refused. Fix: free physical memory, use a smaller pool, or "
                "create it with lock='try' to get an unlocked pool that says so.")


def windows_lock_limits() -> LockLimits:
    return WindowsLockLimits(None, None, False, 0)
