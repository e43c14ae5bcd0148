"""Whether a run's target rate was sustainable, and if not, what the server could do.

An open-loop run at a rate the model cannot serve gives honest numbers (long latencies,
dropped requests) that still leave a user asking what rate WOULD work.

How it is told: a server that keeps up answers most requests about a service time after
they were due; one that falls behind builds a queue, so the typical (median) request
waits many service times, or waits past --max-queue and is dropped. One stall (a page
fault, a busy neighbour) raises the maximum but not the median, and is not taken for a
lack of capacity.

How much it could do: the load client sends every request due within the run and waits
for the queue to drain, so requests completed over the run's duration is the rate it was
asked for, not what the server did. The last request to finish waited about the run's
worst latency, so the server worked for about duration + max latency: completed divided
by that is its capacity as set up (this model, batch, threads and workers, on this
machine under this load). The warm-up's service time is no substitute: it is measured on
a cold process, one request at a time, before any contention.
"""

from __future__ import annotations

import math
from typing import Any, TypedDict

# Behind by more than this share of the target, with a queue: not sustainable.
SHORTFALL = 0.1
# A median wait of this many service times (and at least QUEUED_MS) means a queue.
QUEUED_SERVICE_TIMES = 10
QUEUED_MS = 5.0


class Capacity(TypedDict):
    sustainable: bool
    target_per_s: float
    # The server's capacity, measured, when it could not keep up; None when it could.
    capacity_per_s: float | None
    dropped: int
    queued: bool  # the median request waited many service times


def about(x: float) -> str:
    """x to two significant figures, as a plain number: 45, 1200, 0.37."""
    if x <= 0 or not math.isfinite(x):
        return "0"
    r = round(x, 1 - math.floor(math.log10(x)))
    return f"{r:.{max(0, 1 - math.floor(math.log10(r)))}f}"


def assess(r: dict[str, Any]) -> Capacity | None:
    """For an open-loop run's result (results.py); None for one that has no rate (another
    mode) or that failed."""
    cfg = r.get("config") or {}
    rate = cfg.get("rate")
    if "error" in r or not rate or cfg.get("mode", "latency") != "latency":
        return None
    lat = r.get("latency") or {}
    dropped = int(r.get("dropped") or 0)
    service_ms = float(r.get("service_time_ms") or 0.0)
    queued = float(lat.get("p50_ms") or 0.0) > max(QUEUED_MS, QUEUED_SERVICE_TIMES * service_ms)
    busy_s = float(r.get("elapsed_s") or 0.0) + float(lat.get("max_ms") or 0.0) / 1000
    done = int(r.get("completed") or 0) / busy_s if busy_s > 0 else 0.0
    ok = dropped == 0 and not (queued and done < (1 - SHORTFALL) * rate)
    return Capacity(sustainable=ok, target_per_s=rate,
                    capacity_per_s=None if ok else round(done, 1), dropped=dropped,
                    queued=queued)


def message(c: Capacity) -> str | None:
    """'target rate 1000/s not sustainable: capacity about 45/s ...', or None when it was."""
    if c["sustainable"] or c["capacity_per_s"] is None:
        return None
    why = f"{c['dropped']} requests dropped" if c["dropped"] else "requests queued"
    return (f"target rate {about(c['target_per_s'])}/s not sustainable: capacity about "
            f"{about(c['capacity_per_s'])}/s ({why}; requests completed per second of "
            "the run and its queue's drain)")


def markdown(report: dict[str, Any]) -> list[str]:
    """A line for report.md for each scenario whose target rate was not sustainable."""
    out = []
    for name, r in report.get("scenarios", {}).items():
        msg = message(r["capacity"]) if r.get("capacity") else None
        if msg:
            out += ["", f"{name}: {msg}."]
    return out
