"""Attribution arithmetic: property tests against a brute-force reference, and a worked
example of who ran instead."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ainative.telemetry.attribution import WaitIndex, attribute, overlap_ns
from ainative.telemetry.events import InferenceLatency, RanInstead, RunqueueLatency

T = st.integers(min_value=0, max_value=10_000)
LEN = st.integers(min_value=0, max_value=3_000)


def span(end: int, dur: int, pid: int = 1, tid: int = 1) -> InferenceLatency:
    return InferenceLatency(ts_ns=end, pid=pid, tid=tid, name="s", duration_ns=dur)


def wait(end: int, w: int, pid: int = 1, tid: int = 1,
         ran: tuple[RanInstead, ...] = ()) -> RunqueueLatency:
    return RunqueueLatency(ts_ns=end, pid=pid, tid=tid, wait_ns=w, ran_instead=ran)


@given(T, LEN, T, LEN)
def test_overlap_is_symmetric_and_bounded(a: int, al: int, b: int, bl: int) -> None:
    a0, a1, b0, b1 = a, a + al, b, b + bl
    ov = overlap_ns(a0, a1, b0, b1)
    assert ov == overlap_ns(b0, b1, a0, a1)
    assert 0 <= ov <= min(al, bl)
    # Brute force over unit cells.
    assert ov == sum(1 for t in range(min(a0, b0), max(a1, b1))
                     if a0 <= t < a1 and b0 <= t < b1)


@st.composite
def scenario(draw: st.DrawFn) -> tuple[list[InferenceLatency], list[RunqueueLatency]]:
    spans = [span(draw(st.integers(3_000, 20_000)), draw(LEN),
                  tid=draw(st.integers(1, 2))) for _ in range(draw(st.integers(0, 8)))]
    waits = [wait(draw(st.integers(0, 20_000)), draw(LEN), tid=draw(st.integers(1, 2)),
                  ran=tuple(RanInstead(draw(st.integers(50, 53)), "hog", draw(LEN))
                            for _ in range(draw(st.integers(0, 2)))))
             for _ in range(draw(st.integers(0, 30)))]
    return spans, waits


@settings(max_examples=300)
@given(scenario())
def test_attributed_wait_is_the_clipped_sum_over_the_same_thread(
        sc: tuple[list[InferenceLatency], list[RunqueueLatency]]) -> None:
    spans, waits = sc
    out = attribute(spans, waits, covered_pids=[1])
    assert len(out) == len(spans)
    for s, a in zip(spans, out, strict=True):
        s0, s1 = s.ts_ns - s.duration_ns, s.ts_ns
        mine = [w for w in waits if w.tid == s.tid]
        ref = sum(overlap_ns(s0, s1, w.ts_ns - w.wait_ns, w.ts_ns) for w in mine)
        assert a.runqueue_wait_ns == ref
        assert (a.ts_ns, a.duration_ns, a.tid, a.name) == (s.ts_ns, s.duration_ns, s.tid,
                                                            s.name)
        # Who ran instead: merged by pid, largest first, at most 3, each no more than the
        # ran_instead time of the waits it came from.
        pids = [r.pid for r in a.ran_instead]
        assert len(pids) == len(set(pids)) <= 3
        assert [r.ns for r in a.ran_instead] == sorted((r.ns for r in a.ran_instead),
                                                       reverse=True)
        for r in a.ran_instead:
            assert 0 < r.ns <= sum(x.ns for w in mine for x in w.ran_instead
                                   if x.pid == r.pid)


@given(scenario())
def test_waits_that_do_not_overlap_each_other_never_exceed_the_span(
        sc: tuple[list[InferenceLatency], list[RunqueueLatency]]) -> None:
    spans, waits = sc
    # A thread waits in one place at a time: keep each thread's waits disjoint.
    disjoint: list[RunqueueLatency] = []
    for w in sorted(waits, key=lambda w: w.ts_ns):
        if all(overlap_ns(w.ts_ns - w.wait_ns, w.ts_ns, d.ts_ns - d.wait_ns, d.ts_ns) == 0
               for d in disjoint if d.tid == w.tid):
            disjoint.append(w)
    for a in attribute(spans, disjoint, covered_pids=[1]):
        assert a.runqueue_wait_ns is not None and a.runqueue_wait_ns <= a.duration_ns


def test_worked_example_with_who_ran_instead() -> None:
    # Span: [1000, 11000] of thread (7, 8). Waits of that thread: [0, 2000] (half inside),
    # [5000, 9000] (inside), and one of another thread and one of another process.
    s = span(11_000, 10_000, pid=7, tid=8)
    waits = [
        wait(2_000, 2_000, 7, 8, (RanInstead(100, "xz", 2_000),)),
        wait(9_000, 4_000, 7, 8, (RanInstead(100, "xz", 1_000), RanInstead(200, "make", 3_000))),
        wait(10_000, 5_000, 7, 9, (RanInstead(300, "other-thread", 5_000),)),
        wait(10_000, 5_000, 6, 8, (RanInstead(400, "other-pid", 5_000),)),
    ]
    (a,) = attribute([s], waits)
    assert a.runqueue_wait_ns == 1_000 + 4_000
    assert a.ran_instead == (RanInstead(200, "make", 3_000), RanInstead(100, "xz", 2_000))
    assert attribute([s], waits, top=1)[0].ran_instead == (RanInstead(200, "make", 3_000),)


def test_unwatched_processes_keep_none_and_watched_threads_without_waits_get_zero() -> None:
    index = WaitIndex([wait(100, 10, pid=1, tid=1)])
    out = attribute([span(50, 10, pid=1, tid=2), span(50, 10, pid=2, tid=2)], index)
    assert out[0].runqueue_wait_ns == 0 and out[0].ran_instead == ()
    assert out[1].runqueue_wait_ns is None
