"""The pool's API as a NumPy user meets it (issue 13): the buffer protocol and
np.asarray/np.frombuffer/memoryview on a buffer, typed DLPack, strict sizes,
pool.empty/zeros arrays that give their memory back when the last view dies, close()
with live views, and docstrings on every public name. All on real pool memory."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import threading
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ainative.mem import BufferFreed, BufferInUse, PinnedBuffer, PinnedPool
from ainative.mem.buffer import reserved_size


@pytest.fixture
def pool() -> Any:
    with PinnedPool("16MiB", lock="try", report_to_daemon=False) as p:
        yield p


def _inside(pool: PinnedPool, a: np.ndarray) -> bool:
    return pool.address <= a.ctypes.data and a.ctypes.data + a.nbytes <= (
        pool.address + pool.capacity)


# --- a buffer as NumPy, memoryview and DLPack see it ---

def test_asarray_is_a_typed_zero_copy_view(pool: PinnedPool) -> None:
    buf = pool.alloc(shape=(4, 8), dtype=np.float32)
    assert buf.nbytes == 128 and buf.shape == (4, 8) and buf.dtype == np.float32
    a = np.asarray(buf)
    assert a.shape == (4, 8) and a.dtype == np.float32 and a.ctypes.data == buf.address
    a[...] = 7.5  # written through the view, read back through another
    assert (buf.array() == 7.5).all()
    assert np.asarray(pool.alloc(100)).dtype == np.uint8  # untyped: bytes
    with pytest.raises(BufferInUse):
        buf.free()  # the asarray view is alive
    del a
    buf.free()


def test_memoryview_and_frombuffer(pool: PinnedPool) -> None:
    buf = pool.alloc(64, dtype=np.int32)
    np.asarray(buf)[:] = np.arange(16, dtype=np.int32)
    mv = buf.memoryview()  # every Python: flat bytes
    assert mv.format == "B" and len(mv) == 64 and not mv.readonly
    mv[0] = 9
    assert np.asarray(buf)[0] == 9
    typed = memoryview(np.asarray(buf))  # the documented 3.11 way to a typed one
    assert typed.format == "i" and typed.shape == (16,)
    assert np.frombuffer(buf.memoryview(), np.int32)[5] == 5
    # What memoryview(buf) calls on 3.12+ (PEP 688), called directly so 3.11 runs it too.
    exported = buf.__buffer__(0)
    assert exported.format == "i" and exported.shape == (16,) and exported[3] == 3
    buf.__release_buffer__(exported)
    if sys.version_info >= (3, 12):
        assert memoryview(buf).shape == (16,)  # type: ignore[arg-type]
        assert np.frombuffer(buf, np.int32)[5] == 5  # type: ignore[call-overload]
    else:
        with pytest.raises(TypeError):
            memoryview(buf)  # type: ignore[arg-type]
        assert "3.12" in (PinnedBuffer.memoryview.__doc__ or "")
    with pytest.raises(BufferInUse):
        buf.free()
    del mv, typed
    buf.free()


def test_dlpack_carries_dtype_and_shape(pool: PinnedPool) -> None:
    buf = pool.alloc(shape=(3, 5), dtype=np.float64)
    np.asarray(buf)[...] = np.arange(15.0).reshape(3, 5)
    d = np.from_dlpack(buf)
    assert d.dtype == np.float64 and d.shape == (3, 5) and d.ctypes.data == buf.address
    assert d[2, 4] == 14.0
    assert buf.__dlpack_device__() == (1, 0)
    with pytest.raises(BufferInUse):
        buf.free()  # the consumer's array keeps the memory
    del d
    buf.free()


# --- sizes ---

@pytest.mark.parametrize("bad", [1.5, True, False, -1, "lots", "1.5x", [64], None, 0])
def test_sizes_other_than_int_or_size_text_are_one_line_errors(pool: PinnedPool,
                                                                bad: Any) -> None:
    with pytest.raises((ValueError, TypeError)) as ei:
        pool.alloc(bad)
    assert "\n" not in str(ei.value) and str(ei.value)
    assert pool.stats()["blocks_in_use"] == 0  # nothing taken


def test_size_strings_and_integer_types(pool: PinnedPool) -> None:
    b = pool.alloc("1MiB")
    assert b.nbytes == 1 << 20 and b.reserved == 1 << 20
    assert pool.alloc("64k").nbytes == 64 << 10
    assert pool.alloc(np.int64(4096)).nbytes == 4096  # NumPy integers are integers
    with pytest.raises(ValueError, match="capacity must be a number of bytes"):
        PinnedPool(1.5e6, lock="try", report_to_daemon=False)
    with PinnedPool("4MiB", lock="try", report_to_daemon=False) as p2:
        assert p2.capacity == 4 << 20


# --- pool.empty / pool.zeros ---

def test_empty_memory_returns_when_the_last_view_dies(pool: PinnedPool) -> None:
    a = pool.empty((64, 64), np.float32)
    assert a.shape == (64, 64) and a.dtype == np.float32 and _inside(pool, a)
    addr = a.ctypes.data
    a[...] = 1.0
    row = a[3]  # a view of it
    capsule_user = np.from_dlpack(a[5:])  # and a DLPack consumer's array
    del a
    s = pool.stats()
    assert s["blocks_in_use"] == 1 and s["lent"] == 1
    other = pool.empty((64, 64), np.float32)
    assert other.ctypes.data != addr  # not handed out again while views live
    other[...] = 2.0
    assert (row == 1.0).all() and (capsule_user == 1.0).all()
    del row, other
    assert pool.stats()["blocks_in_use"] == 1  # capsule_user still reaches it
    del capsule_user
    s = pool.stats()
    assert s["blocks_in_use"] == 0 and s["used"] == 0 and s["largest_free_extent"] == 16 << 20
    again = pool.empty(64 * 64, np.float32)
    assert again.shape == (4096,)


def test_a_dropped_array_is_reused_and_zeros_are_zero(pool: PinnedPool) -> None:
    a = pool.empty(1000, np.uint8)
    addr = a.ctypes.data
    a[:] = 0xAB
    del a
    b = pool.zeros(1000, np.uint8)  # same size class: the block just given back
    assert b.ctypes.data == addr and not b.any()
    c = pool.empty((2, 3, 4))
    assert c.dtype == np.float64 and c.shape == (2, 3, 4)  # numpy.empty's default
    z = pool.empty((0, 5), np.float32)
    assert z.shape == (0, 5) and z.size == 0
    big = pool.zeros((512, 1024), np.float32)  # 2 MiB: the large-block path
    assert _inside(pool, big) and not big.any()
    del b, c, big
    assert pool.stats()["blocks_in_use"] == 0


@pytest.mark.parametrize("shape", [(2.5, 3), (-2, 3), "x", True, (3, None)])
def test_empty_bad_shapes_are_one_line_errors_and_lose_nothing(pool: PinnedPool,
                                                               shape: Any) -> None:
    with pytest.raises((TypeError, ValueError)) as ei:
        pool.empty(shape, np.float32)
    assert "\n" not in str(ei.value)
    assert pool.stats()["blocks_in_use"] == 0


def test_leaving_with_while_a_view_lives_then_reuse(pool: PinnedPool) -> None:
    with pool.alloc(5000) as b:
        view = b.array()
        view[:] = 3
    assert b.freed and pool.stats()["blocks_in_use"] == 1
    with pytest.raises(BufferFreed, match="left its `with` block"):
        b.array()
    assert (view == 3).all()
    del view
    assert pool.stats()["blocks_in_use"] == 0


sizes = st.one_of(st.integers(1, 4096), st.integers(4097, 70_000),
                  st.integers(70_001, 1 << 20))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["alloc", "empty", "with", "drop"]), sizes,
                          st.integers(0, 10**6)), max_size=60))
def test_handles_arrays_and_with_blocks_never_share_bytes(
        seq: list[tuple[str, int, int]]) -> None:
    """Buffers, empty() arrays and arrays outliving `with` blocks, taken and dropped in
    any order, each keep their own pattern: a block handed out twice would overwrite
    one. The pool's books agree with what is alive, and come back to empty."""
    with PinnedPool("8MiB", lock="try", report_to_daemon=False) as pool:
        live: list[tuple[Any, np.ndarray, int]] = []  # (buffer or None, view, tag)
        tag = 0
        for op, size, pick in seq:
            tag = tag % 251 + 1
            try:
                if op == "alloc":
                    b = pool.alloc(size)
                    live.append((b, b.array(), tag))
                elif op == "empty":
                    live.append((None, pool.empty(size, np.uint8), tag))
                elif op == "with":
                    with pool.alloc(size) as wb:
                        live.append((None, wb.array(), tag))
                elif live:
                    b, view, t = live.pop(pick % len(live))
                    assert (view == t).all()
                    del view  # (no name may keep a view alive past here)
                    if b is not None:
                        b.free()
                    continue
                else:
                    continue
            except MemoryError:
                continue
            live[-1][1][:] = tag
            for i in range(len(live)):
                assert live[i][1][0] == live[i][2] and live[i][1][-1] == live[i][2]
        assert pool.stats()["blocks_in_use"] == len(live)
        for i in range(len(live)):
            assert (live[i][1] == live[i][2]).all()
        while live:
            b = live.pop()[0]
            if b is not None:
                b.free()
        s = pool.stats()
        assert s["blocks_in_use"] == 0 and s["largest_free_extent"] == pool.capacity


def test_threads_taking_and_dropping_arrays_never_share_one() -> None:
    """pool.empty's fast path takes no lock: threads racing for the same size class
    must still each get a block of their own."""
    errors: list[str] = []
    with PinnedPool("16MiB", lock="try", report_to_daemon=False) as pool:
        def work(k: int) -> None:
            keep: list[np.ndarray] = []
            for i in range(400):
                a = pool.empty(1024, np.uint8)
                a[:] = k
                keep.append(a)
                if len(keep) > i % 3:
                    first = keep.pop(0)
                    if not (first == k).all():
                        errors.append(f"thread {k} found another thread's bytes")
                    del first
                del a

        threads = [threading.Thread(target=work, args=(k,)) for k in range(1, 7)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert pool.stats()["blocks_in_use"] == 0


# --- close() with live buffers and views ---

CLOSE_WITH_ARRAYS = """
import json, numpy as np
from ainative.mem import PinnedPool, BufferFreed
pool = PinnedPool("16MiB", lock="try", report_to_daemon=False)
addr = pool.address
arr = pool.zeros((256, 1024), np.float32)          # 1 MiB, an empty() array
buf = pool.alloc(4096); view = buf.array()          # a handle with a live view
idle = pool.alloc(8192)                             # a handle with no view
pool.close()
def mapped():
    for line in open("/proc/self/maps"):
        lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
        if lo <= addr < hi:
            return True
    return False
s = pool.stats()
out = {"used": s["used"], "blocks": s["blocks_in_use"], "detail": s.get("closed_detail"),
       "mapped": mapped()}
arr[...] = 2.0; view[:] = 5                           # still valid memory: no crash
out["sum"] = float(arr.sum()) + int(view.sum())
try:
    idle.free()
except BufferFreed as e:
    out["idle"] = str(e)
try:
    pool.empty(10)
except ValueError as e:
    out["empty_after_close"] = str(e)
del arr
out["after_arr"] = pool.stats()["blocks_in_use"]
del view
s = pool.stats()
out["after_all"] = [s["used"], s["blocks_in_use"], "closed_detail" in s, mapped()]
print(json.dumps(out))
"""


def test_close_keeps_what_views_reach_mapped_and_says_so() -> None:
    # In a child: if the memory went away under a view, touching it would segfault.
    r = subprocess.run([sys.executable, "-c", CLOSE_WITH_ARRAYS], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, f"rc {r.returncode}: {r.stderr}"
    out = json.loads(r.stdout)
    assert out["blocks"] == 2 and out["used"] == (1 << 20) + reserved_size(4096)
    assert "still reachable" in out["detail"] and "stays mapped" in out["detail"]
    assert out["mapped"] is True
    assert out["sum"] == 2.0 * 256 * 1024 + 5 * 4096
    assert "retired when its pool was closed" in out["idle"]
    assert "closed" in out["empty_after_close"]
    assert out["after_arr"] == 1
    assert out["after_all"] == [0, 0, False, False]  # all gone: unmapped


# --- docstrings ---

def test_every_public_name_of_the_pool_api_has_a_docstring() -> None:
    import ainative.mem as mem
    from ainative.mem import ort

    missing = []
    objs: list[Any] = [getattr(mem, n) for n in mem.__all__] + [ort.bind_pinned,
                                                                ort.PinnedBinding]
    for obj in objs:
        if not (obj.__doc__ or "").strip():
            missing.append(obj.__name__)
        if inspect.isclass(obj) and obj.__module__.startswith("ainative.mem"):
            for name, member in vars(obj).items():
                if name.startswith("_") and name not in (
                        "__array_interface__", "__buffer__", "__release_buffer__",
                        "__dlpack__", "__dlpack_device__"):
                    continue
                if callable(member) or isinstance(member, property):
                    if not (member.__doc__ or "").strip():
                        missing.append(f"{obj.__name__}.{name}")
    assert not missing, f"no docstring: {missing}"
    for name in ("alloc", "empty", "zeros", "free", "array", "memoryview", "stats", "close"):
        owner = PinnedPool if hasattr(PinnedPool, name) else PinnedBuffer
        assert (getattr(owner, name).__doc__ or "").strip(), name
