"""One stress workload: load the model, warm up, run the open loop, measure.

Used in-process by ``ainative stress`` and as a child process (``python -m
ainative.stress.runner``) by ``--compare``, so that nice, chrt or the daemon act on the
workload alone.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from types import FrameType
from typing import Any

import numpy as np

from ainative.stress import models
from ainative.stress.loadgen import LoadConfig, OpenLoop, Progress
from ainative.stress.metrics import ResourceSampler, distribution, gpu_snapshot
from ainative.stress.results import write_result


@dataclass
class WorkloadConfig:
    model_path: str
    model_name: str
    rate: float = 1000.0
    duration: float = 30.0
    batch: int = 8
    threads: int = 1
    device: str = "cpu"
    workers: int = 0  # 0: decide from the measured service time
    warmup_s: float = 1.0
    late_threshold_s: float = 0.001
    max_queue_s: float = 1.0
    pool: str | None = None  # stage every request's inputs in a pinned pool of this size


def choose_workers(service_s: float, rate: float, threads: int) -> int:
    """Enough workers that each is busy at most ~70 % of the time, within the CPUs."""
    need = math.ceil(service_s * rate / 0.7)
    cpus = len(os.sched_getaffinity(0))
    return max(1, min(need, max(1, cpus // max(1, threads)), 64))


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
    return {"nice": os.getpriority(os.PRIO_PROCESS, 0),
            "policy": _POLICIES.get(policy, str(policy)),
            "rt_priority": os.sched_getparam(0).sched_priority,
            "cpu_cgroup": cpu_cgroup}


def _open_pool(size: str) -> Any:
    from ainative.mem import MemlockError, PinnedPool

    try:
        # "try": an unlocked pool that says so beats no run at all; the stats show which.
        return PinnedPool(size, lock="try", name="stress")
    except (MemlockError, ValueError, OSError) as e:
        raise models.ModelError(f"--pool {size}: {e}") from e


def _staged(session: Any, feeds: dict[str, np.ndarray], pool: Any) -> Callable[[], object]:
    """A request that copies its inputs into pinned buffers first, as a server receiving
    them would, and gives the buffers back after."""

    def infer() -> object:
        bufs = []
        staged: dict[str, np.ndarray] = {}
        try:
            for k, v in feeds.items():
                bufs.append(pool.alloc(v.nbytes))
                staged[k] = bufs[-1].array(v.dtype, v.shape)
                staged[k][...] = v
            return session.run(None, staged)
        finally:
            staged.clear()  # the views must die before free() takes the buffers back
            for b in bufs:
                b.free()

    return infer


def run_workload(cfg: WorkloadConfig, on_tick: Callable[[Progress], None] | None = None,
                 tick_s: float = 1.0, before_start: Callable[[], None] | None = None
                 ) -> dict[str, Any]:
    session = models.open_session(cfg.model_path, cfg.threads, cfg.device)
    feeds = models.synthesise_inputs(session, cfg.batch, cfg.model_name)
    pool = _open_pool(cfg.pool) if cfg.pool else None

    def plain() -> object:
        return session.run(None, feeds)

    infer = plain if pool is None else _staged(session, feeds, pool)
    try:
        # Warm-up: first runs allocate and pick kernels; also measures the service time.
        t_end = time.monotonic() + cfg.warmup_s
        n, t0 = 0, time.perf_counter()
        while time.monotonic() < t_end or n < 5:
            infer()
            n += 1
        service = (time.perf_counter() - t0) / n
        workers = cfg.workers or choose_workers(service, cfg.rate, cfg.threads)
        gpu = gpu_snapshot()  # before the clock starts: a first NVML probe is slow
        if before_start is not None:
            before_start()
        sched = sched_state()  # after the go: a daemon has acted on us by then
        # Everything allocated so far lives for the whole run: moving it out of the cyclic
        # collector's reach keeps full collections (pauses of milliseconds) off the hot path.
        gc.collect()
        gc.freeze()
        loop = OpenLoop(LoadConfig(cfg.rate, cfg.duration, workers, cfg.late_threshold_s,
                                   cfg.max_queue_s), infer)
        sample_gpu = cfg.device == "cuda" and gpu["available"]
        with ResourceSampler(gpu_every=5 if sample_gpu else 0) as sampler:
            res = loop.run(on_tick, tick_s)
        out = res.to_json()
        resources = sampler.result()
        # Threads alive at the end (main, ONNX Runtime's pool) plus the ended load workers.
        resources["run_queue_wait_s"] = round(resources["run_queue_wait_s"]
                                              + res.run_queue_wait_s, 4)
        out.update({
            "config": asdict(cfg),
            "workers": workers,
            "service_time_ms": round(service * 1000, 4),
            "resources": resources,
            "distribution": distribution(res.histogram),
            "gpu": dict(gpu, during_run=sampler.gpu_result()) if sample_gpu else gpu,
            "pool": pool.stats() if pool is not None else None,
            "sched": sched,
            "pid": os.getpid(),
        })
        return out
    finally:
        if pool is not None:
            pool.close()


def _interrupt_once(signum: int, frame: FrameType | None) -> None:
    # The first Ctrl-C ends the run (the loop still writes its result); more of them,
    # e.g. one from the terminal and one forwarded by the leader, must not cut that short.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Child-process entry: prints 'ready' after warm-up, waits for 'go' on stdin, runs,
    writes the result JSON to --result."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--result", required=True)
    args = ap.parse_args(argv)
    cfg = WorkloadConfig(**json.loads(args.config))
    signal.signal(signal.SIGINT, _interrupt_once)

    def wait_go() -> None:
        print("ready", flush=True)
        if sys.stdin.readline().strip() != "go":
            raise SystemExit(3)  # the caller gave up on this scenario

    try:
        out = run_workload(cfg, before_start=wait_go)
    except models.ModelError as e:
        out = {"error": str(e)}
    except KeyboardInterrupt:
        out = {"error": "interrupted before the measurement began"}
    return write_result(args.result, out)


if __name__ == "__main__":
    sys.exit(main())
