"""Pool reports to the daemon (for `ainative status`), kept off the allocation path.

One background thread for all pools of the process wakes once a second and sends a
pool's stats only when its cheap fingerprint changed, so alloc/free never pay for
reporting, a change is never more than a second late, and an idle pool sends nothing.
A pool's first and last reports (creation, close) go out at once. A pool works the same
without a daemon: report_pool never raises.
"""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ainative.mem.pool import PinnedPool

PERIOD_S = 1.0

_lock = threading.Lock()
_pools: weakref.WeakSet[PinnedPool] = weakref.WeakSet()
_last: weakref.WeakKeyDictionary[PinnedPool, tuple[int, ...]] = weakref.WeakKeyDictionary()
_thread: threading.Thread | None = None


def _send(stats: dict[str, Any]) -> None:
    from ainative.ipc.client import report_pool

    report_pool(stats)


def _send_soon(pool: PinnedPool) -> None:
    with _lock:
        _last[pool] = pool._fingerprint()
    stats = pool.stats()
    threading.Thread(target=_send, args=(stats,), daemon=True,
                     name="ainative-pool-report").start()


def _loop() -> None:
    stop = threading.Event()
    while not stop.wait(PERIOD_S):
        with _lock:
            pools = list(_pools)
        while pools:
            pool = pools.pop()
            fp = pool._fingerprint()
            with _lock:
                changed = _last.get(pool) != fp
                _last[pool] = fp
            if changed:
                _send(pool.stats())
            # No reference may outlive the round: a dropped pool must be collectable.
            del pool


def watch(pool: PinnedPool, final: bool = False) -> None:
    """Report `pool` now, and from now on whenever it changes; `final` (close) reports
    it one last time and stops watching."""
    global _thread
    with _lock:
        if final:
            _pools.discard(pool)
        else:
            _pools.add(pool)
            if _thread is None:
                _thread = threading.Thread(target=_loop, daemon=True,
                                           name="ainative-pool-reporter")
                _thread.start()
    _send_soon(pool)
