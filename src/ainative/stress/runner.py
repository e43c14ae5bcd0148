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
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from ainative.stress import models
from ainative.stress.loadgen import LoadConfig, OpenLoop, Progress
from ainative.stress.metrics import ResourceSampler, distribution


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


def choose_workers(service_s: float, rate: float, threads: int) -> int:
    """Enough workers that each is busy at most ~70 % of the time, within the CPUs."""
    need = math.ceil(service_s * rate / 0.7)
    cpus = len(os.sched_getaffinity(0))
    return max(1, min(need, max(1, cpus // max(1, threads)), 64))


def gpu_summary() -> dict[str, Any]:
    from ainative.gpu.nvml import read_gpus

    rep = read_gpus()
    if not rep.available:
        return {"available": False, "reason": rep.reason}
    return {"available": True, "gpus": [
        {"index": g.index, "name": g.name, "utilization_gpu": g.utilization_gpu,
         "memory_used": g.memory_used, "memory_total": g.memory_total} for g in rep.gpus]}


def run_workload(cfg: WorkloadConfig, on_tick: Callable[[Progress], None] | None = None,
                 tick_s: float = 1.0, before_start: Callable[[], None] | None = None
                 ) -> dict[str, Any]:
    session = models.open_session(cfg.model_path, cfg.threads, cfg.device)
    feeds = models.synthesise_inputs(session, cfg.batch, cfg.model_name)

    def infer() -> object:
        return session.run(None, feeds)

    # Warm-up: first runs allocate and pick kernels; also measures the service time.
    t_end = time.monotonic() + cfg.warmup_s
    n, t0 = 0, time.perf_counter()
    while time.monotonic() < t_end or n < 5:
        infer()
        n += 1
    service = (time.perf_counter() - t0) / n
    workers = cfg.workers or choose_workers(service, cfg.rate, cfg.threads)
    if before_start is not None:
        before_start()
    # Everything allocated so far lives for the whole run: moving it out of the cyclic
    # collector's reach keeps full collections (pauses of milliseconds) off the hot path.
    gc.collect()
    gc.freeze()
    sampler = ResourceSampler()

    def tick(p: Progress) -> None:
        sampler.sample()
        if on_tick is not None:
            on_tick(p)

    loop = OpenLoop(LoadConfig(cfg.rate, cfg.duration, workers, cfg.late_threshold_s,
                               cfg.max_queue_s), infer)
    res = loop.run(tick, tick_s)
    out = res.to_json()
    out.update({
        "config": asdict(cfg),
        "workers": workers,
        "service_time_ms": round(service * 1000, 4),
        "resources": sampler.result(),
        "distribution": distribution(res.histogram),
        "gpu": gpu_summary(),
        "pid": os.getpid(),
    })
    return out


def main(argv: list[str] | None = None) -> int:
    """Child-process entry: prints 'ready' after warm-up, waits for 'go' on stdin, runs,
    writes the result JSON to --result."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--result", required=True)
    args = ap.parse_args(argv)
    cfg = WorkloadConfig(**json.loads(args.config))

    def wait_go() -> None:
        print("ready", flush=True)
        sys.stdin.readline()

    try:
        out = run_workload(cfg, before_start=wait_go)
    except models.ModelError as e:
        out = {"error": str(e)}
    with open(args.result + ".tmp", "w") as fh:
        json.dump(out, fh)
    os.replace(args.result + ".tmp", args.result)
    return 0 if "error" not in out else 1


if __name__ == "__main__":
    sys.exit(main())
