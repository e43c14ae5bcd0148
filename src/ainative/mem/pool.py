"""PinnedPool: locked, pre-faulted host memory for inference buffers."""

from __future__ import annotations

import ctypes
import os
import threading
import time
from typing import Any

from ainative.core.classes import parse_size
from ainative.mem import cuda
from ainative.mem.allocator import PAGE, Allocator, OutOfSpace
from ainative.mem.arena import Arena, gpu_numa_node, numa_nodes
from ainative.mem.buffer import PinnedBuffer
from ainative.mem.limits import MemlockError, lock_limits


class PoolExhausted(MemoryError):
    """No free range fits the request; the message carries the pool's stats."""


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
        size = parse_size(capacity) if isinstance(capacity, str) else int(capacity)
        if size <= 0:
            raise ValueError("capacity must be positive")
        size = (size + PAGE - 1) // PAGE * PAGE
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
        try:
            self._arena = Arena(size, want_lock, hugepages, numa_node)
        except OSError as e:
            if want_lock and lock == "try":
                self._arena = Arena(size, False, hugepages, numa_node)
                lock_reason = f"UNLOCKED: mlock failed ({e.strerror})"
            elif want_lock:
                raise MemlockError(f"{e}; {limits.explain(size)}") from e
            else:
                raise
        if self._arena.info.locked:
            lock_reason = "mlock"
        self._arena.info.lock_reason = lock_reason
        self._alloc = Allocator(size)
        self.address = self._arena.address
        self.capacity = size
        self.cuda_registered = False
        self.cuda_reason = "not requested"
        self._cuda: cuda.CudaRuntime | None = None
        if cuda_register:
            rt, why = cuda.find_runtime()
            if rt is not None:
                code = rt.register(self.address, size)
                if code == 0:
                    self._cuda, self.cuda_registered = rt, True
                    why = f"registered through {rt.name}"
                else:
                    why = f"cudaHostRegister failed with error {code}"
            self.cuda_reason = why
        self._closed = False
        self._report = report_to_daemon
        self._last_report = 0.0
        self._report_lock = threading.Lock()
        self._maybe_report(force=True)

    # --- allocation ---

    def alloc(self, nbytes: int) -> PinnedBuffer:
        if self._closed:
            raise ValueError("the pool is closed")
        try:
            a = self._alloc.alloc(int(nbytes))
        except OutOfSpace:
            s = self.stats()
            raise PoolExhausted(
                f"cannot allocate {nbytes} bytes from pool {self.name!r}: "
                f"{s['free']} of {s['total']} bytes free, largest free extent "
                f"{s['largest_free_extent']}, {s['blocks_in_use']} blocks in use, "
                f"fragmentation {s['fragmentation']:.2f}, failures {s['failures']}") from None
        self._maybe_report()
        return PinnedBuffer(self, a.offset, int(nbytes), a.size)

    def _release(self, buf: PinnedBuffer) -> None:
        self._alloc.free(buf.offset)
        self._maybe_report()

    def arena_block(self, offset: int, nbytes: int) -> ctypes.Array[ctypes.c_char]:
        if self._closed:
            raise ValueError("the pool is closed")
        return self._arena.block(offset, nbytes)

    # --- state ---

    @property
    def locked(self) -> bool:
        return self._arena.info.locked

    def stats(self) -> dict[str, Any]:
        s: dict[str, Any] = dict(self._alloc.snapshot())
        info = self._arena.info
        s.update({
            "name": self.name, "locked": info.locked, "lock": info.lock_reason,
            "hugepages": info.hugepages, "hugepages_detail": info.hugepage_reason,
            "numa_node": info.numa_node, "numa_detail": info.numa_reason,
            "cuda_registered": self.cuda_registered, "cuda_detail": self.cuda_reason,
        })
        return s

    def _maybe_report(self, force: bool = False) -> None:
        # At most once a second, on a short-lived thread: the hot path never waits on the
        # daemon, and a pool works the same without one.
        if not self._report:
            return
        now = time.monotonic()
        if not force and now - self._last_report < 1.0:
            return
        self._last_report = now
        stats = self.stats()

        def send() -> None:
            from ainative.daemon.client import report_pool

            with self._report_lock:
                report_pool(stats)

        threading.Thread(target=send, daemon=True, name="ainative-pool-report").start()

    def close(self) -> None:
        if self._closed:
            return
        if self._cuda is not None:
            self._cuda.unregister(self.address)
        self._closed = True
        self._arena.close()

    def __enter__(self) -> PinnedPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        s = self._alloc.snapshot()
        return (f"<PinnedPool {self.name!r} {self.capacity >> 20} MiB, used {s['used']}, "
                f"locked={self.locked}, cuda={self.cuda_registered}, pid {os.getpid()}>")
