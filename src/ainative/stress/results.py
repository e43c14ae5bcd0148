"""A stress run's result: the one place that says what it holds, and how the processes of
a run hand it over.

A run has two processes, the model server and the load client (see runner.py). The
client measures latency (from each request's scheduled time to its reply); the server
measures what the kernel gave it. The result joins both, and its resource figures are the
SERVER's, because the server is the process a remedy or a daemon must protect:

    scheduled, completed, late, dropped, errors, first_error, elapsed_s, interrupted,
    throughput_per_s, latency {p50_ms ...}, workers_run_queue_wait_s   (client: loadgen)
    distribution                                  (client: percentile -> ms, for plots)
    config, workers                               (what was asked, how many connections)
    service_time_ms, resources, sched, gpu, pool, pid          (server: ServerReport)
    server {served, failed}, client {pid, cpu, run-queue wait, sched}
    mode, and the mode's own figures (samples_per_s; achieved_fps, deadline_misses ...)
                                                  (modes.figures, from the counts above)
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, TypedDict

if TYPE_CHECKING:
    from ainative.stress.config import WorkloadConfig
    from ainative.stress.loadgen import LoadResult


class ServerReport(TypedDict):
    """What the model server measured of itself from START to STOP (see wire.py)."""

    pid: int
    service_time_ms: float  # per inference, from the warm-up
    sched: dict[str, Any]  # metrics.sched_state() when the measurement began
    resources: dict[str, Any]  # metrics.ResourceSampler.result(): CPU, RSS, run-queue wait
    gpu: dict[str, Any]
    pool: dict[str, Any] | None  # PinnedPool.stats() with --pool
    served: int  # requests answered during the measurement
    failed: int  # requests answered with an error


class ClientFigures(TypedDict):
    """The load client's own cost, to tell its delays from the server's."""

    pid: int
    cpu_user_s: float
    cpu_system_s: float
    run_queue_wait_s: float  # of the load workers, summed
    sched: dict[str, Any]


def workload_result(cfg: WorkloadConfig, load: LoadResult, workers: int,
                    server: ServerReport, client: ClientFigures) -> dict[str, Any]:
    from ainative.stress.metrics import distribution
    from ainative.stress.modes import figures
    from ainative.stress.rounds import encode_histogram

    out = load.to_json()
    out.update({
        "histogram": encode_histogram(load.histogram),  # for merging rounds
        "config": asdict(cfg),
        "workers": workers,
        "service_time_ms": server["service_time_ms"],
        "resources": server["resources"],
        "distribution": distribution(load.histogram),
        "gpu": server["gpu"],
        "pool": server["pool"],
        "sched": server["sched"],
        "pid": server["pid"],
        "server": {"served": server["served"], "failed": server["failed"]},
        "client": client,
    })
    out.update(figures(out))
    return out


def write_result(path: str, out: dict[str, Any]) -> int:
    """Write a child's result atomically (the parent never reads half a file); the exit
    code says whether it holds an error."""
    with open(path + ".tmp", "w") as fh:
        json.dump(out, fh)
    os.replace(path + ".tmp", path)
    return 0 if "error" not in out else 1
