"""Whether a serving process is busy: CPU used in a recent window, with hysteresis.

A serving process gets its class's boost only while it is busy, and background work is
demoted only while some serving process is busy; an idle model server (a notebook that
imported a runtime, a server between bursts) gets nothing and demotes nothing.

The evidence is the process's CPU time (all threads, /proc/PID/stat utime+stime),
sampled every ``interval_s`` by the supervisor for the few processes that need it. A
process becomes busy as soon as it used at least ``min_cpu_percent`` of one CPU over the
last ``window_s`` (from as few as two samples, so a server that starts taking requests
is seen within one or two intervals); it stays busy until it has not reached that rate
for ``idle_after_s``. The hysteresis keeps a server with gaps of a few seconds between
bursts from flapping in and out of its boost, and bounds how long an idle server keeps
it: idle_after_s after its last busy window ends, i.e. at most window_s + idle_after_s +
one interval after its last request.

Why CPU time and not requests: a request count needs the server's help or eBPF; CPU
time is in /proc for every process, costs one read, and a request that costs no CPU needs
no protection. Its resolution is the kernel's clock tick (10 ms), so the smallest useful
threshold is one tick per window.

Pure and clock-free: the caller passes the time and the CPU seconds it read.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import TypedDict

from ainative.platform.base import TaskId


@dataclass(frozen=True)
class ActivityConfig:
    window_s: float = 1.0
    min_cpu_percent: float = 2.0  # of one CPU, averaged over the window
    idle_after_s: float = 30.0

    @property
    def interval_s(self) -> float:
        """How often to sample: four times per window, at most every 250 ms."""
        return min(0.25, self.window_s / 4)


class ActivityView(TypedDict):
    """One process's activity as status, explain and plan show it."""

    busy: bool
    cpu_percent: float | None  # over the last window; None before two samples
    idle_for_s: float | None  # since the rate last reached the threshold; None if never
    busy_since_s: float | None  # seconds it has been busy; None when idle


@dataclass
class _State:
    ident: TaskId
    samples: deque[tuple[float, float]] = field(default_factory=deque)  # (time, cpu s)
    busy: bool = False
    busy_since: float | None = None
    last_active: float | None = None  # last time the rate reached the threshold
    rate: float | None = None  # percent of one CPU over the last window


class ActivityTracker:
    def __init__(self, config: ActivityConfig) -> None:
        self.config = config
        self._by_pid: dict[int, _State] = {}

    def observe(self, ident: TaskId, now: float, cpu_s: float) -> bool:
        """Record one sample of ident's CPU time; True when its busy state changed."""
        st = self._by_pid.get(ident.pid)
        if st is None or st.ident != ident:
            st = _State(ident)
            self._by_pid[ident.pid] = st
        cfg = self.config
        st.samples.append((now, cpu_s))
        # Keep one sample at or before the window's start, so the rate covers the window.
        while len(st.samples) > 2 and st.samples[1][0] <= now - cfg.window_s:
            st.samples.popleft()
        t0, c0 = st.samples[0]
        span = now - t0
        st.rate = None
        if span > 0 and len(st.samples) >= 2:
            st.rate = max(0.0, (cpu_s - c0) / span * 100.0)
            if st.rate >= cfg.min_cpu_percent:
                st.last_active = now
        was = st.busy
        if not was and st.last_active == now:
            st.busy, st.busy_since = True, now
        elif was and (st.last_active is None or now - st.last_active >= cfg.idle_after_s):
            st.busy, st.busy_since = False, None
        return st.busy != was

    def busy(self, ident: TaskId) -> bool:
        st = self._by_pid.get(ident.pid)
        return st is not None and st.ident == ident and st.busy

    def cpu_moved(self, ident: TaskId) -> bool:
        """Whether the last two samples saw any CPU used (a cheap 'doing something')."""
        st = self._by_pid.get(ident.pid)
        if st is None or st.ident != ident or len(st.samples) < 2:
            return False
        return st.samples[-1][1] > st.samples[-2][1]

    def view(self, ident: TaskId, now: float) -> ActivityView | None:
        st = self._by_pid.get(ident.pid)
        if st is None or st.ident != ident:
            return None
        return ActivityView(
            busy=st.busy,
            cpu_percent=None if st.rate is None else round(st.rate, 1),
            idle_for_s=None if st.last_active is None else round(now - st.last_active, 2),
            busy_since_s=None if st.busy_since is None else round(now - st.busy_since, 2))

    def tracked(self) -> list[TaskId]:
        return [st.ident for st in self._by_pid.values()]

    def forget(self, pid: int) -> None:
        self._by_pid.pop(pid, None)

    def keep_only(self, idents: set[TaskId]) -> None:
        for pid in [p for p, st in self._by_pid.items() if st.ident not in idents]:
            del self._by_pid[pid]
