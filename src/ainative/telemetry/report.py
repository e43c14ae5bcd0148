"""What ``ainative trace report`` says about a trace file: built once as typed data
(``TraceReport``), then printed as text, as JSON or drawn as a PNG.

- Per process and span name: the count, p50/p90/p99/p99.9/max (nearest rank over every
  span, no sampling) and a log2 histogram in microseconds printed like bcc's tools
  (``usecs : count distribution``, 40 stars for the fullest bucket).
- Per process, the run-queue waits the run-queue source saw, the same way.
- Counts per event type (all six, zeros included: the JSON keys do not come and go).
- The slowest spans, each with the run-queue wait its thread had during it and who ran
  instead, joined at report time (attribution.py) from the run-queue events of that
  thread around the span: only those rows are read, so a large trace costs one pass over
  the durations plus a few indexed look-ups.

``report_json`` is a stable schema (``REPORT_SCHEMA``): times in ns, histograms as
``[{"low_us", "high_us", "count"}]`` from the first non-empty bucket to the last.
"""

from __future__ import annotations

import math
import os
from array import array
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ainative.telemetry.attribution import WaitIndex, attribute_span
from ainative.telemetry.events import (
    EVENT_TYPES,
    InferenceLatency,
    RunqueueLatency,
)
from ainative.telemetry.store import EventStore, TraceMeta

REPORT_SCHEMA = "ainative-trace-report/1"
PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99.9", 99.9))
STARS = 40  # bcc's stars_max
DEFAULT_TOP = 10


@dataclass(frozen=True)
class Bucket:
    low_us: int
    high_us: int
    count: int


@dataclass(frozen=True)
class Distribution:
    """Summary of one series of durations (ns)."""

    count: int
    total_ns: int
    percentiles_ns: dict[str, int]  # "p50", "p90", "p99", "p99.9"
    max_ns: int
    histogram: tuple[Bucket, ...]  # log2 buckets in microseconds, leading/trailing zeros cut


@dataclass(frozen=True)
class SpanSeries:
    name: str
    latency: Distribution


@dataclass(frozen=True)
class ProcessReport:
    pid: int
    comm: str
    spans: tuple[SpanSeries, ...]
    runqueue: Distribution | None  # None when no run-queue event of this process


@dataclass(frozen=True)
class SlowSpan:
    span: InferenceLatency  # attributed when the process was watched
    comm: str


@dataclass(frozen=True)
class TraceReport:
    path: str
    meta: TraceMeta
    counts: dict[str, int]
    processes: tuple[ProcessReport, ...]
    slowest: tuple[SlowSpan, ...]
    attribution: bool  # whether any process had run-queue events to attribute from
    attribution_why: str  # when not, why not
    series_points: dict[tuple[int, str], tuple[array[int], array[int]]] = field(
        default_factory=dict, repr=False)  # (pid, name) -> (end ts, duration): for plots


def log2_bucket(us: int) -> int:
    """bcc's log2 slot of a value: 0 and 1 -> 1 ("0 -> 1"), 2-3 -> 2, 4-7 -> 3, ..."""
    return max(1, us.bit_length())


def bucket_range(slot: int) -> tuple[int, int]:
    low, high = (1 << slot) >> 1, (1 << slot) - 1
    return (low - 1 if low == high else low), high


def distribution(values_ns: Iterable[int]) -> Distribution:
    vals = sorted(values_ns)
    n = len(vals)
    if not n:
        return Distribution(0, 0, {k: 0 for k, _ in PERCENTILES}, 0, ())
    pct = {k: vals[max(0, math.ceil(p / 100.0 * n) - 1)] for k, p in PERCENTILES}
    slots: dict[int, int] = {}
    for v in vals:
        s = log2_bucket(v // 1000)
        slots[s] = slots.get(s, 0) + 1
    lo, hi = min(slots), max(slots)
    hist = tuple(Bucket(*bucket_range(s), slots.get(s, 0)) for s in range(lo, hi + 1))
    return Distribution(n, sum(vals), pct, vals[-1], hist)


def build_report(store: EventStore, top: int = DEFAULT_TOP) -> TraceReport:
    """Read a trace (or the daemon's store) into a TraceReport."""
    meta = store.trace_meta()
    counts = {t: 0 for t in EVENT_TYPES}
    counts.update(store.counts())
    comms = dict(meta.processes)

    spans: dict[tuple[int, str], tuple[array[int], array[int]]] = {}
    for ts, pid, name, v in store.values(InferenceLatency.TYPE):
        series = spans.get((pid, name))
        if series is None:
            series = spans[(pid, name)] = (array("q"), array("q"))
        series[0].append(ts)
        series[1].append(v)
    waits: dict[int, array[int]] = {}
    for _, pid, _, v in store.values(RunqueueLatency.TYPE):
        waits.setdefault(pid, array("q")).append(v)

    procs = []
    for pid in sorted({p for p, _ in spans} | set(waits)):
        named = tuple(SpanSeries(name, distribution(spans[(p, name)][1]))
                      for p, name in sorted(spans) if p == pid)
        procs.append(ProcessReport(pid, comms.get(pid, ""), named,
                                   distribution(waits[pid]) if pid in waits else None))

    slowest = []
    for ev in store.slowest(top):
        if not isinstance(ev, InferenceLatency):
            continue
        if ev.pid in waits:
            ev = _attribute(store, ev)
        slowest.append(SlowSpan(ev, comms.get(ev.pid, "")))

    if waits:
        why = ""
    elif meta.runqueue_source == "none":
        why = meta.runqueue_why or "the trace has no run-queue source"
    else:
        why = (f"the {meta.runqueue_source} run-queue source recorded no waits of the "
               "traced processes")
    return TraceReport(store.path, meta, counts, tuple(procs), tuple(slowest),
                       bool(waits), why, spans)


def _attribute(store: EventStore, span: InferenceLatency) -> InferenceLatency:
    """The span with the run-queue waits of its thread that overlap it: those ending
    from the span's start up to the longest wait of the process after its end. A span
    that began before the source watched its process (a process is watched once its
    first span arrives) is left unattributed: no waits then means "not seen", not 0."""
    start = span.ts_ns - span.duration_ns
    since = store.first_start(RunqueueLatency.TYPE, span.pid)
    if since is None or start < since:
        return span
    longest = store.max_value(RunqueueLatency.TYPE, span.pid)
    near = [w for w in store.query(types=[RunqueueLatency.TYPE], pid=span.pid, tid=span.tid,
                                   since_ns=start, until_ns=span.ts_ns + longest)
            if isinstance(w, RunqueueLatency)]
    return attribute_span(span, WaitIndex(near))


# --- text ---

def _ms(ns: int | None) -> str:
    return "-" if ns is None else f"{ns / 1e6:.3f}"


def histogram_lines(hist: tuple[Bucket, ...], unit: str = "usecs") -> list[str]:
    """bcc's print_log2_hist layout."""
    if not hist:
        return []
    peak = max(b.count for b in hist) or 1
    wide = hist[-1].high_us >= 1 << 32
    stars = STARS // 2 if wide else STARS
    if wide:
        lines = [f"               {unit:<29s} : count     distribution"]
        body = "{:>20d} -> {:<20d} : {:<8d} |{:<" + str(stars) + "s}|"
    else:
        lines = [f"     {unit:<19s} : count     distribution"]
        body = "{:>10d} -> {:<10d} : {:<8d} |{:<" + str(stars) + "s}|"
    for b in hist:
        n = min(stars, stars * b.count // peak)  # bcc: floor, the fullest gets them all
        lines.append(body.format(b.low_us, b.high_us, b.count, "*" * n))
    return lines


def _percentile_line(d: Distribution) -> str:
    parts = [f"{k} {_ms(d.percentiles_ns[k])}" for k, _ in PERCENTILES]
    return f"  ms: {'  '.join(parts)}  max {_ms(d.max_ns)}  (n={d.count})"


def render_text(rep: TraceReport) -> str:
    m = rep.meta
    out = [f"trace {rep.path}"]
    if m.started_ns and m.ended_ns:
        out.append(f"recorded on {m.host or '?'} (kernel {m.kernel or '?'}) for "
                   f"{(m.ended_ns - m.started_ns) / 1e9:.1f} s")
    rq = m.runqueue_source
    out.append(f"run-queue source: {rq}" + (f" ({m.runqueue_why})" if m.runqueue_why else ""))
    out.append("")
    out.append("events:")
    for t, n in rep.counts.items():
        out.append(f"  {t:<20s} {n}")
    for p in rep.processes:
        who = f"pid {p.pid}" + (f" ({p.comm})" if p.comm else "")
        for s in p.spans:
            out.append("")
            out.append(f"{who}, span {s.name!r}: {s.latency.count} spans, latency")
            out += histogram_lines(s.latency.histogram)
            out.append(_percentile_line(s.latency))
        if p.runqueue is not None:
            out.append("")
            out.append(f"{who}: run-queue wait ({p.runqueue.count} events, "
                       f"{p.runqueue.total_ns / 1e6:.3f} ms in all)")
            out += histogram_lines(p.runqueue.histogram)
            out.append(_percentile_line(p.runqueue))
    out.append("")
    if not rep.slowest:
        out.append("no spans in this trace: run the traced process with AINATIVE_EVENTS "
                   "set to the path `trace record` printed")
        return "\n".join(out)
    out.append(f"slowest {len(rep.slowest)} requests"
               + ("" if rep.attribution else f" (no run-queue attribution: "
                  f"{rep.attribution_why})") + ":")
    out.append(f"  {'#':>3} {'pid':>7} {'tid':>7} {'name':<16} {'request':<12} "
               f"{'latency ms':>10} {'rq wait ms':>10}  ran instead")
    for i, slow in enumerate(rep.slowest, 1):
        ev = slow.span
        ran = ", ".join(f"{r.comm}[{r.pid}] {r.ns / 1e6:.3f} ms" for r in ev.ran_instead)
        out.append(f"  {i:>3} {ev.pid:>7} {ev.tid:>7} {ev.name[:16]:<16} "
                   f"{(ev.request or '-')[:12]:<12} {_ms(ev.duration_ns):>10} "
                   f"{_ms(ev.runqueue_wait_ns):>10}  {ran or '-'}")
    if rep.attribution and any(s.span.runqueue_wait_ns is None for s in rep.slowest):
        out.append("  (rq wait -: the span began before the run-queue source watched its "
                   "process)")
    return "\n".join(out)


# --- JSON ---

def _dist_json(d: Distribution) -> dict[str, Any]:
    return {"count": d.count, "total_ns": d.total_ns,
            **{f"{k.replace('.', '')}_ns": v for k, v in d.percentiles_ns.items()},
            "max_ns": d.max_ns,
            "histogram": [{"low_us": b.low_us, "high_us": b.high_us, "count": b.count}
                          for b in d.histogram]}


def report_json(rep: TraceReport) -> dict[str, Any]:
    m = rep.meta
    return {
        "schema": REPORT_SCHEMA,
        "file": rep.path,
        "meta": {"schema_version": m.schema_version, "host": m.host, "kernel": m.kernel,
                 "started_ns": m.started_ns, "ended_ns": m.ended_ns,
                 "runqueue_source": m.runqueue_source, "runqueue_why": m.runqueue_why},
        "counts": rep.counts,
        "processes": [{"pid": p.pid, "comm": p.comm,
                       "spans": [{"name": s.name, **_dist_json(s.latency)} for s in p.spans],
                       "runqueue": None if p.runqueue is None else _dist_json(p.runqueue)}
                      for p in rep.processes],
        "attribution": {"available": rep.attribution, "why": rep.attribution_why},
        "slowest": [{"ts_ns": s.span.ts_ns, "pid": s.span.pid, "tid": s.span.tid,
                     "comm": s.comm, "name": s.span.name, "request": s.span.request,
                     "duration_ns": s.span.duration_ns,
                     "runqueue_wait_ns": s.span.runqueue_wait_ns,
                     "ran_instead": [{"pid": r.pid, "comm": r.comm, "ns": r.ns}
                                     for r in s.span.ran_instead]}
                    for s in rep.slowest],
    }


# --- plot ---

MAX_PLOT_POINTS = 20000  # per series: beyond, every k-th span (the slowest are marked)


def plot(rep: TraceReport, path: str) -> None:
    """A PNG: latency over time per (process, span name) with the slowest marked, and
    the latency distributions on a log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 8))
    t0 = min((pts[0][0] for pts in rep.series_points.values() if pts[0]), default=0)
    for (pid, name), (ts, dur) in sorted(rep.series_points.items()):
        step = max(1, len(ts) // MAX_PLOT_POINTS)
        xs = [(t - t0) / 1e9 for t in ts[::step]]
        ys = [d / 1e6 for d in dur[::step]]
        label = f"{pid} {name}"
        ax1.plot(xs, ys, ".", markersize=2, label=label)
        pos = [d / 1e6 for d in dur if d > 0]
        if pos:
            lo, hi = min(pos), max(pos)
            bins = [lo * (hi / lo) ** (i / 40) for i in range(41)] if hi > lo else 10
            ax2.hist(pos, bins=bins, histtype="step", label=label)
    if rep.slowest:
        ax1.plot([(s.span.ts_ns - t0) / 1e9 for s in rep.slowest],
                 [s.span.duration_ns / 1e6 for s in rep.slowest], "rx", label="slowest")
    ax1.set_yscale("log")
    ax1.set_xlabel("seconds into the trace")
    ax1.set_ylabel("span latency (ms)")
    ax1.set_title(f"spans in {os.path.basename(rep.path)}")
    ax2.set_xscale("log")
    ax2.set_yscale("log")
    ax2.set_xlabel("span latency (ms)")
    ax2.set_ylabel("spans")
    for ax in (ax1, ax2):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
