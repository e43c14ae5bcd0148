"""PinnedPool: locked, pre-faulted host memory for inference buffers, used as NumPy arrays.

The pool maps one arena (arena.py), carves it with an exact allocator (allocator.py), and
keeps given-back blocks on free lists per reserved size (freelists.py), so the common
case, a buffer taken and given back per request, is a list pop and a list append.
Buffers come out as PinnedBuffer handles (buffer.py: `alloc`, `free`) or as plain NumPy
arrays (`empty`, `zeros`) whose block comes back once the last view of it is gone.
Either way every view hangs on the block's anchor (buffer.py), so one reference count
tells whether a block is still reachable: free() refuses, lent blocks are taken back,
and close() keeps the mapping, by that count alone.
"""

from __future__ import annotations

import itertools
import math
import operator
import os
import sys
import threading
import weakref
from collections import deque
from typing import Any

import numpy as np

from ainative.mem import cuda
from ainative.mem.allocator import PAGE, SMALL_MAX, Allocator, OutOfSpace
from ainative.mem.arena import Arena, ArenaInfo, LockFailed, gpu_numa_node, numa_nodes
from ainative.mem.buffer import _DTYPES, PinnedBuffer, TypedPinnedBuffer, as_dtype, as_shape
from ainative.mem.freelists import CLASS_OF_GRANULE, FreeLists, reserved_size
from ainative.mem.limits import MemlockError, lock_limits
from ainative.mem.reporting import watch
from ainative.units import UnitError, parse_size

_new = object.__new__
_frombuffer = np.frombuffer
_ndarray = np.ndarray
_getrefcount = sys.getrefcount


class PoolExhausted(MemoryError):
    """No free range fits the request; the message carries the pool's stats."""


class _ClosedArena:
    """What a closed pool keeps of its arena: the description, not the mapping."""

    def __init__(self, info: ArenaInfo) -> None:
        self.info = info
        self.address = 0


class _NoBlocks(list[int]):
    """A closed pool's free lists: always empty, appends dropped."""

    def pop(self, index: Any = -1) -> int:
        raise IndexError("pool closed")

    def append(self, item: int) -> None:
        pass


def as_size(value: Any, what: str = "size") -> int:
    """Bytes from an int (or NumPy integer) or a size string like "1MiB": the pool's one
    rule for sizes. Floats, bools and anything else are a one-line ValueError."""
    if isinstance(value, str | bool):
        n = parse_size(value)  # bool: parse_size's own one-line refusal
    else:
        try:
            n = parse_size(operator.index(value))
        except TypeError:
            raise UnitError(f"{what} must be a number of bytes or text like '1MiB', "
                            f"not {value!r}") from None
    return n


class PinnedPool:
    """One locked arena, an allocator over it, and free lists in front of it.

    capacity: bytes, as an int or a size string ("256MiB").
    lock: "required" (default: fail with MemlockError naming the limit when locking is
    not allowed), "try" (fall back to an unlocked pool that says so), or False.
    numa_node: None binds to the GPU's node when NVML knows it and the machine has
    several nodes; an int binds to that node.
    hugepages: "auto" (when THP allows), True (fail without), or False.
    cuda_register: register the arena with CUDA (cudaHostRegister) when a GPU and a CUDA
    runtime are present; stats() says what happened.
    report_to_daemon: tell a running ainative daemon about the pool, at most once a
    second and only when something changed, from a background thread.

    Use it as a context manager, or call close().
    """

    def __init__(self, capacity: int | str = "256MiB", numa_node: int | None = None,
                 hugepages: str | bool = "auto", lock: str | bool = "required",
                 cuda_register: bool = True, name: str = "pool",
                 report_to_daemon: bool = True) -> None:
        size = as_size(capacity, "capacity")
        if size <= 0:
            raise ValueError("capacity must be positive")
        size = (size + PAGE - 1) // PAGE * PAGE
        if lock not in ("required", "try", "never", True, False):
            raise ValueError(f"lock must be 'required', 'try' or False, not {lock!r}")
        if hugepages not in ("auto", "never", True, False):
            raise ValueError(f"hugepages must be 'auto', True or False, not {hugepages!r}")
        self.name = name
        limits = lock_limits()
        want_lock = lock not in (False, "never")
        lock_reason = "not requested"
        if want_lock and not limits.allows(size):
            if lock == "try":
                want_lock = False
                lock_reason = "UNLOCKED: " + limits.explain(size)
            else:
                raise MemlockError(limits.explain(size))
        if numa_node is None and len(numa_nodes()) > 1:
            numa_node = gpu_numa_node()
        arena: Arena
        try:
            arena = Arena(size, want_lock, hugepages, numa_node)
        except LockFailed as e:
            # The limits allowed it, yet the kernel said no (e.g. ENOMEM: not enough
            # unlockable RAM left).
            if lock != "try":
                raise MemlockError(f"{e}; {limits.explain(size)}") from e
            arena = Arena(size, False, hugepages, numa_node)
            lock_reason = f"UNLOCKED: mlock failed ({e.strerror})"
        if not arena.info.locked:
            # Locked: the arena names how (mlock, VirtualLock); else the reason here.
            arena.info.lock_reason = lock_reason
        self._arena: Arena | _ClosedArena = arena
        # Tells whether the mapping still exists after close() (views may keep it).
        self._arena_ref: weakref.ref[Arena] = weakref.ref(arena)
        # The whole arena as bytes: every array the pool hands out is np.frombuffer of it,
        # and hangs on the arena through it (the block holds the Arena object).
        self._mv: memoryview | None = memoryview(arena.block(0, size)).cast("B")
        self._alloc = Allocator(size)
        self._fl = FreeLists(self._alloc)
        self._by_granule = self._fl.by_granule
        self.address = arena.address
        self.capacity = size
        self.cuda_registered = False
        self.cuda_reason = "not requested"
        if cuda_register:
            self._register_cuda(arena)
        self._closed = False
        self._state_lock = threading.Lock()
        self._count = itertools.count()  # allocations handed out; next() is atomic
        self._failures = 0
        # Each block's anchor (buffer.py), made on first view and kept while the block is
        # the pool's: offset -> 1-D uint8 array over the block. Views hang on it, so its
        # reference count says whether any is alive.
        self._anchors: dict[int, np.ndarray] = {}
        # Blocks out with no handle (empty/zeros, a `with` left while views lived): one
        # ring of offsets per reserved size, oldest first. A block is back once its anchor
        # is referenced by the pool alone; the pool looks at the oldest when it needs a
        # block of that size (a server's previous request is usually done with its
        # input by then), and at all of them in stats() and when space runs out.
        self._rings: dict[int, deque[int]] = {size: deque() for size in self._fl.stacks}
        self._ring_by_granule: list[deque[int]] = [deque()] + [
            self._rings[size] for size in CLASS_OF_GRANULE[1:]]
        self._reclaim_lock = threading.Lock()
        # After close(): blocks views still reach, by id(weakref to the anchor); their
        # allocator free waits in _later for the next pool call (a weakref callback may
        # run inside the garbage collector while this thread holds the allocator's lock).
        self._closing: dict[int, tuple[weakref.ref[np.ndarray], int]] = {}
        self._later: deque[int] = deque()
        self._report = report_to_daemon
        if report_to_daemon:
            watch(self)

    def _register_cuda(self, arena: Arena) -> None:
        rt, why = cuda.find_runtime()
        if rt is not None:
            try:
                code = rt.register(self.address, self.capacity)
            except Exception as e:  # cupy raises where the others return a code
                code, why = -1, f"cudaHostRegister failed: {e}"
            else:
                why = f"cudaHostRegister failed with error {code}"
            if code == 0:
                self.cuda_registered = True
                why = f"registered through {rt.name}"
                # Unregistered right before the unmap, which may come after close()
                # when views outlive the pool.
                addr, unreg = self.address, rt.unregister
                arena.before_unmap = lambda: unreg(addr)
        self.cuda_reason = why

    # --- allocation ---

    def alloc(self, size: int | str | None = None, *, dtype: Any = None,
              shape: Any = None) -> PinnedBuffer:
        """A PinnedBuffer of `size` bytes: an int or a size string ("1MiB").

        With `dtype` and/or `shape` the buffer is typed: `np.asarray(buf)` and DLPack
        consumers see that dtype and shape, and `size` defaults to what they need.
        Raises PoolExhausted (a MemoryError carrying the stats) when nothing fits,
        ValueError for a bad size or a closed pool. Give it back with free() or `with`.
        """
        # The fast path: a plain int with a block on its free list.
        if size.__class__ is int and 0 < size and dtype is None and shape is None:
            stack = (self._by_granule[(size + 63) >> 6] if size <= SMALL_MAX
                     else self._fl.stack((size + PAGE - 1) & -PAGE))
            try:
                off = stack.pop()  # type: ignore[union-attr]
            except IndexError:
                pass
            else:
                b = _new(PinnedBuffer)
                b._pool = self
                b._stack = stack  # type: ignore[assignment]
                b.offset = off
                b.nbytes = size
                b._viewed = False
                next(self._count)
                return b
        return self._alloc_slow(size, dtype, shape)

    def _alloc_slow(self, size: Any, dtype: Any, shape: Any) -> PinnedBuffer:
        dt = None if dtype is None else as_dtype(dtype)
        dims = None if shape is None else as_shape(shape)
        if size is None:
            if dims is None:
                raise ValueError("alloc needs a size, or a shape (and dtype)")
            nbytes = math.prod(dims) * (dt.itemsize if dt is not None else 1)
        else:
            nbytes = as_size(size)
        if nbytes <= 0:
            raise ValueError(f"allocation size must be positive, not {size!r}")
        if dt is not None or dims is not None:
            dt = dt if dt is not None else np.dtype(np.uint8)
            if dims is None:
                dims = (nbytes // dt.itemsize,)
            need = math.prod(dims) * dt.itemsize
            if need > nbytes:
                raise ValueError(f"shape {dims} of {dt} needs {need} bytes; asked for "
                                 f"{nbytes}")
        off = self._take(nbytes)
        b = _new(PinnedBuffer if dt is None else TypedPinnedBuffer)
        b._pool = self
        b._stack = self._fl.stack(reserved_size(nbytes))
        b.offset = off
        b.nbytes = nbytes
        b._viewed = False
        if isinstance(b, TypedPinnedBuffer) and dt is not None and dims is not None:
            b._dtype = dt
            b._shape = dims
        next(self._count)
        return b

    def _take(self, nbytes: int) -> int:
        """A block's offset from its free list, else from lent blocks whose views are
        gone, else from the allocator; when nothing fits, everything is reclaimed and
        trimmed and the allocator asked once more before PoolExhausted."""
        if self._closed:
            raise ValueError(f"pool {self.name!r} is closed")
        self._drain()
        reserved = reserved_size(nbytes)
        stack = self._fl.stack(reserved)
        try:
            return stack.pop()
        except IndexError:
            pass
        ring = self._rings.get(reserved)
        if ring:
            off = self._probe(ring, 4)
            if off >= 0:
                return off
        for attempt in (0, 1):
            try:
                return self._alloc.alloc(reserved).offset
            except OutOfSpace:
                if attempt == 0:
                    # Lent blocks no view reaches, and every free list, back to the
                    # allocator: coalesced, they may hold what no single list did.
                    self._reclaim()
                    self.trim()
        self._failures += 1
        s = self.stats()
        raise PoolExhausted(
            f"cannot allocate {nbytes} bytes from pool {self.name!r}: "
            f"{s['free']} of {s['total']} bytes free, largest free extent "
            f"{s['largest_free_extent']}, {s['blocks_in_use']} blocks in use, "
            f"fragmentation {s['fragmentation']:.2f}, failures {s['failures']}")

    def empty(self, shape: Any, dtype: Any = float) -> np.ndarray:
        """A NumPy array of `shape` and `dtype` (float64 by default, as numpy.empty) in
        pool memory, contents undefined. There is no handle to free: the block goes back
        to the pool once the array and every view of it are gone (the pool looks when
        it next needs a block of that size, and in stats()). A zero-size array needs no
        memory and is a plain NumPy array."""
        try:
            dt = _DTYPES[dtype]
        except (KeyError, TypeError):
            dt = as_dtype(dtype)
        try:
            if shape.__class__ is int:
                count = shape
            else:
                count = 1
                for d in shape:
                    count *= d
            nbytes = count * dt.itemsize
            if not 0 < nbytes <= SMALL_MAX:
                return self._empty_other(shape, dt, nbytes)
            g = (nbytes + 63) >> 6
        except TypeError:  # not a shape: a one-line error from the careful path
            as_shape(shape)
            raise
        ring = self._ring_by_granule[g]
        # The oldest block of this size lent out: back if only the pool references its
        # anchor. (popleft first, so another thread cannot take the same one meanwhile.)
        try:
            off = ring.popleft()
            anchor = self._anchors[off]
            if _getrefcount(anchor) > 3:  # the table, the local, the argument
                ring.append(off)
                off, anchor = self._block(nbytes)
        except IndexError:
            off, anchor = self._block(nbytes)
        try:
            out = _ndarray(shape, dt, anchor)
        finally:
            # Only now (until the view exists the block looks free), and also when NumPy
            # refused the shape: the block is lent, and back at once with no view.
            ring.append(off)
        next(self._count)
        return out

    def _empty_other(self, shape: Any, dt: np.dtype[Any], nbytes: int) -> np.ndarray:
        """empty() for a zero-size or large array, or a bad shape."""
        if nbytes <= 0:
            shape = as_shape(shape)  # a one-line error for a negative dimension
            return np.empty(shape, dt)
        ring = self._ring(reserved_size(nbytes))
        off = self._probe(ring, 1)
        if off < 0:
            off, anchor = self._block(nbytes)
        else:
            anchor = self._anchors[off]
        try:
            out = _ndarray(shape, dt, anchor)
        finally:
            ring.append(off)
        next(self._count)
        return out

    def _block(self, nbytes: int) -> tuple[int, np.ndarray]:
        """A block for empty(), with its anchor: from the free list or _take."""
        try:
            off = self._fl.stack(reserved_size(nbytes)).pop()
        except IndexError:
            off = self._take(nbytes)
        try:
            return off, self._anchors[off]
        except KeyError:
            return off, self._anchor(off, reserved_size(nbytes))

    def zeros(self, shape: Any, dtype: Any = float) -> np.ndarray:
        """As empty(), filled with zeros."""
        a = self.empty(shape, dtype)
        a.fill(0)
        return a

    # --- lifetimes ---

    def _anchor(self, offset: int, reserved: int) -> np.ndarray:
        """The anchor of the block at offset (buffer.py), made on first use."""
        try:
            return self._anchors[offset]
        except KeyError:
            pass
        if self._mv is None:
            raise ValueError(f"pool {self.name!r} is closed")
        anchor = _frombuffer(self._mv, np.uint8, reserved, offset)
        return self._anchors.setdefault(offset, anchor)

    def _ring(self, reserved: int) -> deque[int]:
        try:
            return self._rings[reserved]
        except KeyError:
            return self._rings.setdefault(reserved, deque())

    def _lend(self, offset: int, reserved: int) -> None:
        """The block at offset has no handle now; it comes back once no view reaches it."""
        self._ring(reserved).append(offset)

    def _probe(self, ring: deque[int], k: int) -> int:
        """A block of `ring` no view reaches any more, taken off the ring, or -1; looks at
        no more than k (busy ones go to the back), so long-lived arrays never make a
        call slow. The rest wait for _reclaim (stats(), or space running out)."""
        anchors = self._anchors
        for _ in range(k):
            try:
                off = ring.popleft()
            except IndexError:
                return -1
            if _getrefcount(anchors[off]) > 2:  # the table, the argument: more are views
                ring.append(off)
            else:
                return off
        return -1

    def _reclaim(self) -> int:
        """Every lent block no view reaches goes back on its free list; returns how many."""
        if not self._reclaim_lock.acquire(blocking=False):
            return 0  # another thread is at it
        try:
            back = 0
            for reserved, ring in list(self._rings.items()):
                for _ in range(len(ring)):
                    off = self._probe(ring, 1)
                    if off >= 0:
                        self._fl.give(off, reserved)
                        back += 1
            return back
        finally:
            self._reclaim_lock.release()

    def _returned(self, ref: weakref.ref[np.ndarray]) -> None:
        # After close(): the last view of a block died. Maybe inside the garbage collector,
        # in any thread: a deque append only.
        item = self._closing.pop(id(ref), None)
        if item is not None:
            self._later.append(item[1])

    def _drain(self) -> None:
        while self._later:
            try:
                off = self._later.popleft()
            except IndexError:  # another thread took the last one
                return
            self._alloc.free(off)

    def trim(self) -> int:
        """Hand the blocks on the free lists back to the allocator, so empty slabs
        coalesce into extents any size can use. The pool does this by itself when an
        allocation does not fit and in stats(); returns the bytes handed back."""
        self._drain()
        total = 0
        for off, size in self._fl.trim():
            self._anchors.pop(off, None)  # the range may be carved differently next time
            total += size
        return total

    # --- state ---

    @property
    def locked(self) -> bool:
        """True when the arena is mlock'ed (see stats()['lock'] for why not)."""
        return self._arena.info.locked

    @property
    def closed(self) -> bool:
        """True after close()."""
        return self._closed

    def stats(self) -> dict[str, Any]:
        """The pool's state: total, used, free, requested, blocks_in_use,
        largest_free_extent, fragmentation, peak, alloc_count, free_count, failures,
        rounding_overhead, slabs, lent (blocks out as arrays with no handle), locking,
        huge pages, NUMA and CUDA details, and closed (with closed_detail while views
        keep a closed pool's memory mapped).

        Lent blocks whose views are gone are taken back and the free lists handed to
        the allocator first (trim), so the figures are the allocator's own. `requested`
        counts a block at its reserved size; `peak` is the most the pool reserved at
        once, free-list blocks included.
        """
        self._reclaim()
        self.trim()
        s: dict[str, Any] = dict(self._alloc.snapshot())
        count = self._alloc_count()
        s["alloc_count"] = count
        s["free_count"] = count - int(s["blocks_in_use"])
        s["failures"] = self._failures
        s["lent"] = sum(len(r) for r in list(self._rings.values())) + len(self._closing)
        info = self._arena.info
        s.update({
            "name": self.name, "locked": info.locked, "lock": info.lock_reason,
            "hugepages": info.hugepages, "hugepages_detail": info.hugepage_reason,
            "numa_node": info.numa_node, "numa_detail": info.numa_reason,
            "cuda_registered": self.cuda_registered, "cuda_detail": self.cuda_reason,
            "closed": self._closed,
        })
        if self._closed and self._arena_ref() is not None:
            s["closed_detail"] = (
                f"closed, but {s['blocks_in_use']} block(s), {s['used']} bytes, are still "
                "reachable through NumPy arrays / memoryviews / DLPack capsules: the arena "
                "stays mapped" + (" and locked" if info.locked else "")
                + " until the last of them dies")
        return s

    def _alloc_count(self) -> int:
        # itertools.count has no getter; its repr is "count(N)".
        return int(repr(self._count)[6:-1])

    def _fingerprint(self) -> tuple[int, ...]:
        """Cheap, and changes whenever stats() would (the daemon reporter polls it)."""
        blocks, _ = self._fl.cached()
        st = self._alloc.stats
        lent = sum(len(r) for r in list(self._rings.values()))
        return (self._alloc_count(), st.alloc_count, st.free_count, blocks, lent,
                len(self._closing), len(self._later), self._failures, int(self._closed))

    def close(self) -> None:
        """Stop allocating and give the memory back, as far as nothing can still reach it.

        Buffers still allocated are retired: using or freeing them raises BufferFreed.
        Blocks that no NumPy array, memoryview or DLPack capsule reaches go back at once.
        Blocks that views still reach stay allocated, and the arena stays mapped (and
        locked, and registered with CUDA) until the last of those views dies; stats()
        counts them in `used` and says so in `closed_detail`. Closing twice is fine.

        Why not refuse while views live: a pool left by an exception, or a server
        shutting down while a response still holds an output array, would then either
        fail its shutdown (an error in __exit__ hides the real one) or have to leak the
        pool. Why not unmap: views into unmapped memory crash the process on the next
        touch, and views into recycled memory silently read another request's data.
        Keeping the mapping costs exactly the memory still referenced, and says so.
        """
        with self._state_lock:
            if self._closed:
                return
            self._closed = True
        # From here the fast paths find no block (see _NoBlocks) and fall through to
        # the checked path, which refuses.
        self._by_granule = [None] + [_NoBlocks()] * (len(self._by_granule) - 1)
        with self._reclaim_lock:
            pass  # a reclaim under way in another thread has finished
        for ring in list(self._rings.values()):
            ring.clear()  # their blocks are among the live ones below
        self.trim()
        for a in self._alloc.live():
            anchor = self._anchors.get(a.offset)
            # References: the table, the local, getrefcount's argument; more are views.
            if anchor is not None and _getrefcount(anchor) > 3:
                ref = weakref.ref(anchor, self._returned)
                self._closing[id(ref)] = (ref, a.offset)
            else:
                self._alloc.free(a.offset)
            del anchor
        self._anchors.clear()
        # Views hold the arena through the memoryview they were made from; with none
        # left, these are the last references and the arena is unmapped right here.
        self._mv = None
        self._arena = _ClosedArena(self._arena.info)
        if self._report:
            watch(self, final=True)

    def __enter__(self) -> PinnedPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        s = self._alloc.snapshot()
        return (f"<PinnedPool {self.name!r} {self.capacity >> 20} MiB, used {s['used']}, "
                f"locked={self.locked}, cuda={self.cuda_registered}, pid {os.getpid()}>")

