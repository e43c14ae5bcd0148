"""PinnedPool: locked, pre-faulted host memory for inference buffers."""

from __future__ import annotations

import ctypes
import os
import sys
import threading
import time
from collections import deque
from typing import Any

from ainative.mem import cuda
from ainative.mem.allocator import PAGE, Allocator, OutOfSpace
from ainative.mem.arena import Arena, ArenaInfo, LockFailed, gpu_numa_node, numa_nodes
from ainative.mem.buffer import PinnedBuffer
from ainative.mem.limits import MemlockError, lock_limits
from ainative.units import parse_size


class PoolExhausted(MemoryError):
    """No free range fits the request; the message carries the pool's stats."""


class _ClosedArena:
    """What a closed pool keeps of its arena: the description, not the mapping."""

    def __init__(self, info: ArenaInfo) -> None:
        self.info = info
        self.address = 0

    def block(self, offset: int, nbytes: int) -> ctypes.Array[ctypes.c_char]:
        raise ValueError("the arena is unmapped")


class PinnedPool:
    """One locked arena and an allocator over it.

    lock: "required" (default: fail with MemlockError naming the limit when locking is
    not allowed), "try" (fall back to an unlocked pool that says so), or False.
    numa_node: None binds to the GPU's node when NVML knows it and the machine has
    several nodes; an int binds to that node.
    """

    def __init__(self, capacity: int | str = "256MiB", numa_node: int | None = None,
                 hugepages: str | bool = "auto", lock: str | bool = "required",
                 cuda_register: bool = True, name: str = "pool",
                 report_to_daemon: bool = True) -> None:
        try:
            size = parse_size(capacity) if isinstance(capacity, str) else int(capacity)
        except ValueError:
            raise ValueError(f"capacity {capacity!r} is not a size like '256MiB' or "
                             "a number of bytes") from None
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
        self._arena: Arena | _ClosedArena
        try:
            self._arena = Arena(size, want_lock, hugepages, numa_node)
        except LockFailed as e:
            # The limits allowed it, yet the kernel said no (e.g. ENOMEM: not enough
            # unlockable RAM left).
            if lock != "try":
                raise MemlockError(f"{e}; {limits.explain(size)}") from e
            self._arena = Arena(size, False, hugepages, numa_node)
            lock_reason = f"UNLOCKED: mlock failed ({e.strerror})"
        if self._arena.info.locked:
            lock_reason = "mlock"
        self._arena.info.lock_reason = lock_reason
        self._alloc = Allocator(size)
        self.address = self._arena.address
        self.capacity = size
        self.cuda_registered = False
        self.cuda_reason = "not requested"
        if cuda_register:
            rt, why = cuda.find_runtime()
            if rt is not None:
                try:
                    code = rt.register(self.address, size)
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
                    self._arena.before_unmap = lambda: unreg(addr)
            self.cuda_reason = why
        self._closed = False
        self._unmap_deferred = False
        self._state_lock = threading.Lock()
        self._buffers: dict[int, PinnedBuffer] = {}  # live ones, so close() can retire them
        self._later: deque[PinnedBuffer] = deque()  # left `with` blocks, views now gone
        self._report = report_to_daemon
        self._last_report = 0.0
        self._report_timer: threading.Timer | None = None
        self._report_lock = threading.Lock()
        self._maybe_report(force=True)

    # --- allocation ---

    def alloc(self, nbytes: int) -> PinnedBuffer:
        if self._closed:
            raise ValueError(f"pool {self.name!r} is closed")
        self._drain()
        try:
            a = self._alloc.alloc(int(nbytes))
        except OutOfSpace:
            s = self.stats()
            raise PoolExhausted(
                f"cannot allocate {nbytes} bytes from pool {self.name!r}: "
                f"{s['free']} of {s['total']} bytes free, largest free extent "
                f"{s['largest_free_extent']}, {s['blocks_in_use']} blocks in use, "
                f"fragmentation {s['fragmentation']:.2f}, failures {s['failures']}") from None
        buf = PinnedBuffer(self, a.offset, int(nbytes), a.size)
        with self._state_lock:
            if self._closed:  # close() ran in another thread meanwhile
                self._alloc.free(a.offset)
                raise ValueError(f"pool {self.name!r} is closed")
            self._buffers[a.offset] = buf
        self._maybe_report()
        return buf

    def _release_later(self, buf: PinnedBuffer) -> None:
        # Called from weakref finalizers, possibly inside the garbage collector while this
        # thread holds one of the locks below: so only a deque append, no lock.
        self._later.append(buf)

    def _drain(self) -> None:
        while self._later:
            try:
                buf = self._later.popleft()
            except IndexError:  # another thread took the last one
                return
            self._give_back(buf)

    def _release(self, buf: PinnedBuffer) -> None:
        self._drain()
        self._give_back(buf)

    def _give_back(self, buf: PinnedBuffer) -> None:
        with self._state_lock:
            # After close() every buffer is retired already; a late release (the last view
            # of a buffer left by a `with` block dying) has nothing left to give back.
            if self._closed or self._buffers.get(buf.offset) is not buf:
                return
            del self._buffers[buf.offset]
            self._alloc.free(buf.offset)
        self._maybe_report()

    def arena_block(self, offset: int, nbytes: int) -> ctypes.Array[ctypes.c_char]:
        if self._closed:
            raise ValueError(f"pool {self.name!r} is closed")
        return self._arena.block(offset, nbytes)

    # --- state ---

    @property
    def locked(self) -> bool:
        return self._arena.info.locked

    def stats(self) -> dict[str, Any]:
        self._drain()
        s: dict[str, Any] = dict(self._alloc.snapshot())
        info = self._arena.info
        s.update({
            "name": self.name, "locked": info.locked, "lock": info.lock_reason,
            "hugepages": info.hugepages, "hugepages_detail": info.hugepage_reason,
            "numa_node": info.numa_node, "numa_detail": info.numa_reason,
            "cuda_registered": self.cuda_registered, "cuda_detail": self.cuda_reason,
            "closed": self._closed,
        })
        if self._unmap_deferred:
            s["closed_detail"] = "unmapped when the last NumPy array / memoryview of it dies"
        return s

    def _maybe_report(self, force: bool = False) -> None:
        # At most once a second, off the hot path: it never waits on the daemon, and a pool
        # works the same without one. A change inside the second is not dropped: one
        # timer sends the state as it is when the second is up.
        if not self._report:
            return
        with self._report_lock:
            now = time.monotonic()
            wait = 1.0 - (now - self._last_report)
            if not force and wait > 0:
                if self._report_timer is None:
                    self._report_timer = threading.Timer(wait, self._report_now)
                    self._report_timer.daemon = True
                    self._report_timer.start()
                return
            if self._report_timer is not None:
                self._report_timer.cancel()
                self._report_timer = None
            self._last_report = now
        threading.Thread(target=self._send, args=(self.stats(),), daemon=True,
                         name="ainative-pool-report").start()

    def _report_now(self) -> None:
        with self._report_lock:
            self._report_timer = None
            self._last_report = time.monotonic()
        self._send(self.stats())

    def _send(self, stats: dict[str, Any]) -> None:
        from ainative.ipc.client import report_pool

        report_pool(stats)

    def close(self) -> None:
        """Give the memory back. Buffers still allocated are retired (using them raises
        BufferFreed). NumPy arrays or memoryviews still alive keep the arena mapped until
        the last of them dies, so they never point into unmapped memory."""
        with self._state_lock:
            if self._closed:
                return
            self._closed = True
            retired = list(self._buffers.values())
            self._buffers.clear()
        for buf in retired:
            buf._detach("was retired when its pool was closed")
            self._alloc.free(buf.offset)
        # Blocks handed to views hold the arena; with none left, this is the last
        # reference and the arena is unmapped (and unlocked) right here.
        self._unmap_deferred = sys.getrefcount(self._arena) > 2
        self._arena = _ClosedArena(self._arena.info)
        self._maybe_report(force=True)

    def __enter__(self) -> PinnedPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        s = self._alloc.snapshot()
        return (f"<PinnedPool {self.name!r} {self.capacity >> 20} MiB, used {s['used']}, "
                f"locked={self.locked}, cuda={self.cuda_registered}, pid {os.getpid()}>")
