"""A block of a pinned pool, usable as a memoryview, a NumPy array and through DLPack."""

from __future__ import annotations

import sys
import weakref
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ainative.mem.pool import PinnedPool


def _still_used(anchors: list[Any]) -> list[Any]:
    """The anchors something besides this list still references. Indexing (rather than a
    loop variable) keeps the count exact: one reference from the list, one from the call."""
    used = [i for i in range(len(anchors)) if sys.getrefcount(anchors[i]) > 2]
    return [anchors[i] for i in used]


_FREED = "was already freed"


class BufferFreed(Exception):
    """The buffer was freed: using it or freeing it again is a bug in the caller."""


class BufferInUse(Exception):
    """free() while NumPy arrays or memoryviews of the buffer are still alive: freeing
    would leave them pointing into memory the pool hands out again."""


class PinnedBuffer:
    __slots__ = ("_anchors", "_gone", "_pool", "nbytes", "offset", "reserved")

    def __init__(self, pool: PinnedPool, offset: int, nbytes: int, reserved: int) -> None:
        self._pool: PinnedPool | None = pool
        self.offset = offset
        self.nbytes = nbytes
        self.reserved = reserved
        # One ctypes object per view handed out. Every memoryview, NumPy array, slice or
        # DLPack capsule made from it keeps it referenced, so while its reference count
        # is above our own, something can still reach the memory.
        self._anchors: list[Any] = []
        self._gone = _FREED  # why it is unusable, once _pool is None

    @property
    def freed(self) -> bool:
        return self._pool is None

    def _live_pool(self) -> PinnedPool:
        if self._pool is None:
            raise BufferFreed(f"use after free: buffer of {self.nbytes} bytes at offset "
                              f"{self.offset} {self._gone}")
        return self._pool

    @property
    def address(self) -> int:
        return self._live_pool().address + self.offset

    def _anchor(self) -> Any:
        block = self._live_pool().arena_block(self.offset, self.nbytes)
        self._anchors = _still_used(self._anchors)
        self._anchors.append(block)
        return block

    def memoryview(self) -> memoryview:
        return memoryview(self._anchor()).cast("B")

    def array(self, dtype: Any = np.uint8, shape: int | tuple[int, ...] | None = None
              ) -> np.ndarray:
        dt = np.dtype(dtype)
        if shape is None:
            shape = (self.nbytes // dt.itemsize,)
        elif isinstance(shape, int):
            shape = (shape,)
        count = int(np.prod(shape)) if shape else 1
        if count * dt.itemsize > self.nbytes:
            raise ValueError(f"shape {shape} of {dt} needs {count * dt.itemsize} bytes; "
                             f"the buffer has {self.nbytes}")
        return np.frombuffer(self._anchor(), dtype=dt, count=count).reshape(shape)

    # DLPack, through NumPy's implementation of the protocol. Newer consumers pass
    # max_version / dl_device / copy; older NumPy only knows stream, so pass on only what
    # was given.
    def __dlpack__(self, *, stream: Any = None, **kwargs: Any) -> Any:
        given = {k: v for k, v in kwargs.items() if v is not None}
        if stream is not None:
            given["stream"] = stream
        return self.array(np.uint8).__dlpack__(**given)

    def __dlpack_device__(self) -> tuple[int, int]:
        return (1, 0)  # kDLCPU: pinned host memory is host memory to DLPack consumers

    def free(self) -> None:
        pool = self._pool
        if pool is None:
            what = "double free" if self._gone == _FREED else "free"
            raise BufferFreed(f"{what}: buffer of {self.nbytes} bytes at offset "
                              f"{self.offset} {self._gone}")
        self._anchors = _still_used(self._anchors)
        if self._anchors:
            raise BufferInUse(f"{len(self._anchors)} view(s) of this buffer (NumPy arrays, "
                              "memoryviews) are still alive; drop them before freeing")
        self._pool = None
        pool._release(self)

    def _detach(self, why: str) -> None:
        """The pool is going away: drop the pool and the dead anchors (live views keep the
        arena mapped on their own), and say why from now on."""
        self._anchors = []
        self._pool = None
        self._gone = why

    def __enter__(self) -> PinnedBuffer:
        return self

    def __exit__(self, *exc: object) -> None:
        # Locals made inside the block (`a = buf.array()`) outlive it, so leaving the block
        # is not the strict free(): the buffer is unusable at once, and its range goes back
        # to the pool when the last view of it dies, never while one can still reach it.
        pool = self._pool
        if pool is None:
            return
        alive = _still_used(self._anchors)
        self._anchors = []
        self._pool = None
        if not alive:
            pool._release(self)
            return
        tokens = [None] * len(alive)

        def one_gone() -> None:
            # May run inside the garbage collector, in any thread: take no lock here,
            # only hand the buffer to the pool, which releases it on its next call.
            # (list.pop is atomic; a second hand-over of the same buffer is ignored.)
            tokens.pop()
            if not tokens:
                pool._release_later(self)

        for anchor in alive:
            weakref.finalize(anchor, one_gone)

    def __len__(self) -> int:
        return self.nbytes

    def __repr__(self) -> str:
        state = "freed" if self._pool is None else f"offset {self.offset}"
        return f"<PinnedBuffer {self.nbytes} bytes, {state}>"
