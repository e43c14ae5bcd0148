"""Per-size-class free lists in front of the allocator: the pool's hot path.

The allocator (allocator.py) is exact: every alloc and free walks its slabs and extents
under a lock, and a slab that empties goes straight back to the extents. That is right
for the pool's shape, and a few microseconds a call; a server that takes a 16 KiB input
buffer and gives it back on every request pays it twice per request.

So blocks that are given back are kept on a stack per reserved size (the size class up
to 64 KiB, whole pages above), still reserved in the allocator, and the next request of
that size pops one: a list pop and a list append, each atomic under the GIL, so the hot
path takes no lock. The stacks are handed back to the allocator (`trim`) when it runs
out of space, when the pool's stats are read, on request, and when the pool closes, so
the pool's full capacity stays reachable for any size and the stats are exact.
"""

from __future__ import annotations

import bisect

from ainative.mem.allocator import MIN_ALIGN, PAGE, SMALL_CLASSES, SMALL_MAX, Allocator

GRANULE_SHIFT = 6  # MIN_ALIGN == 64: size classes are whole granules
assert 1 << GRANULE_SHIFT == MIN_ALIGN

# The size class of every 64-byte granule count: CLASS_OF_GRANULE[(n + 63) >> 6] is the
# block size that serves an n-byte request (index 0 unused).
CLASS_OF_GRANULE: list[int] = [0] + [
    SMALL_CLASSES[bisect.bisect_left(SMALL_CLASSES, g << GRANULE_SHIFT)]
    for g in range(1, (SMALL_MAX >> GRANULE_SHIFT) + 1)]


def class_size(nbytes: int) -> int:
    """The block size that serves a small request (1 <= nbytes <= 64 KiB)."""
    return CLASS_OF_GRANULE[(nbytes + MIN_ALIGN - 1) >> GRANULE_SHIFT]


def reserved_size(nbytes: int) -> int:
    """Bytes a request of nbytes reserves: its size class up to 64 KiB, whole pages above."""
    if nbytes <= SMALL_MAX:
        return CLASS_OF_GRANULE[(nbytes + MIN_ALIGN - 1) >> GRANULE_SHIFT]
    return (nbytes + PAGE - 1) // PAGE * PAGE


class FreeLists:
    """One LIFO stack of block offsets per reserved size, over one Allocator.

    Small requests (up to 64 KiB) map to their size class: `by_granule[(n + 63) >> 6]`
    is the stack that serves an n-byte request, which the pool's fast path indexes
    directly (index 0 is None: a 0-byte request is refused before it gets here). Larger
    blocks are kept by their page-rounded size, so a server that takes the same 1 MiB
    batch buffer every request skips the allocator's best-fit search too.
    """

    def __init__(self, allocator: Allocator) -> None:
        self.allocator = allocator
        self.stacks: dict[int, list[int]] = {size: [] for size in SMALL_CLASSES}
        self.by_granule: list[list[int] | None] = [None] + [
            self.stacks[size] for size in CLASS_OF_GRANULE[1:]]

    def stack(self, reserved: int) -> list[int]:
        """The stack of blocks of `reserved` bytes (made on first use for large sizes)."""
        try:
            return self.stacks[reserved]
        except KeyError:
            return self.stacks.setdefault(reserved, [])

    def take(self, nbytes: int) -> tuple[int, int]:
        """(offset, reserved) for a request: from its stack, else a new block from the
        allocator (which may raise OutOfSpace; the caller trims and retries)."""
        reserved = reserved_size(nbytes)
        try:
            return self.stack(reserved).pop(), reserved
        except IndexError:
            return self.allocator.alloc(reserved).offset, reserved

    def give(self, offset: int, reserved: int) -> None:
        """Put a block of `reserved` bytes back on its stack."""
        self.stack(reserved).append(offset)

    def cached(self) -> tuple[int, int]:
        """(blocks, bytes) on the stacks now."""
        blocks = nbytes = 0
        for size, stack in list(self.stacks.items()):
            n = len(stack)
            blocks += n
            nbytes += n * size
        return blocks, nbytes

    def trim(self) -> list[tuple[int, int]]:
        """Give every stacked block back to the allocator (empty slabs then go back to the
        extents and coalesce). Returns the (offset, reserved) pairs given back."""
        out: list[tuple[int, int]] = []
        for size, stack in list(self.stacks.items()):
            while True:
                try:
                    off = stack.pop()
                except IndexError:
                    break
                self.allocator.free(off)
                out.append((off, size))
            # An empty stack stays: buffers still out hold it, to give their block back.
        return out
