"""The three things a stress run can measure, each the load client's loop of its own:

- ``latency``: the open loop (loadgen.OpenLoop) at ``rate`` requests/s, latency from each
  request's scheduled time. The seed's "inference 30 -> 12 ms" row, with a model that
  size (``attention-large``).
- ``throughput``: a closed loop, every connection sending its next request the moment
  the last is answered, so the figure is the most requests (and samples: requests x
  batch) per second the server gives; latency is each request's own, send to reply.
  The seed's "batch inference 100 -> 300 req/s" row.
- ``frames``: one frame at a time at ``rate`` frames/s, as a video or control loop runs a
  model: frame i starts at t0 + i/rate and is due one period later. A frame answered
  after that missed its deadline; one that could not even start within a period (the
  loop is a whole frame behind) is skipped. Achieved fps counts frames on time only.
  The seed's "realtime 50 -> 120 fps" row.

Each mode's figures are derived from counts that add up (figures()), so a scenario's
rounds merge by summing the counts and deriving again. NumPy-free on purpose: the load
client imports this and must never look like the model server.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from ainative.stress.config import WorkloadConfig, choose_workers
from ainative.stress.loadgen import LoadConfig, LoadResult, OpenLoop


class ClosedLoop(OpenLoop):
    """Each worker sends its next request as soon as its last one is answered, until the
    end; a request still in flight at the end is not counted (it did not complete within
    the window measured)."""

    def _work(self, end: float) -> None:
        while not self.stop.is_set():
            start = self.clock()
            if start >= end:
                return
            self._claim()
            if not self._attempt():
                continue
            done = self.clock()
            if done > end:
                return
            with self._lock:
                self.completed += 1
                self._record(max(1, int((done - start) * 1e6)))

    def _scheduled(self) -> int:
        return self._next  # requests started: there is no schedule


def workers(cfg: WorkloadConfig, service_s: float) -> int:
    """Connections for the mode: latency, enough for the rate (config.choose_workers);
    throughput, one per CPU the server's threads can use (so the server is never idle
    for want of a request); frames, one (a frame loop runs one frame at a time)."""
    if cfg.mode == "frames":
        return 1
    if cfg.workers:
        return cfg.workers
    if cfg.mode == "throughput":
        cpus = len(os.sched_getaffinity(0))
        return max(1, cpus // max(1, cfg.threads))
    return choose_workers(service_s, cfg.rate, cfg.threads)


def make_loop(cfg: WorkloadConfig, n_workers: int, duration: float,
              request: Callable[[], object],
              clock: Callable[[], float] = time.monotonic) -> OpenLoop:
    """The load loop of cfg's mode, for duration seconds."""
    if cfg.mode == "throughput":
        return ClosedLoop(LoadConfig(cfg.rate, duration, n_workers, cfg.late_threshold_s,
                                     cfg.max_queue_s), request, clock)
    if cfg.mode == "frames":
        period = 1.0 / cfg.rate
        return OpenLoop(LoadConfig(cfg.rate, duration, 1, cfg.late_threshold_s,
                                   max_queue_s=period, deadline_s=period), request, clock)
    if cfg.mode != "latency":
        raise ValueError(f"unknown mode {cfg.mode!r}")
    return OpenLoop(LoadConfig(cfg.rate, duration, n_workers, cfg.late_threshold_s,
                               cfg.max_queue_s), request, clock)


def counts(cfg: WorkloadConfig, res: LoadResult) -> dict[str, Any]:
    """The mode's own counts from a loop's result, to be carried in the run's result."""
    return {"late_frames": res.missed} if cfg.mode == "frames" else {}


def figures(r: dict[str, Any]) -> dict[str, Any]:
    """The mode's headline figures, derived from a result's counts (one run's, or a
    scenario's rounds summed): throughput, samples/s; frames, frames on time, deadline
    misses and the achieved frame rate."""
    cfg = r.get("config") or {}
    mode = cfg.get("mode", "latency")
    out: dict[str, Any] = {"mode": mode}
    elapsed = float(r.get("elapsed_s") or 0.0)
    done = int(r.get("completed") or 0)
    if mode == "throughput":
        out["samples_per_s"] = round(done * int(cfg.get("batch", 1)) / elapsed, 1) \
            if elapsed > 0 else 0.0
    elif mode == "frames":
        late = int(r.get("late_frames") or 0)
        skipped = int(r.get("dropped") or 0)
        scheduled = int(r.get("scheduled") or 0)
        on_time = done - late
        out.update({
            "target_fps": float(cfg.get("rate", 0.0)),
            "frames_on_time": on_time,
            "late_frames": late,
            "skipped_frames": skipped,
            "deadline_misses": late + skipped,
            # Of the frames due in the window, the share on time, at the target rate (the
            # loop may end a little before the window does, after its last frame).
            "achieved_fps": round(on_time * float(cfg.get("rate", 0.0)) / scheduled, 2)
            if scheduled > 0 else 0.0,
        })
    return out
