"""Rounds: a comparison's scenarios run in turn, several times over, and merged.

On a shared machine (a VM whose host has other tenants) noise comes in stretches: a host
that takes the vCPUs away for a few seconds spoils whichever scenario happened to run then,
and at 1,000 requests/s one 100 ms stall alone is 100 late requests, 0.8 % of a 12 s run:
enough to move its p99. Run each scenario once, one after the other, and a verdict between
two of them says as much about when each ran as about the remedy. Run them in rounds
(alone, contended, ainative, ... then again), each for a slice of the duration, and every
stretch of noise is shared out among the scenarios instead of landing on one.

A scenario's rounds merge into one result: the latency histograms are added (so p99 is
the p99 of every request the scenario served, not an average of percentiles), counts and
CPU seconds are summed, and each round's own p99 is kept beside it, so a reader sees how
much the rounds differed.
"""

from __future__ import annotations

import copy
from typing import Any

from hdrh.histogram import HdrHistogram

from ainative.stress import machine_load
from ainative.stress.metrics import distribution, summarise
from ainative.stress.modes import figures

# Counts and seconds that add up across rounds, at the top of a workload result.
_SUMMED = ("scheduled", "completed", "late", "dropped", "errors", "elapsed_s",
           "workers_run_queue_wait_s", "contention_cpu_s", "late_frames")
_SUMMED_RESOURCES = ("run_queue_wait_s", "cpu_user_s", "cpu_system_s")


def encode_histogram(h: HdrHistogram) -> str:
    """The histogram as HdrHistogram's own compressed, base64 text: what a round hands
    over for merging."""
    data = h.encode()
    return data.decode("ascii") if isinstance(data, bytes) else str(data)


def merge_rounds(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One scenario's results from its rounds, merged. A round that failed makes the
    scenario failed (with that round's error); a round that was interrupted is merged and
    marks the whole interrupted."""
    if not rounds:
        raise ValueError("no rounds to merge")
    for i, r in enumerate(rounds):
        if "error" in r:
            return {**r, "error": f"round {i + 1} of {len(rounds)}: {r['error']}"}
    if len(rounds) == 1:
        return rounds[0]
    merged = copy.deepcopy(rounds[-1])
    hist: HdrHistogram | None = None
    for r in rounds:
        text = r.get("histogram")
        if not text:
            raise ValueError("a round's result carries no histogram to merge")
        h = HdrHistogram.decode(text)
        if hist is None:
            hist = h
        else:
            hist.add(h)
    assert hist is not None
    for key in _SUMMED:
        vals = [r[key] for r in rounds if isinstance(r.get(key), int | float)]
        if vals:
            total = sum(vals)
            merged[key] = round(total, 4) if isinstance(total, float) else total
    res = merged.get("resources")
    if isinstance(res, dict):
        for key in _SUMMED_RESOURCES:
            vals = [r["resources"][key] for r in rounds
                    if isinstance(r.get("resources", {}).get(key), int | float)]
            if len(vals) == len(rounds):
                total = sum(vals)
                res[key] = round(total, 4) if isinstance(total, float) else total
    merged["latency"] = summarise(hist)
    merged["distribution"] = distribution(hist)
    merged["histogram"] = encode_histogram(hist)
    if merged.get("elapsed_s"):
        merged["throughput_per_s"] = round(merged["completed"] / merged["elapsed_s"], 1)
    merged.update(figures(merged))  # the mode's rates, from the summed counts
    loads = [r["machine_load"] for r in rounds if r.get("machine_load")]
    if len(loads) == len(rounds):  # summed, each round kept: caveats.py looks at each
        merged["machine_load"] = {**machine_load.merge(loads),
                                  "cpu_hogs": loads[0].get("cpu_hogs", 0), "rounds": loads}
    # The ainative scenario's daemon: its CPU share averaged over the rounds, and the
    # closed loop's step changes of every round (compare.py).
    cpus = [r["daemon_cpu_percent"] for r in rounds
            if isinstance(r.get("daemon_cpu_percent"), int | float)]
    if cpus:
        merged["daemon_cpu_percent"] = round(sum(cpus) / len(cpus), 2)
    guards = [r["guard"] for r in rounds if isinstance(r.get("guard"), dict)]
    if guards:
        merged["guard"] = {"max_step": max(g.get("max_step") or 0 for g in guards),
                           "changes": [c for g in guards for c in g.get("changes", [])][:100],
                           "max_step_by_round": [g.get("max_step") for g in guards]}
    merged["interrupted"] = any(r.get("interrupted") for r in rounds)
    merged["rounds"] = [{"p99_ms": r["latency"]["p99_ms"], "p99_9_ms": r["latency"]["p99_9_ms"],
                         "completed": r.get("completed"),
                         # the throughput and frame modes' headline, where there is one
                         **{k: r[k] for k in ("throughput_per_s", "achieved_fps") if k in r}}
                        for r in rounds]
    return merged
