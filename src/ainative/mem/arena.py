"""One anonymous mapping for a pool: locked, pre-faulted, huge pages and NUMA on request.

Done through libc with ctypes rather than Python's mmap module because the pool needs
the raw address (for CUDA registration and DLPack) and flags mmap() does not expose
(MAP_LOCKED) or calls it lacks (mlock, mbind).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

PROT_READ, PROT_WRITE = 0x1, 0x2
MAP_PRIVATE, MAP_ANONYMOUS, MAP_NORESERVE = 0x02, 0x20, 0x4000
MADV_HUGEPAGE = 14
HUGE_PAGE = 2 << 20
MAP_FAILED = ctypes.c_void_p(-1).value

if sys.platform != "win32":  # Windows: arena_windows.Arena, selected at the end
    _libc = ctypes.CDLL(None, use_errno=True)
    _libc.mmap.restype = ctypes.c_void_p
    _libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                           ctypes.c_int, ctypes.c_long]
    _libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    _libc.mlock.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    _libc.munlock.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    _libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    _libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
    _libc.memset.restype = ctypes.c_void_p


def block_of(arena: object, address: int, size: int, offset: int, nbytes: int
             ) -> ctypes.Array[ctypes.c_char]:
    """A ctypes object over [offset, offset + nbytes) of an arena mapped at address (both
    platforms' arenas)."""
    if not address:
        raise ValueError("the arena is unmapped")
    if offset < 0 or offset + nbytes > size:
        raise IndexError("range outside the arena")
    blk = (ctypes.c_char * nbytes).from_address(address + offset)
    # Every view hangs on its block, and the block on the arena: the mapping cannot go
    # away (closing the pool, or the pool being collected) while a view can reach it.
    blk._arena = arena  # type: ignore[attr-defined]
    return blk


class LockFailed(OSError):
    """mlock refused the arena (as opposed to mmap, madvise or mbind failing)."""


def _err(what: str) -> OSError:
    e = ctypes.get_errno()
    return OSError(e, f"{what}: {os.strerror(e)}")


def thp_mode() -> str:
    """The kernel's transparent huge page mode: always, madvise, never, or unavailable."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as fh:
            text = fh.read()
        return text[text.index("[") + 1: text.index("]")]
    except (OSError, ValueError):
        return "unavailable"


def numa_nodes() -> list[int]:
    try:
        return sorted(int(n[4:]) for n in os.listdir("/sys/devices/system/node")
                      if n.startswith("node") and n[4:].isdigit())
    except OSError:
        return []


@dataclass
class ArenaInfo:
    locked: bool
    lock_reason: str
    hugepages: bool
    hugepage_reason: str
    numa_node: int | None
    numa_reason: str


class Arena:
    def __init__(self, size: int, lock: bool, hugepages: str | bool = "auto",
                 numa_node: int | None = None) -> None:
        self.size = size
        self.address = 0  # what close() and __del__ see if mmap fails
        self.before_unmap: Callable[[], object] | None = None
        self.address = self._map(size, hugepages not in (False, "never"))
        self.info = ArenaInfo(False, "not requested", False, "not requested", None,
                              "not requested")
        try:
            self._hugepages(hugepages)
            self._numa(numa_node)
            if lock:
                if _libc.mlock(self.address, size) != 0:
                    e = _err(f"mlock of {size} bytes")
                    raise LockFailed(e.errno, e.strerror)
                self.info.locked, self.info.lock_reason = True, "mlock"
            # Touch every page now (mlock already faulted them in; writing also gives
            # private pages rather than the shared zero page), so the hot path never faults.
            _libc.memset(self.address, 0, size)
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _map(size: int, huge: bool) -> int:
        # Huge pages only back 2 MiB-aligned 2 MiB ranges. Older kernels do not align large
        # anonymous mappings, so map a huge page more than needed and trim both ends.
        pad = HUGE_PAGE if huge and size >= HUGE_PAGE else 0
        addr = _libc.mmap(None, size + pad, PROT_READ | PROT_WRITE,
                          MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
        if addr is None or addr == MAP_FAILED:
            raise _err(f"mmap of {size} bytes")
        if pad:
            start = (addr + HUGE_PAGE - 1) // HUGE_PAGE * HUGE_PAGE
            if start > addr:
                _libc.munmap(addr, start - addr)
            tail = addr + size + pad - (start + size)
            if tail:
                _libc.munmap(start + size, tail)
            addr = start
        return int(addr)

    def _hugepages(self, want: str | bool) -> None:
        mode = thp_mode()
        if want is False or want == "never":
            self.info.hugepage_reason = "not requested"
            return
        if mode in ("never", "unavailable"):
            self.info.hugepage_reason = f"transparent huge pages {mode}"
            if want is True:
                raise OSError(errno.ENOTSUP, f"huge pages asked for but THP is {mode}")
            return
        if self.size < HUGE_PAGE:
            self.info.hugepage_reason = "pool smaller than one huge page"
            return
        if _libc.madvise(self.address, self.size, MADV_HUGEPAGE) != 0:
            self.info.hugepage_reason = f"madvise(MADV_HUGEPAGE) failed: {_err('').strerror}"
            return
        self.info.hugepages, self.info.hugepage_reason = True, f"MADV_HUGEPAGE (THP {mode})"

    def _numa(self, node: int | None) -> None:
        nodes = numa_nodes()
        if node is None:
            self.info.numa_reason = (f"{len(nodes)} node(s): no binding needed"
                                     if len(nodes) <= 1 else "no node asked or known")
            return
        if node not in nodes:
            raise ValueError(f"NUMA node {node} does not exist (nodes: {nodes})")
        name = ctypes.util.find_library("numa")
        if name is None:
            self.info.numa_reason = "libnuma not installed (apt-get install libnuma1)"
            return
        numa = ctypes.CDLL(name)
        if numa.numa_available() < 0:
            self.info.numa_reason = "libnuma: NUMA not available on this kernel"
            return
        numa.numa_tonode_memory.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        numa.numa_tonode_memory(self.address, self.size, node)
        self.info.numa_node, self.info.numa_reason = node, f"bound to node {node} (libnuma)"

    def block(self, offset: int, nbytes: int) -> ctypes.Array[ctypes.c_char]:
        """A ctypes object over the range: the buffer exporter every view of it hangs on."""
        return block_of(self, self.address, self.size, offset, nbytes)

    def close(self) -> None:
        if self.address:
            if self.before_unmap is not None:
                self.before_unmap()
                self.before_unmap = None
            if self.info.locked:
                _libc.munlock(self.address, self.size)
            _libc.munmap(self.address, self.size)
            self.address = 0

    def __del__(self) -> None:
        self.close()


def gpu_numa_node(index: int = 0) -> int | None:
    """The NUMA node of GPU `index` from sysfs (via its PCI address from NVML)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        h = pynvml.nvmlDeviceGetHandleByIndex(index)
        bus = pynvml.nvmlDeviceGetPciInfo(h).busId
        bus = bus.decode() if isinstance(bus, bytes) else str(bus)
        # NVML gives an 8-digit domain; sysfs uses 4.
        path = f"/sys/bus/pci/devices/{bus[-12:].lower()}/numa_node"
        with open(path) as fh:
            node = int(fh.read().strip())
        return node if node >= 0 else None
    except Exception:
        return None


if sys.platform == "win32":  # VirtualAlloc + VirtualLock (mem/arena_windows.py)
    from ainative.mem.arena_windows import WindowsArena as Arena  # noqa: F401
