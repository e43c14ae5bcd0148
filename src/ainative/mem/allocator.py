"""The pool's allocator: offsets inside one arena, no memory of its own.

Three size classes, as the original design had them:
- small (up to 64 KiB): slabs. A slab is a 256 KiB run carved from the extents and cut
  into equal blocks of one size class; classes step by 1.25x (four per doubling), so
  rounding wastes at most 25 % and usually far less. An empty slab goes back to the
  extents, so a pool with nothing allocated is one free extent again.
- medium (64 KiB - 1 MiB) and large (1 MiB+): best-fit extents, rounded to 4 KiB and
  page-aligned, never to a power of two (the waste PyTorch's and CuPy's pinned caches are
  criticised for); neighbours coalesce on free.

Written by hand because no maintained Python library allocates inside a caller's arena.
"""

from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass, field

MIN_ALIGN = 64
PAGE = 4096
SMALL_MAX = 64 << 10
MEDIUM_MAX = 1 << 20
SLAB_SIZE = 256 << 10


def _small_classes() -> list[int]:
    out: list[int] = []
    base = MIN_ALIGN
    while base < SMALL_MAX:
        for k in range(4):
            size = base + k * base // 4
            size = (size + MIN_ALIGN - 1) // MIN_ALIGN * MIN_ALIGN
            if size not in out and size <= SMALL_MAX:
                out.append(size)
        base *= 2
    out.append(SMALL_MAX)
    return sorted(set(out))


SMALL_CLASSES = _small_classes()


class OutOfSpace(Exception):
    pass


class InvalidFree(Exception):
    pass


def size_class(nbytes: int) -> str:
    if nbytes <= SMALL_MAX:
        return "small"
    return "medium" if nbytes <= MEDIUM_MAX else "large"


@dataclass(eq=False)
class _Slab:
    offset: int
    block: int
    capacity: int
    # Returned blocks, LIFO for cache warmth. Blocks never handed out come from a bump
    # index instead, so making a slab costs the same for 64-byte blocks as for 64 KiB ones.
    free: list[int] = field(default_factory=list)
    bumped: int = 0
    used: int = 0

    def has_free(self) -> bool:
        return bool(self.free) or self.bumped < self.capacity

    def take(self) -> int:
        self.used += 1
        if self.free:
            return self.free.pop()
        self.bumped += 1
        return self.offset + (self.bumped - 1) * self.block


@dataclass
class Allocation:
    offset: int
    size: int  # bytes reserved (after rounding)
    requested: int
    kind: str  # small / medium / large
    slab: int = -1  # offset of the slab holding a small block


@dataclass
class Stats:
    total: int
    used: int = 0  # bytes reserved by live allocations (after rounding)
    requested: int = 0  # bytes asked for by live allocations
    blocks_in_use: int = 0
    peak: int = 0
    alloc_count: int = 0
    free_count: int = 0
    failures: int = 0
    by_class: dict[str, int] = field(default_factory=lambda: {"small": 0, "medium": 0,
                                                              "large": 0})


class Allocator:
    def __init__(self, capacity: int) -> None:
        if capacity < PAGE or capacity % PAGE:
            raise ValueError("capacity must be a positive multiple of 4 KiB")
        self.capacity = capacity
        self._lock = threading.Lock()
        # Free extents, indexed both ways: by offset (for coalescing) and by (size,
        # offset) (for best fit).
        self._by_off: dict[int, int] = {0: capacity}
        self._offs: list[int] = [0]
        self._by_size: list[tuple[int, int]] = [(capacity, 0)]
        self._slabs: dict[int, list[_Slab]] = {}  # block size -> slabs with free blocks
        self._slab_of: dict[int, _Slab] = {}  # slab offset -> slab
        self._live: dict[int, Allocation] = {}
        self.stats = Stats(total=capacity)

    # --- extents ---

    def _remove_extent(self, off: int) -> int:
        size = self._by_off.pop(off)
        del self._offs[bisect.bisect_left(self._offs, off)]
        del self._by_size[bisect.bisect_left(self._by_size, (size, off))]
        return size

    def _add_extent(self, off: int, size: int) -> None:
        # Coalesce with the neighbours on both sides.
        i = bisect.bisect_left(self._offs, off)
        if i > 0:
            prev = self._offs[i - 1]
            if prev + self._by_off[prev] == off:
                size += self._remove_extent(prev)
                off = prev
        nxt = off + size
        if nxt in self._by_off:
            size += self._remove_extent(nxt)
        self._by_off[off] = size
        bisect.insort(self._offs, off)
        bisect.insort(self._by_size, (size, off))

    def _take_extent(self, size: int, align: int) -> int:
        """Best fit: the smallest free extent that holds size at the alignment."""
        i = bisect.bisect_left(self._by_size, (size, -1))
        while i < len(self._by_size):
            ext_size, off = self._by_size[i]
            start = (off + align - 1) // align * align
            if start + size <= off + ext_size:
                self._remove_extent(off)
                if start > off:
                    self._add_extent(off, start - off)
                end = start + size
                if end < off + ext_size:
                    self._add_extent(end, off + ext_size - end)
                return start
            i += 1
        raise OutOfSpace

    # --- public ---

    def alloc(self, nbytes: int) -> Allocation:
        if nbytes <= 0:
            raise ValueError("allocation size must be positive")
        with self._lock:
            try:
                a = self._alloc_small(nbytes) if nbytes <= SMALL_MAX else self._alloc_big(nbytes)
            except OutOfSpace:
                self.stats.failures += 1
                raise
            self._live[a.offset] = a
            st = self.stats
            st.used += a.size
            st.requested += a.requested
            st.blocks_in_use += 1
            st.alloc_count += 1
            st.by_class[a.kind] += 1
            st.peak = max(st.peak, st.used)
            return a

    def _alloc_small(self, nbytes: int) -> Allocation:
        block = SMALL_CLASSES[bisect.bisect_left(SMALL_CLASSES, nbytes)]
        slabs = self._slabs.setdefault(block, [])
        if not slabs:
            off = self._take_extent(SLAB_SIZE, PAGE)
            slab = _Slab(off, block, SLAB_SIZE // block)
            self._slab_of[off] = slab
            slabs.append(slab)
        slab = slabs[-1]
        boff = slab.take()
        if not slab.has_free():
            slabs.pop()
        return Allocation(boff, block, nbytes, "small", slab.offset)

    def _alloc_big(self, nbytes: int) -> Allocation:
        size = (nbytes + PAGE - 1) // PAGE * PAGE
        off = self._take_extent(size, PAGE)
        return Allocation(off, size, nbytes, size_class(nbytes))

    def free(self, offset: int) -> None:
        with self._lock:
            a = self._live.pop(offset, None)
            if a is None:
                raise InvalidFree(f"offset {offset} is not a live allocation")
            st = self.stats
            st.used -= a.size
            st.requested -= a.requested
            st.blocks_in_use -= 1
            st.free_count += 1
            st.by_class[a.kind] -= 1
            if a.kind != "small":
                self._add_extent(a.offset, a.size)
                return
            slab = self._slab_of[a.slab]
            was_full = not slab.has_free()
            slab.free.append(a.offset)
            slab.used -= 1
            slabs = self._slabs[slab.block]
            if slab.used == 0:
                if not was_full:
                    slabs.remove(slab)
                del self._slab_of[slab.offset]
                self._add_extent(slab.offset, SLAB_SIZE)
            elif was_full:
                slabs.append(slab)

    # --- views ---

    def free_extents(self) -> list[tuple[int, int]]:
        with self._lock:
            return [(o, self._by_off[o]) for o in self._offs]

    def live(self) -> list[Allocation]:
        with self._lock:
            return sorted(self._live.values(), key=lambda a: a.offset)

    def largest_free_extent(self) -> int:
        with self._lock:
            return self._by_size[-1][0] if self._by_size else 0

    def snapshot(self) -> dict[str, int | float]:
        with self._lock:
            st = self.stats
            ext_free = sum(self._by_off.values())
            largest = self._by_size[-1][0] if self._by_size else 0
            return {
                "total": st.total, "used": st.used, "requested": st.requested,
                "free": st.total - st.used, "blocks_in_use": st.blocks_in_use,
                "largest_free_extent": largest,
                # 0 when all free space is one extent; near 1 when it is in crumbs.
                "fragmentation": round(1.0 - largest / ext_free, 4) if ext_free else 0.0,
                "peak": st.peak, "alloc_count": st.alloc_count, "free_count": st.free_count,
                "failures": st.failures,
                "rounding_overhead": round((st.used - st.requested) / st.used, 4)
                if st.used else 0.0,
                "slabs": len(self._slab_of),
            }
