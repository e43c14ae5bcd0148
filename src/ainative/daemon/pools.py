"""Pinned pools that processes report to the daemon, for `ainative status`.

Reports come from any local process, so every report is bounded (a small flat map of
scalars) and every user has a quota: one user's reports can never fill the table and
refuse another's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from ainative.platform.base import TaskId

MAX_POOLS = 4096
PER_UID = 64
ROOT_QUOTA = 1024
MAX_KEYS = 32
MAX_STR = 512


class PoolReportError(ValueError):
    """A report that is malformed or over a quota; the message goes back to the caller."""


@dataclass
class _Entry:
    uid: int
    stats: dict[str, Any]


def clean_stats(pool: Any) -> dict[str, Any]:
    """The report as a flat map of at most MAX_KEYS scalar fields, strings cut short."""
    if not isinstance(pool, dict) or len(pool) > MAX_KEYS:
        raise PoolReportError(f"'pool' must be a JSON object of at most {MAX_KEYS} fields")
    out: dict[str, Any] = {}
    for k, v in pool.items():
        if not isinstance(k, str) or len(k) > 64:
            raise PoolReportError("pool field names must be strings of at most 64 chars")
        if isinstance(v, str):
            out[k] = v[:MAX_STR]
        elif v is None or isinstance(v, bool | int | float):
            out[k] = v
        else:
            raise PoolReportError(f"pool field {k!r} must be a number, string, bool or null")
    return out


class PoolRegistry:
    def __init__(self) -> None:
        self._pools: dict[tuple[TaskId, str], _Entry] = {}

    def report(self, ident: TaskId, uid: int, pool: Any) -> None:
        stats = clean_stats(pool)
        key = (ident, str(stats.get("name", "pool")))
        if stats.get("closed"):
            self._pools.pop(key, None)
            return
        if key not in self._pools:
            mine = sum(1 for e in self._pools.values() if e.uid == uid)
            quota = ROOT_QUOTA if uid == 0 else PER_UID
            if mine >= quota:
                raise PoolReportError(f"uid {uid} already reports {mine} pools (limit {quota})")
            if len(self._pools) >= MAX_POOLS:
                raise PoolReportError(f"the daemon holds its limit of {MAX_POOLS} pools")
        self._pools[key] = _Entry(uid, dict(stats, pid=ident.pid, reported_at=time.time()))

    def drop_pid(self, pid: int) -> None:
        for key in [k for k in self._pools if k[0].pid == pid]:
            del self._pools[key]

    def keep_only(self, alive: set[TaskId]) -> None:
        for key in [k for k in self._pools if k[0] not in alive]:
            del self._pools[key]

    def views(self, limit: int) -> list[dict[str, Any]]:
        return [e.stats for e in list(self._pools.values())[:limit]]

    def __len__(self) -> int:
        return len(self._pools)
