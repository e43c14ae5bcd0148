"""The daemon's Prometheus metrics: what it manages, what it did, what its AI processes
waited for.

Families (all ``ainative_*``, base units in the name, counters ending in ``_total``):

- ``ainative_ai_tasks{class}``, ``ainative_ai_tasks_active{class}``: managed processes
  per class, and those whose knobs are in force now (every defined class, 0 included);
- ``ainative_policy_actions_total{action,knob,class}``: knob writes per thread, by action:
  applied, restored, lifted, inherited, override (telemetry/sink.py says which is which);
- ``ainative_inference_latency_seconds{pid,comm,class,name}``: traced requests (spans);
- ``ainative_runqueue_wait_seconds{pid,comm,class}``: per-wakeup run-queue waits (eBPF),
  and ``ainative_runqueue_schedstat_wait_seconds_total{pid,comm,class}`` for the
  /proc schedstat fallback, whose events are sums over an interval, not single waits;
- ``ainative_pool_*{pid,pool}``: the pinned pools processes report (daemon/pools.py);
- ``ainative_daemon_reconcile_seconds``, ``ainative_daemon_events_total{source}``,
  ``ainative_daemon_paused``, and the exporter's own bound
  (``ainative_metrics_processes``, ``ainative_metrics_processes_evicted_total``).

The GPU families (DCGM exporter's names) are gpu/metrics.py's GpuCollector, served beside
these by daemon/exporter.py.

Threads. The daemon's loop owns the policy state, and the HTTP server's threads must
neither read it (dicts the loop mutates) nor wait for the loop. So what the loop knows
(tasks, pools, its own counters) reaches a scrape as an immutable DaemonSnapshot that the
loop builds and swaps in (one reference assignment) after its event batches and
reconcile passes; a scrape reads whichever snapshot is current. Events fed through
``observe`` (the daemon's own, and spans and run-queue waits from other threads) go into
one store guarded by one lock, held for a few microseconds per event; a scrape holds it
only to copy the counts (about 0.3 ms with 500 processes; see
benchmarks/bench_metrics_scrape.py), never while it formats or writes the reply. A slow
scraper therefore never stalls the policy loop.

Rendering. ``render`` writes the text exposition format (0.0.4) itself: each series'
labels are escaped and joined once, when the series is created, so a scrape of 500
processes' histograms is string concatenation (about 10x faster than building
prometheus_client samples for them, which took over 100 ms here and held the GIL the
loop needs meanwhile).

Cardinality is bounded: at most ``max_pids`` processes have per-process series (the
least recently seen one is evicted to admit a new one, and counted), at most
``max_series_per_pid`` span names (or name and class pairs) each, the rest sharing one
``name="other"`` series, and a process's series go when the daemon sees it exit. The comm
and class labels of the latency series come from the daemon's view of the pid
(``class="none"`` for a process it does not manage), never from what an event claims.
The policy counters trust their events (the daemon emits them), but a knob must be one
ainative has and their series are capped (MAX_ACTION_SERIES): events received from other
processes should be spans and run-queue waits only, the other types are the daemon's.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from prometheus_client.utils import floatToGoString

from ainative.core.engine import Managed
from ainative.core.knobs import KNOBS
from ainative.telemetry.events import (
    AiTaskRegistered,
    Event,
    GpuUtilization,
    InferenceLatency,
    PolicyApplied,
    PolicyRestored,
    RunqueueLatency,
)
from ainative.telemetry.sink import PolicyAction, restore_action

MAX_PIDS = 1024
MAX_SERIES_PER_PID = 16
MAX_ACTION_SERIES = 4096  # (action, knob, class) triples; knobs and classes are bounded
NO_CLASS = "none"  # the class label of a process the daemon does not manage
OTHER = "other"


def _decades(lo: float, hi: float) -> tuple[float, ...]:
    """1-2.5-5 steps per decade from lo to hi: log-spaced and readable (50us, 100us,
    250us, ...)."""
    out: list[float] = []
    decade = 1e-9
    while decade <= hi:
        for m in (1.0, 2.5, 5.0):
            b = round(m * decade, 12)
            if lo <= b <= hi:
                out.append(b)
        decade *= 10
    return tuple(out)


INFERENCE_BUCKETS_S = _decades(50e-6, 10.0)
RUNQUEUE_BUCKETS_S = _decades(5e-6, 1.0)
RECONCILE_BUCKETS_S = _decades(100e-6, 1.0)


def _le(bounds: Sequence[float]) -> tuple[str, ...]:
    return (*(floatToGoString(b) for b in bounds), "+Inf")


INFERENCE_LE = _le(INFERENCE_BUCKETS_S)
RUNQUEUE_LE = _le(RUNQUEUE_BUCKETS_S)
RECONCILE_LE = _le(RECONCILE_BUCKETS_S)


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def labels(*pairs: tuple[str, str | int]) -> str:
    """Label pairs as the exposition format writes them between braces."""
    return ",".join(f'{k}="{_escape(str(v))}"' for k, v in pairs)


def _num(v: float) -> str:
    if isinstance(v, int):
        return str(v)
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v))


class _Hist:
    """One series: its rendered labels, bucket counts (not cumulative; the last is above
    every bound) and sum."""

    __slots__ = ("counts", "labels", "sum")

    def __init__(self, n: int, rendered: str = "") -> None:
        self.labels = rendered
        self.counts = [0] * (n + 1)
        self.sum = 0.0

    def add(self, bounds: Sequence[float], v: float) -> None:
        self.counts[bisect.bisect_left(bounds, v)] += 1
        self.sum += v

    def copy(self) -> tuple[str, tuple[int, ...], float]:
        return self.labels, tuple(self.counts), self.sum


@dataclass(frozen=True)
class TaskSample:
    """A managed process as the loop saw it when it published."""

    pid: int
    comm: str
    cls: str
    active: bool


@dataclass(frozen=True)
class PoolSample:
    """A reported pool's figures; None where the report did not carry the field."""

    pid: int
    name: str
    total: int | None = None
    used: int | None = None
    free: int | None = None
    peak: int | None = None
    allocations: int | None = None
    failures: int | None = None
    fragmentation: float | None = None


def _count(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else None


def pool_sample(stats: Mapping[str, Any]) -> PoolSample | None:
    """A pool report (any local process's words: daemon/pools.py keeps them flat and
    small) as typed figures; None without a pid."""
    pid = _count(stats.get("pid"))
    if pid is None:
        return None
    frag = stats.get("fragmentation")
    if not (isinstance(frag, int | float) and not isinstance(frag, bool) and 0 <= frag <= 1):
        frag = None
    return PoolSample(pid, str(stats.get("name", "pool")), _count(stats.get("total")),
                      _count(stats.get("used")), _count(stats.get("free")),
                      _count(stats.get("peak")), _count(stats.get("alloc_count")),
                      _count(stats.get("failures")), None if frag is None else float(frag))


@dataclass(frozen=True)
class DaemonSnapshot:
    """What the loop knew at one moment; never changed once published."""

    classes: tuple[str, ...] = ()
    tasks: Mapping[int, TaskSample] = field(default_factory=lambda: MappingProxyType({}))
    pools: tuple[PoolSample, ...] = ()
    paused: bool = False
    reconcile: tuple[str, tuple[int, ...], float] = (
        "", (0,) * (len(RECONCILE_BUCKETS_S) + 1), 0.0)
    process_events: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))


def read_comm(pid: int) -> str:
    """The kernel's name for pid ('' once it has gone)."""
    try:
        with open(f"/proc/{pid}/comm") as fh:
            return fh.read().strip()
    except OSError:
        return ""


class _Process:
    """The per-process series of one pid."""

    __slots__ = ("comm", "inference", "runqueue", "schedstat")

    def __init__(self, comm: str) -> None:
        self.comm = comm  # read once, for a process the daemon does not manage
        self.inference: dict[tuple[str, str, str], _Hist] = {}  # (comm, class, name)
        self.runqueue: dict[tuple[str, str], _Hist] = {}  # (comm, class)
        self.schedstat: dict[tuple[str, str], list[Any]] = {}  # -> [labels, seconds]


_DAEMON_EVENTS = (AiTaskRegistered, PolicyApplied, PolicyRestored, GpuUtilization)
_RUNQUEUE_SOURCES = ("ebpf", "schedstat")


class DaemonMetrics:
    """The daemon's metrics. The loop calls publish(), observe_reconcile() and
    count_process_events(); anyone may call observe() (it is also the EventSink ``emit``);
    the HTTP server's threads call render()."""

    def __init__(self, *, max_pids: int = MAX_PIDS,
                 max_series_per_pid: int = MAX_SERIES_PER_PID,
                 comm_of: Callable[[int], str] = read_comm) -> None:
        self.max_pids = max_pids
        self.max_series_per_pid = max_series_per_pid
        self.comm_of = comm_of
        self._snap = DaemonSnapshot()
        # Loop-owned (published through the snapshot, never read by a scrape directly).
        self._reconcile = _Hist(len(RECONCILE_BUCKETS_S))
        self._process_events: dict[str, int] = {}
        # Guarded by _lock: what observe() feeds.
        self._lock = threading.Lock()
        self._procs: OrderedDict[int, _Process] = OrderedDict()  # least recently seen first
        self._actions: dict[tuple[str, str, str], int] = {}
        self._cls_of: OrderedDict[int, str] = OrderedDict()  # classes events named, per pid
        self._events: dict[str, int] = {}
        self._evicted = 0

    # --- the loop's side ---

    def publish(self, managed: Iterable[Managed], classes: Iterable[str],
                pools: Iterable[Mapping[str, Any]], paused: bool) -> None:
        """Swap in a snapshot of the loop's state (called by the loop only)."""
        tasks = {m.ident.pid: TaskSample(m.ident.pid, m.name, m.cls, m.active)
                 for m in managed}
        samples = tuple(s for s in map(pool_sample, pools) if s is not None)
        self._snap = DaemonSnapshot(tuple(sorted(classes)), MappingProxyType(tasks), samples,
                                    paused, self._reconcile.copy(),
                                    MappingProxyType(dict(self._process_events)))

    def observe_reconcile(self, seconds: float) -> None:
        self._reconcile.add(RECONCILE_BUCKETS_S, seconds)

    def count_process_events(self, source: str, n: int) -> None:
        self._process_events[source] = self._process_events.get(source, 0) + n

    def forget_pid(self, pid: int) -> None:
        """pid exited: its series go (a new process may get the pid)."""
        with self._lock:
            self._procs.pop(pid, None)
            self._cls_of.pop(pid, None)

    def sweep(self, alive: Callable[[int], bool]) -> int:
        """Forget every tracked pid that ``alive`` says has gone (exits the daemon did not
        see: an overrun event source, periodic scanning). Returns how many."""
        with self._lock:
            pids = list(self._procs) + [p for p in self._cls_of if p not in self._procs]
        gone = [p for p in pids if not alive(p)]
        for p in gone:
            self.forget_pid(p)
        return len(gone)

    # --- events, from any thread ---

    def observe(self, ev: Event) -> None:
        """Account one event. Spans and run-queue waits feed the histograms; the daemon's
        own events feed the action counters. Never raises for a valid event."""
        if isinstance(ev, InferenceLatency | RunqueueLatency):
            self._observe_latency(ev)
            return
        with self._lock:
            src = "daemon" if isinstance(ev, _DAEMON_EVENTS) else OTHER
            self._events[src] = self._events.get(src, 0) + 1
            if isinstance(ev, AiTaskRegistered):
                self._remember_class(ev.pid, ev.cls)
            elif isinstance(ev, PolicyApplied):
                self._remember_class(ev.pid, ev.cls)
                self._count_action("applied", ev.knob, ev.cls)
            elif isinstance(ev, PolicyRestored):
                self._count_action(restore_action(ev.why), ev.knob,
                                   self._cls_of.get(ev.pid, NO_CLASS))

    emit = observe  # the EventSink protocol (telemetry/sink.py)

    def _remember_class(self, pid: int, cls: str) -> None:
        self._cls_of[pid] = cls
        self._cls_of.move_to_end(pid)
        if len(self._cls_of) > 8 * self.max_pids:
            self._cls_of.popitem(last=False)

    def _count_action(self, action: PolicyAction, knob: str, cls: str) -> None:
        if knob not in KNOBS:
            knob = OTHER
        key = (action, knob, cls)
        if key in self._actions or len(self._actions) < MAX_ACTION_SERIES:
            self._actions[key] = self._actions.get(key, 0) + 1

    def _observe_latency(self, ev: InferenceLatency | RunqueueLatency) -> None:
        task = self._snap.tasks.get(ev.pid)
        comm = ""
        if task is None:
            with self._lock:
                known = ev.pid in self._procs
            if not known:
                comm = self.comm_of(ev.pid)  # outside the lock: a /proc read, once per pid
        with self._lock:
            proc = self._procs.get(ev.pid)
            if proc is None:
                proc = self._procs[ev.pid] = _Process(task.comm if task else comm)
                while len(self._procs) > self.max_pids:
                    self._procs.popitem(last=False)
                    self._evicted += 1
            else:
                self._procs.move_to_end(ev.pid)
            comm, cls = (task.comm, task.cls) if task else (proc.comm, NO_CLASS)
            if isinstance(ev, InferenceLatency):
                self._events["span"] = self._events.get("span", 0) + 1
                key = (comm, cls, ev.name)
                h = proc.inference.get(key)
                if h is None:
                    if len(proc.inference) >= self.max_series_per_pid:
                        key = (comm, cls, OTHER)
                        h = proc.inference.get(key)
                    if h is None:
                        h = proc.inference[key] = _Hist(len(INFERENCE_BUCKETS_S), labels(
                            ("pid", ev.pid), ("comm", comm), ("class", cls), ("name", key[2])))
                h.add(INFERENCE_BUCKETS_S, ev.duration_ns / 1e9)
                return
            src = ev.source if ev.source in _RUNQUEUE_SOURCES else OTHER
            self._events[src] = self._events.get(src, 0) + 1
            series = labels(("pid", ev.pid), ("comm", comm), ("class", cls))
            if ev.source == "schedstat":
                acc = proc.schedstat.setdefault((comm, cls), [series, 0.0])
                acc[1] += ev.wait_ns / 1e9
                return
            rq = proc.runqueue.get((comm, cls))
            if rq is None:
                if len(proc.runqueue) >= self.max_series_per_pid:
                    return
                rq = proc.runqueue[(comm, cls)] = _Hist(len(RUNQUEUE_BUCKETS_S), series)
            rq.add(RUNQUEUE_BUCKETS_S, ev.wait_ns / 1e9)

    def latency_snapshot(self, pids: Iterable[int]) -> dict[int, PidLatency]:
        """The latency state of the given pids (those with any), for the control API's
        ``latency`` op: per pid, its series merged (span names, comm/class pairs). Holds
        the lock only to add up a few short bucket lists per pid."""
        out: dict[int, PidLatency] = {}
        wanted = list(pids)
        with self._lock:
            for pid in wanted:
                proc = self._procs.get(pid)
                if proc is None:
                    continue
                out[pid] = PidLatency(
                    _merge(proc.inference.values(), len(INFERENCE_BUCKETS_S)),
                    _merge(proc.runqueue.values(), len(RUNQUEUE_BUCKETS_S)),
                    sum(float(a[1]) for a in proc.schedstat.values()))
        return out

    # --- the scrape's side ---

    def render(self) -> bytes:
        """Every family, in the text exposition format (0.0.4)."""
        snap = self._snap
        with self._lock:  # copies only; formatting happens after
            actions = sorted(self._actions.items())
            events = dict(self._events)
            evicted, nprocs = self._evicted, len(self._procs)
            inference = [h.copy() for p in self._procs.values() for h in p.inference.values()]
            runqueue = [h.copy() for p in self._procs.values() for h in p.runqueue.values()]
            schedstat = [(a[0], a[1]) for p in self._procs.values()
                         for a in p.schedstat.values()]
        out = _Text()
        per_class = {c: [0, 0] for c in snap.classes}
        for t in snap.tasks.values():
            pair = per_class.setdefault(t.cls, [0, 0])
            pair[0] += 1
            pair[1] += t.active
        out.family("ainative_ai_tasks", "gauge",
                   "AI processes the daemon manages, per class.")
        for cls, (managed, _) in sorted(per_class.items()):
            out.sample("ainative_ai_tasks", labels(("class", cls)), managed)
        out.family("ainative_ai_tasks_active", "gauge",
                   "Managed AI processes whose class's knobs are in force now (serving ones "
                   "while busy, background ones while serving is busy).")
        for cls, (_, active) in sorted(per_class.items()):
            out.sample("ainative_ai_tasks_active", labels(("class", cls)), active)
        out.family("ainative_policy_actions_total", "counter",
                   "Knob values the daemon wrote or let go, per thread: applied, restored "
                   "(undone), lifted (undone when the class's condition ended), inherited "
                   "(put back on a thread or child that inherited it), override (a person "
                   "changed it; the daemon let go).")
        for (action, knob, cls), n in actions:
            out.sample("ainative_policy_actions_total",
                       labels(("action", action), ("knob", knob), ("class", cls)), n)
        out.family("ainative_inference_latency_seconds", "histogram",
                   "Traced inference requests (spans), per process and span name.")
        out.histogram("ainative_inference_latency_seconds", INFERENCE_LE, inference)
        out.family("ainative_runqueue_wait_seconds", "histogram",
                   "Time a thread of an AI process waited runnable for a CPU, per wakeup "
                   "(eBPF sched tracepoints).")
        out.histogram("ainative_runqueue_wait_seconds", RUNQUEUE_LE, runqueue)
        out.family("ainative_runqueue_schedstat_wait_seconds_total", "counter",
                   "Run-queue wait of an AI process summed from /proc schedstat (the "
                   "fallback where eBPF is unavailable).")
        for series, secs in schedstat:
            out.sample("ainative_runqueue_schedstat_wait_seconds_total", series, secs)
        self._render_pools(out, snap.pools)
        out.family("ainative_daemon_reconcile_seconds", "histogram",
                   "Time of one reconcile pass (new threads, manual changes, exits).")
        out.histogram("ainative_daemon_reconcile_seconds", RECONCILE_LE, [snap.reconcile])
        out.family("ainative_daemon_events_total", "counter",
                   "Events the daemon handled, by source: its process event source "
                   "(netlink, poll), its own telemetry (daemon), spans (span), run-queue "
                   "sources (ebpf, schedstat).")
        for src, n in sorted({**snap.process_events, **events}.items()):
            out.sample("ainative_daemon_events_total", labels(("source", src)), n)
        out.family("ainative_daemon_paused", "gauge",
                   "1 after `ainative restore` until `ainative resume`.")
        out.sample("ainative_daemon_paused", "", int(snap.paused))
        out.family("ainative_metrics_processes", "gauge",
                   "Processes with per-process latency series now.")
        out.sample("ainative_metrics_processes", "", nprocs)
        out.family("ainative_metrics_processes_evicted_total", "counter",
                   "Processes whose latency series were dropped to admit newer ones (the "
                   "exporter's bound on series).")
        out.sample("ainative_metrics_processes_evicted_total", "", evicted)
        return out.bytes()

    @staticmethod
    def _render_pools(out: _Text, pools: Sequence[PoolSample]) -> None:
        ids = [labels(("pid", p.pid), ("pool", p.name)) for p in pools]
        out.family("ainative_pool_bytes", "gauge",
                   "Pinned pool bytes a process reports, by state (used, free, total).")
        for p, pl in zip(pools, ids, strict=True):
            for state, v in (("used", p.used), ("free", p.free), ("total", p.total)):
                if v is not None:
                    out.sample("ainative_pool_bytes", f'{pl},state="{state}"', v)
        for name, kind, doc, get in (
                ("ainative_pool_peak_bytes", "gauge", "Most bytes a pinned pool had in use.",
                 lambda p: p.peak),
                ("ainative_pool_allocations_total", "counter",
                 "Allocations a pinned pool served.", lambda p: p.allocations),
                ("ainative_pool_allocation_failures_total", "counter",
                 "Allocations a pinned pool refused.", lambda p: p.failures),
                ("ainative_pool_fragmentation_ratio", "gauge",
                 "1 - largest free extent / free bytes (0: free space in one piece).",
                 lambda p: p.fragmentation)):
            out.family(name, kind, doc)
            for p, pl in zip(pools, ids, strict=True):
                v = get(p)
                if v is not None:
                    out.sample(name, pl, v)


@dataclass(frozen=True)
class PidLatency:
    """One process's latency state, merged over its series: bucket counts (not
    cumulative; the last is above every bound) over INFERENCE_BUCKETS_S and
    RUNQUEUE_BUCKETS_S, and the run-queue wait summed from /proc schedstat."""

    inference: tuple[int, ...]
    runqueue: tuple[int, ...]
    schedstat_wait_s: float


def _merge(hists: Iterable[_Hist], n: int) -> tuple[int, ...]:
    out = [0] * (n + 1)
    for h in hists:
        for i, c in enumerate(h.counts):
            out[i] += c
    return tuple(out)


def bucket_quantile(bounds: Sequence[float], counts: Sequence[int], q: float) -> float | None:
    """The q-quantile (0..1) of a fixed-bucket histogram: approximate, the upper bound of
    the bucket the quantile falls in (inf when it falls above the last bound); None for
    an empty histogram."""
    total = sum(counts)
    if not total:
        return None
    rank = max(1, math.ceil(q * total))
    cum = 0
    for i, n in enumerate(counts):
        cum += n
        if cum >= rank:
            return bounds[i] if i < len(bounds) else math.inf
    return math.inf


def log2_rebin(bounds: Sequence[float], counts: Sequence[int]) -> list[tuple[int | None, int]]:
    """A fixed-bucket histogram (seconds) re-binned to log2 microsecond buckets, as
    (upper bound in us, a power of two, or None above the last bound; count), ascending,
    empty buckets left out. Re-binned: each fixed bucket's count goes to the power of two
    at or above its upper bound, so the log2 view is as coarse as the fixed buckets."""
    out: dict[int | None, int] = {}
    for i, n in enumerate(counts):
        if not n:
            continue
        key: int | None = None
        if i < len(bounds):
            us = bounds[i] * 1e6
            key = 1 << max(0, math.ceil(math.log2(us) - 1e-9)) if us > 1 else 1
        out[key] = out.get(key, 0) + n
    return sorted(out.items(), key=lambda kv: math.inf if kv[0] is None else kv[0])


class _Text:
    """The text exposition format, written as strings are joined."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    def family(self, name: str, kind: str, doc: str) -> None:
        doc = doc.replace("\\", "\\\\").replace("\n", "\\n")
        self.parts.append(f"# HELP {name} {doc}\n# TYPE {name} {kind}\n")

    def sample(self, name: str, series: str, v: float) -> None:
        self.parts.append(f"{name}{{{series}}} {_num(v)}\n" if series
                          else f"{name} {_num(v)}\n")

    def histogram(self, name: str, le: Sequence[str],
                  series: Iterable[tuple[str, Sequence[int], float]]) -> None:
        add = self.parts.append
        bucket, count, total = f"{name}_bucket{{", f"{name}_count", f"{name}_sum"
        for lab, counts, secs in series:
            sep = "," if lab else ""
            cum = 0
            for bound, n in zip(le, counts, strict=True):
                cum += n
                add(f'{bucket}{lab}{sep}le="{bound}"}} {cum}\n')
            if lab:
                add(f"{count}{{{lab}}} {cum}\n{total}{{{lab}}} {_num(secs)}\n")
            else:
                add(f"{count} {cum}\n{total} {_num(secs)}\n")

    def bytes(self) -> bytes:
        return "".join(self.parts).encode()

