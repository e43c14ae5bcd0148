"""The pinned pool on Windows under Wine: VirtualAlloc + VirtualLock after raising the
working set. Wine really locks (mlock), so the Linux side reads VmLck of the child that
holds the pool; Wine has no working-set quota, so the refusal Windows would give (Win32
error 1453) is tested with a fake boundary in tests/winhost/test_windows_fake_boundary.py.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from winhelp import POOL_CHILD, Child, linux_side

pytestmark = pytest.mark.skipif(sys.platform != "win32", reason="needs a Windows Python")

SIZE = 32 << 20


def test_a_locked_pool_is_locked_and_gives_its_lock_back(tmp_path: Path) -> None:
    c = Child(tmp_path, POOL_CHILD, str(SIZE))
    try:
        report = json.loads(c.line())
        assert report["locked"] is True, report
        linux = linux_side("pool_locked", c.marker, vmlck_kib_at_least=SIZE >> 10)
        if linux is not None:
            assert linux["vmlck_kib"] >= SIZE >> 10, linux
        c.send()
        assert c.line() == "closed"
        linux = linux_side("pool_closed", c.marker, vmlck_kib_below=SIZE >> 10)
        if linux is not None:
            assert linux["vmlck_kib"] < SIZE >> 10, linux
    finally:
        c.close()


def test_the_arena_locks_through_the_working_set_calls() -> None:
    from ainative.mem.arena import Arena
    from ainative.platform.windows.win32 import Kernel32

    api = Kernel32()
    before = api.get_working_set()
    arena = Arena(SIZE, True)
    try:
        assert arena.info.locked and arena.info.lock_reason == "VirtualLock"
        # SetProcessWorkingSetSizeEx succeeded (Wine accepts it but reports a fixed
        # working set afterwards, so the raise itself is checked with the fake boundary).
        blk = arena.block(0, 16)
        blk[0] = b"x"
        assert blk[0] == b"x"
    finally:
        arena.close()
    assert api.get_working_set() == before


def test_the_pool_works_on_windows_with_numpy_views() -> None:
    import numpy as np

    from ainative.mem import PinnedPool

    with PinnedPool("4MiB", lock=True, report_to_daemon=False) as pool:
        assert pool.locked
        buf = pool.alloc(dtype="float32", shape=(16,))
        a = np.asarray(buf)
        a[:] = 3.0
        assert float(a.sum()) == 48.0
