"""What one stress workload is asked to do, shared by the model server, the load client
and whoever starts them. Plain data and arithmetic only: the client imports this and must
never load an AI runtime (it would be mistaken for the model server)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ainative.stress.batch import InputSpec


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
    # Requests sent at the full rate, not measured, before the measurement starts: what is
    # measured is the steady state, the same for every scenario (a daemon that starts with
    # its scenario has settled by then, as a system daemon has long before a request).
    # --compare uses 2 s: a daemon started with its scenario meets hogs no rule knows only
    # when the load starts, and its closed loop takes about a second to find and demote
    # them (a running daemon does so once, when such contention appears).
    load_warmup_s: float = 0.0
    late_threshold_s: float = 0.001
    max_queue_s: float = 1.0
    pool: str | None = None  # stage every request's inputs in a pinned pool of this size
    # The inputs as the command resolved them (feeds.py: --shape, --dim, --input, --inputs);
    # None: the server makes them from its session's declared shapes and the batch.
    inputs: list[InputSpec] | None = None
    # latency (open loop at rate), throughput (closed loop), frames (rate is the frame
    # rate): see catalog.MODES and modes.py.
    mode: str = "latency"


def choose_workers(service_s: float, rate: float, threads: int) -> int:
    """Enough workers that each is busy at most ~70 % of the time, within the CPUs."""
    need = math.ceil(service_s * rate / 0.7)
    cpus = len(os.sched_getaffinity(0))
    return max(1, min(need, max(1, cpus // max(1, threads)), 64))
