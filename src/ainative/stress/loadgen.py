"""Open-loop load at a fixed rate.

Request i is due at t0 + i/rate whatever happened to earlier requests, and its latency is
measured from that due time, so time spent queued behind a slow request counts (no
coordinated omission). A request that could only start more than ``max_queue_s`` late is
dropped and counted: that bounds a run that can never keep up, and says so.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from hdrh.histogram import HdrHistogram

from ainative.stress.metrics import new_histogram, summarise, thread_run_queue_wait_ns

# Interval figures come from a fixed numpy buffer, not a second HdrHistogram: hdrh
# computes percentiles in pure Python (tens of ms holding the GIL), which would stall the
# very workers being measured every tick.
INTERVAL_CAPACITY = 1 << 20


def _quick_summary(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {"p50_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0}
    p50, p99 = np.percentile(values, [50, 99])
    return {"p50_ms": float(p50) / 1000, "p99_ms": float(p99) / 1000,
            "max_ms": float(values.max()) / 1000}


@dataclass(frozen=True)
class LoadConfig:
    rate: float  # requests per second
    duration: float  # seconds
    workers: int = 1
    late_threshold_s: float = 0.001  # a request starting later than this is "late"
    max_queue_s: float = 1.0  # a request that would start later than this is dropped
    # A request answered later than this after its due time missed its deadline (frames
    # mode); None: no deadline.
    deadline_s: float | None = None

    def __post_init__(self) -> None:
        if self.rate <= 0:
            raise ValueError("rate must be positive")
        if self.duration <= 0:
            raise ValueError("duration must be positive")
        if self.workers < 1:
            raise ValueError("workers must be at least 1")


@dataclass
class Progress:
    elapsed_s: float
    completed: int
    late: int
    dropped: int
    interval: dict[str, float]  # percentiles over the last interval
    interval_throughput: float


@dataclass
class LoadResult:
    scheduled: int
    completed: int
    late: int
    dropped: int
    errors: int
    elapsed_s: float
    interrupted: bool
    histogram: HdrHistogram
    first_error: str | None = None
    run_queue_wait_s: float = 0.0  # the load workers' own, summed
    missed: int = 0  # answered, but after LoadConfig.deadline_s
    extra: dict[str, Any] = field(default_factory=dict)  # merged into to_json

    def to_json(self) -> dict[str, Any]:
        return {
            "scheduled": self.scheduled, "completed": self.completed, "late": self.late,
            "dropped": self.dropped, "errors": self.errors, "first_error": self.first_error,
            "elapsed_s": round(self.elapsed_s, 3), "interrupted": self.interrupted,
            "workers_run_queue_wait_s": round(self.run_queue_wait_s, 4),
            "throughput_per_s": round(self.completed / self.elapsed_s, 1)
            if self.elapsed_s > 0 else 0.0,
            "latency": summarise(self.histogram),
            **self.extra,
        }


class OpenLoop:
    def __init__(self, cfg: LoadConfig, request: Callable[[], object],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        self.request = request
        self.clock = clock
        self.period = 1.0 / cfg.rate
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._next = 0
        self.hist = new_histogram()
        self._ibuf = np.empty(INTERVAL_CAPACITY, np.int64)
        self._in = 0
        self._track = False  # interval figures only when someone reads them each tick
        # numpy loads percentile's machinery on first use (~20 ms with the GIL held):
        # pay that now rather than at the first tick of the run.
        _quick_summary(np.arange(1, 101, dtype=np.int64))
        summarise(new_histogram())
        self.completed = self.late = self.dropped = self.errors = self.missed = 0
        self.run_queue_wait_ns = 0
        # Set by the last worker to finish. The main thread waits on this rather than on
        # Thread.join: a join interrupted by Ctrl-C can leave Python believing a thread has
        # ended while it still records, and the summary then races it.
        self._all_done = threading.Event()
        self._running = 0
        self.first_error: str | None = None
        self.t0 = 0.0

    def _claim(self) -> int:
        with self._lock:
            i = self._next
            self._next += 1
            return i

    def _worker(self, end: float) -> None:
        # The kernel forgets an ended thread's run-queue wait, so each worker hands its own
        # over on the way out.
        wait0 = thread_run_queue_wait_ns()
        try:
            self._work(end)
        finally:
            waited = thread_run_queue_wait_ns() - wait0
            with self._lock:
                self.run_queue_wait_ns += waited
                self._running -= 1
                if self._running == 0:
                    self._all_done.set()

    def _work(self, end: float) -> None:
        cfg = self.cfg
        while not self.stop.is_set():
            i = self._claim()
            due = self.t0 + i * self.period
            if due >= end:
                return
            now = self.clock()
            if due > now:
                if self.stop.wait(due - now):
                    return
            elif now - due > cfg.max_queue_s:
                with self._lock:
                    self.dropped += 1
                continue
            start = self.clock()
            if not self._attempt():
                continue
            done = self.clock()
            us = max(1, int((done - due) * 1e6))
            with self._lock:
                self.completed += 1
                if start - due > cfg.late_threshold_s:
                    self.late += 1
                if cfg.deadline_s is not None and done - due > cfg.deadline_s:
                    self.missed += 1
                self._record(us)

    def _attempt(self) -> bool:
        """One request; False (counted, the first error kept) when it failed: a failing
        model must show up in the result, not end the run."""
        try:
            self.request()
        except Exception as e:
            with self._lock:
                self.errors += 1
                if self.first_error is None:
                    self.first_error = f"{type(e).__name__}: {e}"
            return False
        return True

    def _record(self, us: int) -> None:
        """One answered request's latency (the caller holds the lock)."""
        self.hist.record_value(us)
        if self._track and self._in < INTERVAL_CAPACITY:
            self._ibuf[self._in] = us
            self._in += 1

    def _scheduled(self) -> int:
        """Requests due within the run."""
        return min(self._next, int(self.cfg.duration * self.cfg.rate))

    def run(self, on_tick: Callable[[Progress], None] | None = None,
            tick_s: float = 1.0) -> LoadResult:
        """Run to the end (or until stop is set or Ctrl-C); on_tick is called from this
        thread every tick_s with the last interval's figures."""
        self._track = on_tick is not None
        self.t0 = self.clock()
        end = self.t0 + self.cfg.duration
        threads = [threading.Thread(target=self._worker, args=(end,), daemon=True,
                                    name=f"load-{k}") for k in range(self.cfg.workers)]
        self._running = len(threads)
        for t in threads:
            t.start()
        interrupted = False
        last_t, last_n = self.t0, 0
        try:
            while not self._all_done.wait(
                    timeout=max(0.01, min(tick_s, end - self.clock() + 0.05))):
                now = self.clock()
                if on_tick is not None and now - last_t >= tick_s:
                    with self._lock:
                        vals = self._ibuf[:self._in].copy()
                        self._in = 0
                        done, late, dropped = self.completed, self.late, self.dropped
                    on_tick(Progress(now - self.t0, done, late, dropped, _quick_summary(vals),
                                     (done - last_n) / (now - last_t)))
                    last_t, last_n = now, done
        except KeyboardInterrupt:
            interrupted = True
            self.stop.set()
            self._all_done.wait(timeout=30)
        interrupted = interrupted or (self.stop.is_set() and self.clock() < end)
        elapsed = min(self.clock(), end) - self.t0
        return LoadResult(self._scheduled(), self.completed, self.late, self.dropped,
                          self.errors, elapsed, interrupted, self.hist, self.first_error,
                          self.run_queue_wait_ns / 1e9, self.missed)
