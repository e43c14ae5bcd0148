"""What a stress run measures: an HDR latency histogram, throughput, CPU time, memory and
its slope, and the run-queue wait the kernel charges to the process.

Every structure here is bounded however long the run: the histogram has a fixed size,
and the memory samples are a fixed ring that halves its resolution when full.
"""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from hdrh.histogram import HdrHistogram

# Latencies are recorded in microseconds, 1 us to 1 hour, 3 significant digits.
LOWEST_US = 1
HIGHEST_US = 3_600_000_000
SIG_DIGITS = 3
PERCENTILES = (50.0, 90.0, 99.0, 99.9)


def new_histogram() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, SIG_DIGITS)


def summarise(h: HdrHistogram) -> dict[str, float]:
    """Percentiles and max in milliseconds."""
    if h.get_total_count() == 0:
        return {"p50_ms": 0.0, "p90_ms": 0.0, "p99_ms": 0.0, "p99_9_ms": 0.0, "max_ms": 0.0,
                "mean_ms": 0.0}
    out = {f"p{str(p).replace('.0', '').replace('.', '_')}_ms":
           h.get_value_at_percentile(p) / 1000.0 for p in PERCENTILES}
    out["max_ms"] = h.get_max_value() / 1000.0
    out["mean_ms"] = h.get_mean_value() / 1000.0
    return out


def distribution(h: HdrHistogram, points: int = 200) -> list[tuple[float, float]]:
    """(percentile, latency ms) pairs spaced for a log-scale percentile plot."""
    if h.get_total_count() == 0:
        return []
    out = []
    for i in range(points):
        # 0 .. 99.999 with more points near the tail
        p = 100.0 * (1.0 - 10 ** (-5.0 * i / (points - 1)))
        out.append((p, h.get_value_at_percentile(p) / 1000.0))
    return out


class BoundedSeries:
    """(t, value) samples in at most ``capacity`` slots: when full, every other sample is
    dropped and the sampling stride doubles, so a 24 h run keeps an even spread."""

    def __init__(self, capacity: int = 1024) -> None:
        self.capacity = capacity
        self.t: list[float] = []
        self.v: list[float] = []
        self.stride = 1
        self._seen = 0

    def add(self, t: float, v: float) -> None:
        self._seen += 1
        if (self._seen - 1) % self.stride:
            return
        self.t.append(t)
        self.v.append(v)
        if len(self.t) >= self.capacity:
            self.t, self.v = self.t[::2], self.v[::2]
            self.stride *= 2

    def __len__(self) -> int:
        return len(self.t)

    def slope_per_hour(self, skip_fraction: float = 0.2) -> float | None:
        """Least-squares slope, per hour, ignoring the first part (warm-up growth)."""
        n = len(self.t)
        start = int(n * skip_fraction)
        if n - start < 5:
            return None
        t = np.asarray(self.t[start:])
        v = np.asarray(self.v[start:])
        if float(t[-1] - t[0]) <= 0:
            return None
        return float(np.polyfit(t, v, 1)[0] * 3600.0)


def rss_bytes(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run_queue_wait_ns(pid: int | str = "self") -> int:
    """Time this process's threads spent runnable but waiting for a CPU (schedstat field 2),
    summed over its threads."""
    total = 0
    base = f"/proc/{pid}/task"
    for tid in os.listdir(base):
        try:
            with open(f"{base}/{tid}/schedstat") as fh:
                total += int(fh.read().split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return total


@dataclass
class ResourceSampler:
    """Samples RSS once a second (or as often as called) into a bounded series."""

    rss: BoundedSeries = field(default_factory=lambda: BoundedSeries(1024))
    t0: float = field(default_factory=time.monotonic)
    cpu0: tuple[float, float] = field(default_factory=lambda: os.times()[:2])
    wait0: int = field(default_factory=run_queue_wait_ns)

    def sample(self) -> None:
        self.rss.add(time.monotonic() - self.t0, rss_bytes() / (1 << 20))

    def result(self) -> dict[str, Any]:
        user, system = os.times()[:2]
        slope = self.rss.slope_per_hour()
        return {
            "cpu_user_s": round(user - self.cpu0[0], 3),
            "cpu_system_s": round(system - self.cpu0[1], 3),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "rss_mib_last": round(self.rss.v[-1], 1) if len(self.rss) else None,
            "rss_slope_mib_per_hour": round(slope, 3) if slope is not None else None,
            "rss_samples": len(self.rss),
            "run_queue_wait_s": round((run_queue_wait_ns() - self.wait0) / 1e9, 4),
        }
