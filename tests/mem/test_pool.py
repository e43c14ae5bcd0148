"""The pool on real memory: locked (VmLck), usable as NumPy/memoryview/DLPack, errors for
double free, use after free, exhaustion, and a clear answer when locking is not allowed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import ainative
from ainative.mem import BufferFreed, BufferInUse, MemlockError, PinnedPool, PoolExhausted
from ainative.mem.limits import lock_limits, locked_bytes


def can_lock(n: int) -> bool:
    return lock_limits().allows(n)


@pytest.mark.skipif(not can_lock(32 << 20), reason="this process may not lock 32 MiB")
def test_arena_is_locked_and_unlocked_on_close() -> None:
    before = locked_bytes()
    pool = PinnedPool("32MiB", report_to_daemon=False)
    assert pool.locked and pool.stats()["lock"] == "mlock"
    assert locked_bytes() - before == 32 << 20
    pool.close()
    assert locked_bytes() == before


def test_buffers_as_numpy_memoryview_and_dlpack() -> None:
    with PinnedPool("8MiB", lock="try", report_to_daemon=False) as pool:
        buf = pool.alloc(4096)
        a = buf.array(np.float32, (32, 32))
        a[:] = np.arange(1024, dtype=np.float32).reshape(32, 32)
        mv = buf.memoryview()
        assert len(mv) == 4096 and bytes(mv[:4]) == np.float32(0).tobytes()
        d = np.from_dlpack(buf)
        assert d.nbytes == 4096 and d.ctypes.data == buf.address
        assert a.ctypes.data == buf.address == pool.address + buf.offset
        del a, mv, d
        buf.free()


def test_double_free_use_after_free_and_views_alive() -> None:
    with PinnedPool("4MiB", lock="try", report_to_daemon=False) as pool:
        buf = pool.alloc(1000)
        view = buf.array(np.uint8)[10:20]  # a slice keeps the memory reachable
        with pytest.raises(BufferInUse):
            buf.free()
        assert pool.stats()["blocks_in_use"] == 1  # nothing lost
        del view
        buf.free()
        with pytest.raises(BufferFreed, match="double free"):
            buf.free()
        with pytest.raises(BufferFreed, match="use after free"):
            buf.array()
        with pytest.raises(BufferFreed, match="use after free"):
            _ = buf.address
        with pool.alloc(500) as b2:
            b2.memoryview()[0] = 1
        assert b2.freed and pool.stats()["blocks_in_use"] == 0


def test_exhaustion_message_carries_the_stats() -> None:
    with PinnedPool("4MiB", lock="try", report_to_daemon=False) as pool:
        keep = [pool.alloc(1 << 20) for _ in range(3)]
        with pytest.raises(PoolExhausted) as ei:
            pool.alloc(2 << 20)
        msg = str(ei.value)
        assert "free" in msg and "largest free extent" in msg and "failures 1" in msg
        assert isinstance(ei.value, MemoryError)
        for b in keep:
            b.free()
        assert pool.stats()["largest_free_extent"] == 4 << 20


def test_threads_fill_their_own_buffers() -> None:
    with PinnedPool("32MiB", lock="try", report_to_daemon=False) as pool:
        errors: list[str] = []

        def work(k: int) -> None:
            for i in range(300):
                with pool.alloc(1000 + 997 * ((k * 31 + i) % 50)) as b:
                    a = b.array(np.uint8)
                    a[:] = k
                    if not (a == k).all():
                        errors.append(f"thread {k} saw another thread's bytes")
                    del a

        ts = [threading.Thread(target=work, args=(k,)) for k in range(8)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert not errors
        assert pool.stats()["blocks_in_use"] == 0 and pool.stats()["alloc_count"] == 2400


UNPRIV = """
import json, os, resource
import ainative.mem.pool, ainative.mem.cuda, ainative.ipc.client, numpy
from ainative.mem import MemlockError, PinnedPool
ainative.mem.cuda.find_runtime()
# Everything imported first: the interpreter's files may not be readable by nobody.
os.setgid(65534); os.setuid(65534)  # no CAP_IPC_LOCK from here on
resource.setrlimit(resource.RLIMIT_MEMLOCK, (1 << 20, 1 << 20))
out = {}
try:
    PinnedPool("16MiB", report_to_daemon=False)
    out["required"] = "locked?!"
except MemlockError as e:
    out["required"] = str(e)
p = PinnedPool("16MiB", lock="try", report_to_daemon=False)
out["try"] = [p.locked, p.stats()["lock"]]
b = p.alloc(1000); b.array()[:] = 7; b.free()
print(json.dumps(out))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another user")
def test_locking_not_allowed_is_a_clear_error_or_an_honest_unlocked_pool() -> None:
    r = subprocess.run([sys.executable, "-c", UNPRIV], capture_output=True, text=True,
                       timeout=60, cwd="/")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert "RLIMIT_MEMLOCK is 1024 KiB" in out["required"]
    assert "CAP_IPC_LOCK" in out["required"] and "ulimit -l" in out["required"]
    locked, why = out["try"]
    assert locked is False and why.startswith("UNLOCKED")


def test_importing_ainative_stays_cheap() -> None:
    code = ("import sys, ainative; print('numpy' in sys.modules, 'ainative.mem' in sys.modules);"
            "ainative.PinnedPool; print('ainative.mem' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout.split() == ["False", "False", "True"], r.stderr


def test_exported_from_the_package() -> None:
    assert ainative.PinnedPool is PinnedPool and ainative.PoolExhausted is PoolExhausted
    with pytest.raises(AttributeError):
        _ = ainative.NoSuchThing  # type: ignore[attr-defined]
    assert issubclass(MemlockError, Exception)


def test_cuda_registration_reports_why_not_without_a_gpu() -> None:
    with PinnedPool("4MiB", lock="try", report_to_daemon=False) as pool:
        st = pool.stats()
        if os.path.exists("/dev/nvidia0"):
            pytest.skip("a GPU is present; see test_cuda_registration_on_gpu")
        assert st["cuda_registered"] is False and st["cuda_detail"].startswith("no CUDA")


@pytest.mark.gpu
@pytest.mark.skipif(not os.path.exists("/dev/nvidia0"), reason="no NVIDIA GPU here")
def test_cuda_registration_on_gpu() -> None:
    from ainative.mem.cuda import find_runtime

    rt, why = find_runtime()
    if rt is None:
        pytest.skip(f"GPU present but {why}")
    with PinnedPool("64MiB", lock="try", report_to_daemon=False) as pool:
        assert pool.cuda_registered, pool.cuda_reason


@pytest.mark.gpu
@pytest.mark.skipif(not os.path.exists("/dev/nvidia0"), reason="no NVIDIA GPU here")
def test_h2d_copies_from_the_pool() -> None:
    from ainative.mem.cuda import h2d_bandwidth

    with PinnedPool("64MiB", lock="try", report_to_daemon=False) as pool, \
            pool.alloc(32 << 20) as b:
        gbs, via = h2d_bandwidth(b.array(np.float32), repeats=3)
    if gbs is None:
        pytest.skip(f"GPU present but nothing to copy with: {via}")
    assert gbs > 0
