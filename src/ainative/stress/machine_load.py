"""What else the machine did while a scenario was measured: the CPU time the whole
machine spent busy (/proc/stat) less what the scenario's own processes used.

A comparison is only as good as its baseline. If a compiler, a test suite or the
hypervisor (steal) took CPU while "alone" ran, the alone figures are worse than the
workload's real uncontended ones and every "x times alone" ratio flatters whatever is
compared with it; if they took CPU from the hogs, the contention was milder than asked.
So each scenario's leader opens a Window when the measurement is let go and closes it when
the load client is done, and "alone" also probes the machine for a moment before it
starts anything. The figures are CPU-seconds; caveats.py turns them into warnings.

Our own processes' CPU comes from the kernel's accounting of each, not from /proc/stat:
the leader's own time plus its reaped children's (the model server and load client are
reaped within the window, so their whole lives count, less what they had used before it
opened), plus the hogs' (measured by the leader).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from typing import Any, TypedDict

import psutil

TOP = 3  # other processes named in a figure, the busiest first


class LoadFigures(TypedDict):
    window_s: float
    cpus: int
    busy_cpu_s: float  # the whole machine, /proc/stat user+nice+system+irq+softirq
    steal_cpu_s: float  # time the hypervisor gave our vCPUs to someone else
    own_cpu_s: float  # the scenario's workload and its leader
    hog_cpu_s: float  # the contention
    other_cpu_s: float  # busy - own - hogs: everything else on the machine
    top: list[tuple[str, int, float]]  # (name, pid, CPU-s) of the busiest others


def _busy_and_steal() -> tuple[float, float]:
    t = psutil.cpu_times()
    # guest time is already in user on Linux; iowait is idle with I/O pending.
    return t.user + t.nice + t.system + t.irq + t.softirq, getattr(t, "steal", 0.0)


def _self_cpu() -> tuple[float, float]:
    """(this process's CPU, its reaped children's CPU)."""
    t = os.times()
    return t.user + t.system, t.children_user + t.children_system


def process_cpu(pids: Iterable[int]) -> float:
    """CPU-seconds used so far by those of pids that are alive."""
    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except psutil.Error:
            continue
    return total


def _all_cpu() -> dict[int, tuple[str, float]]:
    out: dict[int, tuple[str, float]] = {}
    for p in psutil.process_iter(["name", "cpu_times"]):
        t = p.info["cpu_times"]
        if t is not None:
            out[p.pid] = (p.info["name"] or "?", t.user + t.system)
    return out


def _top(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]],
         exclude: set[int]) -> list[tuple[str, int, float]]:
    used = [(name, pid, cpu - before.get(pid, (name, 0.0))[1])
            for pid, (name, cpu) in after.items() if pid not in exclude]
    used.sort(key=lambda x: -x[2])
    return [(n, p, round(c, 2)) for n, p, c in used[:TOP] if c >= 0.01]


class Window:
    """Open at the start of a measurement, close at its end.

    own_pids: our processes alive at the start whose CPU must not count as someone
    else's but that are reaped (waited for) by this process before close(): their CPU so
    far is noted now and subtracted from the children's time at close. hog_pids: the
    hogs, alive throughout; their CPU is measured directly."""

    def __init__(self, own_pids: Iterable[int] = (), hog_pids: Iterable[int] = ()) -> None:
        self.own_pids = list(own_pids)
        self.hog_pids = list(hog_pids)
        self.exclude = {os.getpid(), *self.own_pids, *self.hog_pids}
        self.procs0 = _all_cpu()
        self.own_before = process_cpu(self.own_pids)
        self.hog0 = process_cpu(self.hog_pids)
        self.self0, self.children0 = _self_cpu()
        self.busy0, self.steal0 = _busy_and_steal()
        self.t0 = time.monotonic()

    def close(self, still_alive_own: Iterable[int] = ()) -> LoadFigures:
        """The figures since open. still_alive_own: own processes not reaped yet (their
        CPU is read directly)."""
        busy1, steal1 = _busy_and_steal()
        t1 = time.monotonic()
        self_cpu, children = _self_cpu()
        hog = process_cpu(self.hog_pids) - self.hog0
        alive = list(still_alive_own)
        own = (self_cpu - self.self0) + (children - self.children0) - self.own_before
        own += process_cpu(alive)
        busy = busy1 - self.busy0
        procs1 = _all_cpu()
        return LoadFigures(
            window_s=round(t1 - self.t0, 3), cpus=psutil.cpu_count() or 1,
            busy_cpu_s=round(busy, 2), steal_cpu_s=round(steal1 - self.steal0, 2),
            own_cpu_s=round(max(0.0, own), 2), hog_cpu_s=round(max(0.0, hog), 2),
            other_cpu_s=round(max(0.0, busy - own - hog), 2),
            top=_top(self.procs0, procs1, self.exclude | set(alive)))


def probe(window_s: float, own_pids: Iterable[int] = ()) -> LoadFigures:
    """The machine over window_s with nothing of ours running (but own_pids, whose CPU
    is read directly): what "alone" is about to be measured against."""
    own = list(own_pids)
    w = Window(hog_pids=own)  # alive throughout and read directly, like hogs
    time.sleep(window_s)
    f = w.close()
    f["own_cpu_s"] = round(f["own_cpu_s"] + f["hog_cpu_s"], 2)
    f["hog_cpu_s"] = 0.0
    return f


def merge(figs: list[dict[str, Any]]) -> dict[str, Any]:
    """One scenario's windows from its rounds, summed (the busiest others by CPU over
    all of them)."""
    out: dict[str, Any] = {k: round(sum(float(f[k]) for f in figs), 2)
                           for k in ("window_s", "busy_cpu_s", "steal_cpu_s", "own_cpu_s",
                                     "hog_cpu_s", "other_cpu_s")}
    out["cpus"] = figs[0]["cpus"] if figs else 1
    top: dict[tuple[str, int], float] = {}
    for f in figs:
        for name, pid, cpu in f.get("top", []):
            top[(name, pid)] = top.get((name, pid), 0.0) + cpu
    out["top"] = [[n, p, round(c, 2)] for (n, p), c in
                  sorted(top.items(), key=lambda kv: -kv[1])[:TOP]]
    return out
