"""Pinned (locked, pre-faulted) host memory for inference buffers."""

from ainative.mem.buffer import BufferFreed, BufferInUse, PinnedBuffer, TypedPinnedBuffer
from ainative.mem.limits import MemlockError, lock_limits
from ainative.mem.pool import PinnedPool, PoolExhausted

__all__ = ["BufferFreed", "BufferInUse", "MemlockError", "PinnedBuffer", "PinnedPool",
           "PoolExhausted", "TypedPinnedBuffer", "lock_limits"]
