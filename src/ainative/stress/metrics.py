"""What a stress run measures: an HDR latency histogram, throughput, CPU time, memory and
its slope, and the run-queue wait the kernel charges to the process.

Every structure here is bounded however long the run: the histogram has a fixed size,
and the memory samples are a fixed ring that halves its resolution when full. What the
kernel knows about a process (RSS, run-queue wait) is read through the platform's
backend, like everything else ainative reads about processes.
"""

from __future__ import annotations

import functools
import os
import resource
import threading
import time
from typing import Any

import numpy as np
from hdrh.histogram import HdrHistogram

from ainative.platform import get_platform
from ainative.platform.backend import Backend
from ainative.platform.base import ProcessGone

# Latencies are recorded in microseconds, 1 us to 1 hour, 3 significant digits.
LOWEST_US = 1
HIGHEST_US = 3_600_000_000
SIG_DIGITS = 3
PERCENTILES = (50.0, 90.0, 99.0, 99.9)
MIN_SLOPE_SPAN_S = 45.0  # after the first fifth of the run is skipped


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

    def slope_per_hour(self, skip_fraction: float = 0.2, min_span_s: float = 0.0
                       ) -> float | None:
        """Least-squares slope, per hour, ignoring the first part (warm-up growth); None
        when fewer than 5 samples or less than min_span_s remain."""
        n = len(self.t)
        start = int(n * skip_fraction)
        if n - start < 5:
            return None
        t = np.asarray(self.t[start:])
        v = np.asarray(self.v[start:])
        if float(t[-1] - t[0]) <= max(0.0, min_span_s):
            return None
        return float(np.polyfit(t, v, 1)[0] * 3600.0)


@functools.cache
def _backend() -> Backend:
    return get_platform().backend


def _pid(pid: int | str) -> int:
    return os.getpid() if pid == "self" else int(pid)


def rss_bytes(pid: int | str = "self") -> int:
    return _backend().rss_bytes(_pid(pid))


def thread_run_queue_wait_ns() -> int:
    """Time the calling thread has spent runnable but waiting for a CPU (schedstat field 2)."""
    try:
        return _backend().run_queue_wait_ns(os.getpid(), threading.get_native_id())
    except (ProcessGone, OSError):
        return 0


def task_run_queue_waits(pid: int | str = "self") -> dict[int, int]:
    """Run-queue wait (ns, schedstat field 2) of every thread of the process now."""
    b, p = _backend(), _pid(pid)
    out: dict[int, int] = {}
    for tid in b.list_threads(p):
        try:
            out[tid] = b.run_queue_wait_ns(p, tid)
        except (ProcessGone, OSError):
            continue
    return out


def run_queue_wait_ns(pid: int | str = "self") -> int:
    """Run-queue wait summed over the process's current threads."""
    return sum(task_run_queue_waits(pid).values())


_POLICIES = {os.SCHED_OTHER: "other", os.SCHED_BATCH: "batch", os.SCHED_IDLE: "idle",
             os.SCHED_FIFO: "fifo", os.SCHED_RR: "rr"}


def sched_state() -> dict[str, Any]:
    """How the kernel schedules this process now: what a remedy should have changed."""
    cpu_cgroup = None
    try:
        with open("/proc/self/cgroup") as fh:
            for line in fh:
                _hid, ctrls, path = line.rstrip("\n").split(":", 2)
                if "cpu" in ctrls.split(",") or (ctrls == "" and cpu_cgroup is None):
                    cpu_cgroup = path
    except OSError:
        pass
    policy = os.sched_getscheduler(0)
    out: dict[str, Any] = {"nice": os.getpriority(os.PRIO_PROCESS, 0),
                           "policy": _POLICIES.get(policy, str(policy)),
                           "rt_priority": os.sched_getparam(0).sched_priority,
                           "cpu_cgroup": cpu_cgroup}
    from ainative.core.knobs import show_slice
    from ainative.platform import own_slice_ns

    ns = own_slice_ns()
    if ns is not None:
        out["slice"] = show_slice(ns)
    return out


def gpu_snapshot() -> dict[str, Any]:
    """The GPUs as NVML sees them now; without a GPU, why not. Never raises."""
    try:
        from ainative.gpu.nvml import read_gpus

        rep = read_gpus()
    except Exception as e:  # telemetry must never end a stress run
        return {"available": False, "reason": f"NVML error: {e}"}
    if not rep.available:
        return {"available": False, "reason": rep.reason}
    return {"available": True, "reason": rep.reason, "gpus": [
        {"index": g.index, "name": g.name, "utilization_gpu": g.utilization_gpu,
         "memory_used": g.memory_used, "memory_total": g.memory_total,
         "power_w": g.power_w} for g in rep.gpus]}


class ResourceSampler:
    """Samples RSS every ``interval_s`` on a thread of its own into a bounded series, and
    the GPUs (when asked and present) into running peaks and sums, so nothing grows with
    the length of the run."""

    def __init__(self, interval_s: float = 1.0, gpu_every: int = 0,
                 capacity: int = 1024) -> None:
        # gpu_every: sample the GPUs every that many intervals (0: never). Only ask for it
        # once a GPU is known to be there: NVML's first probe holds the GIL for tens of
        # milliseconds, a stall every request in flight would pay.
        self.interval_s = interval_s
        self.gpu_every = gpu_every
        self.rss = BoundedSeries(capacity)
        self.t0 = time.monotonic()
        self.cpu0 = os.times()[:2]
        self.wait0 = task_run_queue_waits()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._gpu_samples = 0
        self._gpu_util_sum: dict[int, float] = {}
        self._gpu_mem_peak: dict[int, int] = {}
        self._gpu_reason: str | None = None

    def sample(self) -> None:
        self.rss.add(time.monotonic() - self.t0, rss_bytes() / (1 << 20))

    def sample_gpu(self) -> None:
        snap = gpu_snapshot()
        if not snap["available"]:
            self._gpu_reason = snap["reason"]
            return
        self._gpu_samples += 1
        for g in snap["gpus"]:
            i = g["index"]
            self._gpu_util_sum[i] = self._gpu_util_sum.get(i, 0.0) + (g["utilization_gpu"]
                                                                      or 0.0)
            self._gpu_mem_peak[i] = max(self._gpu_mem_peak.get(i, 0), g["memory_used"] or 0)

    def _run(self) -> None:
        n = 0
        while True:
            self.sample()
            if self.gpu_every and n % self.gpu_every == 0 and self._gpu_reason is None:
                self.sample_gpu()
            n += 1
            if self._stop.wait(self.interval_s):
                self.sample()
                return

    def __enter__(self) -> ResourceSampler:
        self.t0 = time.monotonic()
        self.cpu0 = os.times()[:2]
        self.wait0 = task_run_queue_waits()
        self._thread = threading.Thread(target=self._run, daemon=True, name="stress-sampler")
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def gpu_result(self) -> dict[str, Any]:
        if not self._gpu_samples:
            return {"available": False, "reason": self._gpu_reason or "not sampled"}
        return {"available": True, "samples": self._gpu_samples, "gpus": [
            {"index": i, "utilization_gpu_mean": round(u / self._gpu_samples, 1),
             "memory_used_peak": self._gpu_mem_peak.get(i)}
            for i, u in sorted(self._gpu_util_sum.items())]}

    def run_queue_wait_s(self) -> float:
        """Wait since start of the threads alive now (threads that have ended, such as the
        load workers, must be accounted by whoever ran them)."""
        now = task_run_queue_waits()
        return sum(v - self.wait0.get(tid, 0) for tid, v in now.items()) / 1e9

    def result(self) -> dict[str, Any]:
        user, system = os.times()[:2]
        # Over less than a minute, allocator warm-up swamps any leak: no slope at all.
        slope = self.rss.slope_per_hour(min_span_s=MIN_SLOPE_SPAN_S)
        return {
            "cpu_user_s": round(user - self.cpu0[0], 3),
            "cpu_system_s": round(system - self.cpu0[1], 3),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "rss_mib_last": round(self.rss.v[-1], 1) if len(self.rss) else None,
            "rss_slope_mib_per_hour": round(slope, 3) if slope is not None else None,
            "rss_samples": len(self.rss),
            "rss_sample_stride_s": self.interval_s * self.rss.stride,
            "run_queue_wait_s": round(self.run_queue_wait_s(), 4),
        }
