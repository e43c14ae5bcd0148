"""A block of a pinned pool that NumPy, memoryview, DLPack and ONNX Runtime take as it is.

A PinnedBuffer is a handle: the pool's memory is reached through NumPy arrays made from
it. Every such array (and every view, slice, memoryview or DLPack capsule made from one)
hangs on the block's *anchor*, a 1-D uint8 array over the block that the pool keeps
(NumPy collapses chains of views down to it, because its own base is not an ndarray).
While anything but the pool references the anchor, something can still reach the
memory: free() refuses, and a `with` block left while views live hands the block to the
pool, which takes it back once the last view is gone. The check is one reference count.

How each consumer gets at the memory:
- NumPy: `np.asarray(buf)` is a zero-copy view with the buffer's dtype and shape, through
  `__array_interface__` (works on every Python); `buf.array(dtype, shape)` reinterprets.
- memoryview: `memoryview(buf)` and `np.frombuffer(buf)` use the buffer protocol, which a
  Python class can only export on Python 3.12+ (PEP 688, `__buffer__`). On 3.11 use
  `buf.memoryview()` (a flat byte view) or `memoryview(np.asarray(buf))` (typed).
- DLPack: `np.from_dlpack(buf)`, `torch.from_dlpack(buf)` get the dtype and shape.
- ONNX Runtime: see ainative.mem.ort, which binds buffers and pool arrays by address.
"""

from __future__ import annotations

import builtins
import math
import sys
from typing import TYPE_CHECKING, Any

import numpy as np

from ainative.mem.freelists import reserved_size

if TYPE_CHECKING:
    from ainative.mem.pool import PinnedPool

_FREED = "was already freed"
_RETIRED = "was retired when its pool was closed"
_LEFT = "left its `with` block"
_U8 = np.dtype(np.uint8)
_getrefcount = sys.getrefcount
_ndarray = np.ndarray


class BufferFreed(Exception):
    """The buffer was freed (or retired by close()): using it or freeing it again is a bug
    in the caller."""


class BufferInUse(Exception):
    """free() while NumPy arrays or memoryviews of the buffer are still alive: freeing
    would leave them pointing into memory the pool hands out again."""


# dtype specs seen (np.float32, "f4", a dtype) -> their dtype: np.dtype() costs more than
# the rest of a pool.empty() call. Bounded: specs are few in any program.
_DTYPES: dict[Any, np.dtype[Any]] = {}


def as_dtype(dtype: Any) -> np.dtype[Any]:
    """np.dtype(dtype), remembered."""
    try:
        return _DTYPES[dtype]
    except (KeyError, TypeError):
        dt = np.dtype(dtype)
        if len(_DTYPES) < 256:
            try:
                _DTYPES[dtype] = dt
            except TypeError:  # unhashable spec (a list of fields): not kept
                pass
        return dt


def as_shape(shape: Any) -> tuple[int, ...]:
    """A shape as a tuple of non-negative ints; TypeError/ValueError in one line."""
    if isinstance(shape, bool):
        raise TypeError(f"a shape must be an int or a tuple of ints, not {shape!r}")
    try:
        dims = (int(shape.__index__()),) if hasattr(shape, "__index__") else tuple(
            _dim(d) for d in shape)
    except TypeError:
        raise TypeError(f"a shape must be an int or a tuple of ints, not {shape!r}") from None
    if any(d < 0 for d in dims):
        raise ValueError(f"shape {dims} has a negative dimension")
    return dims


def _dim(d: Any) -> int:
    if isinstance(d, bool) or not hasattr(d, "__index__"):
        raise TypeError
    return int(d.__index__())


class PinnedBuffer:
    """One allocation of a PinnedPool: `nbytes` bytes at `offset` in the pool's arena,
    with a dtype and shape (uint8 and (nbytes,) unless the pool was asked for others).

    Get one from `pool.alloc(...)`; give it back with `free()` or a `with` block. Use it
    as `np.asarray(buf)`, `buf.array(dtype, shape)`, `buf.memoryview()`,
    `np.from_dlpack(buf)` / `torch.from_dlpack(buf)`, or `memoryview(buf)` on 3.12+.
    A buffer dropped without free() stays allocated until the pool is closed. A buffer
    belongs to one thread at a time.
    """

    # _gone is set only once the buffer is done with: the pool's fast path sets five
    # slots, nothing more. Typed buffers are TypedPinnedBuffer, below.
    __slots__ = ("_gone", "_pool", "_stack", "_viewed", "nbytes", "offset")

    _pool: PinnedPool | None
    _viewed: bool  # views were made: free() must look at the anchor
    _stack: list[int]  # the free list the block goes back to
    _gone: str
    nbytes: int
    offset: int

    # --- state ---

    @property
    def freed(self) -> bool:
        """True once free() ran, the `with` block was left, or the pool was closed."""
        pool = self._pool
        return pool is None or pool._closed

    @property
    def reserved(self) -> int:
        """Bytes the pool set aside for this buffer (its size class, or whole pages)."""
        return reserved_size(self.nbytes)

    @property
    def dtype(self) -> np.dtype[Any]:
        """The element type `np.asarray(buf)` and DLPack consumers see (uint8 here; a
        buffer allocated with a dtype says so)."""
        return _U8

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape `np.asarray(buf)` and DLPack consumers see ((nbytes,) here; a buffer
        allocated with a shape says so)."""
        return (self.nbytes,)

    def _why_gone(self) -> str:
        pool = self._pool
        if pool is not None and pool._closed:
            return _RETIRED
        try:
            return str(self._gone)
        except AttributeError:
            return _FREED

    def _live_pool(self) -> PinnedPool:
        pool = self._pool
        if pool is None or pool._closed:
            raise BufferFreed(f"use after free: buffer of {self.nbytes} bytes at offset "
                              f"{self.offset} {self._why_gone()}")
        return pool

    @property
    def address(self) -> int:
        """The buffer's first byte in this process (what ctypes, CUDA or ORT take)."""
        return self._live_pool().address + self.offset

    # --- views ---

    def _base(self) -> np.ndarray:
        """The block's anchor: every view of this buffer is made from it."""
        pool = self._pool
        if pool is None or pool._closed:
            self._live_pool()  # raises, saying why
        try:
            anchor = pool._anchors[self.offset]  # type: ignore[union-attr]
        except KeyError:
            anchor = pool._anchor(self.offset, reserved_size(self.nbytes))  # type: ignore[union-attr]
        self._viewed = True
        return anchor

    def array(self, dtype: Any = None, shape: Any = None) -> np.ndarray:
        """A NumPy view of the buffer (no copy): its own dtype and shape by default, or
        `dtype` with `shape` (default: as many elements as fit). ValueError if the shape
        needs more bytes than the buffer has."""
        pool = self._pool
        if pool is None or pool._closed:
            self._live_pool()  # raises, saying why
        try:  # (what _base does, inline: this is the staging path)
            base = pool._anchors[self.offset]  # type: ignore[union-attr]
        except KeyError:
            base = self._base()
        self._viewed = True
        if dtype is None and shape is None:
            return _ndarray(self.shape, self.dtype, base)
        try:
            dt = _DTYPES[dtype]
        except (KeyError, TypeError):
            dt = as_dtype(dtype if dtype is not None else self.dtype)
        if shape is None:
            shape = count = self.nbytes // dt.itemsize
        elif shape.__class__ is int:
            count = shape
        else:
            if shape.__class__ is not tuple:
                shape = as_shape(shape)  # a list, or a one-line error
            count = 1
            for d in shape:
                count *= d
            if count.__class__ is not int:  # NumPy ints, or a one-line error
                shape = as_shape(shape)
                count = math.prod(shape)
        if count * dt.itemsize > self.nbytes or count < 0:
            dims = as_shape(shape)
            raise ValueError(f"shape {dims} of {dt} needs {math.prod(dims) * dt.itemsize} "
                             f"bytes; the buffer has {self.nbytes}")
        return _ndarray(shape, dt, base)

    def memoryview(self) -> builtins.memoryview:
        """A flat, writable byte memoryview of the buffer (format 'B', len == nbytes).

        On Python 3.11 this (or `memoryview(np.asarray(buf))` for a typed one) is the way
        to a memoryview: `memoryview(buf)` itself needs PEP 688 (Python 3.12+)."""
        return builtins.memoryview(self._base())[:self.nbytes]  # type: ignore[arg-type]

    @property
    def __array_interface__(self) -> dict[str, Any]:
        """NumPy's array interface: `np.asarray(buf)` is a zero-copy view with the
        buffer's dtype and shape, hanging on the block's anchor (so free() sees it)."""
        dt = self.dtype
        out: dict[str, Any] = {"version": 3, "shape": self.shape, "typestr": dt.str,
                               "data": self._base()}
        if dt.fields is not None or dt.subdtype is not None:
            out["descr"] = dt.descr
        return out

    def __buffer__(self, flags: int) -> builtins.memoryview:
        """The buffer protocol (PEP 688, Python 3.12+): `memoryview(buf)`,
        `np.frombuffer(buf)`, `bytes(buf)`. Typed like `np.asarray(buf)`."""
        return builtins.memoryview(self.array())  # type: ignore[arg-type]

    def __release_buffer__(self, view: builtins.memoryview) -> None:
        """End of a `__buffer__` export (Python 3.12+)."""
        view.release()

    def __dlpack__(self, *, stream: Any = None, **kwargs: Any) -> Any:
        """A DLPack capsule of the buffer with its dtype and shape, through NumPy's
        exporter. Newer consumers pass max_version / dl_device / copy; older NumPy only
        knows stream, so only what was given is passed on."""
        given = {k: v for k, v in kwargs.items() if v is not None}
        if stream is not None:
            given["stream"] = stream
        return self.array().__dlpack__(**given)

    def __dlpack_device__(self) -> tuple[int, int]:
        """(kDLCPU, 0): pinned host memory is host memory to DLPack consumers."""
        return (1, 0)

    # --- giving it back ---

    def _in_use(self, pool: PinnedPool) -> bool:
        anchor = pool._anchors.get(self.offset)
        # References: the pool's table, the local, getrefcount's argument. More: views.
        return anchor is not None and _getrefcount(anchor) > 3

    def free(self) -> None:
        """Give the block back to the pool now. BufferInUse (and nothing changes) while
        views of it are alive; BufferFreed on a second free or after the pool closed."""
        pool = self._pool
        if pool is None or pool._closed:
            what = "double free" if pool is None else "free"
            raise BufferFreed(f"{what}: buffer of {self.nbytes} bytes at offset "
                              f"{self.offset} {self._why_gone()}")
        if self._viewed and self._in_use(pool):
            raise BufferInUse("NumPy arrays or memoryviews of this buffer are still alive; "
                              "drop them before freeing (or use `with`, which frees when "
                              "the last of them dies)")
        self._pool = None
        self._stack.append(self.offset)

    def __enter__(self) -> PinnedBuffer:
        return self

    def __exit__(self, *exc: object) -> None:
        # Locals made inside the block (`a = buf.array()`) outlive it, so leaving the block
        # is not the strict free(): the buffer is unusable at once, and its block goes back
        # to the pool when the last view of it dies, never while one can still reach it.
        pool = self._pool
        if pool is None or pool._closed:
            return
        if not (self._viewed and self._in_use(pool)):
            self.free()
            return
        self._pool = None
        self._gone = _LEFT
        pool._lend(self.offset, reserved_size(self.nbytes))

    def __len__(self) -> int:
        return self.nbytes

    def __repr__(self) -> str:
        pool = self._pool
        state = (f"offset {self.offset}" if pool is not None and not pool._closed
                 else self._why_gone())
        return f"<PinnedBuffer {self.nbytes} bytes {self.dtype} {self.shape}, {state}>"


class TypedPinnedBuffer(PinnedBuffer):
    """A PinnedBuffer allocated with a dtype and/or shape (`pool.alloc(shape=...,
    dtype=...)`): `np.asarray(buf)`, `buf.array()` and DLPack consumers see those."""

    __slots__ = ("_dtype", "_shape")

    _dtype: np.dtype[Any]
    _shape: tuple[int, ...]

    @property
    def dtype(self) -> np.dtype[Any]:
        """The element type the buffer was allocated with."""
        return self._dtype

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape the buffer was allocated with."""
        return self._shape
