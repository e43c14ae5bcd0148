"""Attribution: how much of a span its thread spent waiting for a CPU, and who had it.

Pure functions over events, no I/O: ``trace report`` (and anything else holding spans and
run-queue events) joins them after the fact, so a span costs nothing extra when it is
recorded and a traced process never sees anyone else's scheduling data.

The rule. A span covers ``[ts_ns - duration_ns, ts_ns]`` of its thread; a run-queue event
covers ``[ts_ns - wait_ns, ts_ns]`` (the thread was runnable and waited, then got the
CPU at ``ts_ns``). The span's ``runqueue_wait_ns`` is the sum, over the run-queue events
of the same pid and tid, of each wait clipped to the span; ``ran_instead`` merges those
waits' ``ran_instead`` lists by pid, each entry scaled by the part of its wait that falls
inside the span, and keeps the ``top`` largest.

Which spans get a figure: those of a process the run-queue source watched (it has at
least one run-queue event, or is in ``covered_pids``): their threads' missing waits mean
"did not wait" (0), not "unknown". Spans of other processes keep ``None``.

With the schedstat source a run-queue event is a sum over a sampling interval, placed at
its end: the clipped figure is then an estimate, good to the sampling interval.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ainative.telemetry.events import InferenceLatency, RanInstead, RunqueueLatency

DEFAULT_TOP = 3


def overlap_ns(a_start: int, a_end: int, b_start: int, b_end: int) -> int:
    """Length of the intersection of [a_start, a_end] and [b_start, b_end] (0 if none)."""
    return max(0, min(a_end, b_end) - max(a_start, b_start))


@dataclass(frozen=True)
class Attribution:
    """What a span's thread waited for during the span."""

    runqueue_wait_ns: int
    ran_instead: tuple[RanInstead, ...]


class _Thread:
    """One thread's waits, sorted by start, for interval lookups."""

    __slots__ = ("max_len", "starts", "waits")

    def __init__(self, waits: list[RunqueueLatency]) -> None:
        waits.sort(key=lambda w: (w.ts_ns - w.wait_ns, w.ts_ns))
        self.waits = waits
        self.starts = [w.ts_ns - w.wait_ns for w in waits]
        self.max_len = max((w.wait_ns for w in waits), default=0)

    def overlapping(self, start: int, end: int) -> Iterable[tuple[RunqueueLatency, int]]:
        """(wait, overlap ns) of each wait that shares a positive length with the span."""
        # A wait starting at or after the span's end cannot overlap; one starting more
        # than max_len before the span's start ended before it.
        hi = bisect.bisect_left(self.starts, end)
        lo = bisect.bisect_right(self.starts, start - self.max_len - 1)
        for w in self.waits[lo:hi]:
            ov = overlap_ns(start, end, w.ts_ns - w.wait_ns, w.ts_ns)
            if ov > 0:
                yield w, ov


class WaitIndex:
    """Run-queue events indexed by (pid, tid), for attributing many spans."""

    def __init__(self, waits: Iterable[RunqueueLatency]) -> None:
        by_thread: dict[tuple[int, int], list[RunqueueLatency]] = {}
        for w in waits:
            by_thread.setdefault((w.pid, w.tid), []).append(w)
        self.pids = frozenset(pid for pid, _ in by_thread)
        self._threads = {k: _Thread(v) for k, v in by_thread.items()}

    def during(self, pid: int, tid: int, start_ns: int, end_ns: int,
               top: int = DEFAULT_TOP) -> Attribution:
        """The wait of thread (pid, tid) inside [start_ns, end_ns], and who ran instead."""
        t = self._threads.get((pid, tid))
        if t is None:
            return Attribution(0, ())
        total = 0
        merged: dict[int, _Ran] = {}
        for w, ov in t.overlapping(start_ns, end_ns):
            total += ov
            for r in w.ran_instead:
                part = r.ns * ov // w.wait_ns if w.wait_ns else 0
                m = merged.get(r.pid)
                if m is None:
                    merged[r.pid] = _Ran(part, r.comm, r.ns)
                else:
                    m.ns += part
                    if r.ns > m.comm_ns:  # name the pid by the comm it ran longest as
                        m.comm, m.comm_ns = r.comm, r.ns
        ranked = sorted(merged.items(), key=lambda kv: (-kv[1].ns, kv[0]))[:top]
        return Attribution(total, tuple(RanInstead(pid, m.comm, m.ns)
                                        for pid, m in ranked if m.ns > 0))


@dataclass
class _Ran:
    ns: int
    comm: str
    comm_ns: int


def attribute_span(span: InferenceLatency, index: WaitIndex,
                   top: int = DEFAULT_TOP) -> InferenceLatency:
    """``span`` with runqueue_wait_ns and ran_instead filled from ``index``."""
    a = index.during(span.pid, span.tid, span.ts_ns - span.duration_ns, span.ts_ns, top)
    return dataclasses.replace(span, runqueue_wait_ns=a.runqueue_wait_ns,
                               ran_instead=a.ran_instead)


def attribute(spans: Sequence[InferenceLatency],
              waits: Iterable[RunqueueLatency] | WaitIndex, *,
              top: int = DEFAULT_TOP,
              covered_pids: Iterable[int] = ()) -> list[InferenceLatency]:
    """Every span of a watched process with its run-queue wait and who ran instead;
    spans of other processes unchanged (see the module's docstring)."""
    index = waits if isinstance(waits, WaitIndex) else WaitIndex(waits)
    covered = index.pids | frozenset(covered_pids)
    return [attribute_span(s, index, top) if s.pid in covered else s for s in spans]
