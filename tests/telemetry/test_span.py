"""In-process spans, for real: a traced onnxruntime process sends its spans to a real
EventReceiver over a real socket; they arrive with its pid and thread id and plausible
durations; without a listener the traced code runs on and the drops are counted; a
forked child reports as itself; the decorator and the block record what they time."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ainative.telemetry import events, span
from ainative.telemetry.collector import EventReceiver
from ainative.telemetry.events import Event, InferenceLatency

CHILD = str(Path(__file__).with_name("traced_child.py"))


class Received:
    """An EventReceiver on its own thread, collecting what it accepts."""

    def __init__(self, path: str) -> None:
        self.events: list[Event] = []
        self.rx = EventReceiver(path, self.events.append)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.rx.run, args=(self.stop,), daemon=True)
        self.thread.start()

    def spans(self) -> list[InferenceLatency]:
        return [e for e in self.events if isinstance(e, InferenceLatency)]

    def wait_for(self, n: int, timeout: float = 10.0) -> list[InferenceLatency]:
        deadline = time.monotonic() + timeout
        while len(self.spans()) < n and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.spans()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(2)
        self.rx.close()


@pytest.fixture
def received(tmp_path: Path) -> Iterator[Received]:
    r = Received(str(tmp_path / "events.sock"))
    try:
        yield r
    finally:
        r.close()


def run_child(path: str, *args: str) -> dict[str, object]:
    env = dict(os.environ, AINATIVE_EVENTS=path)
    out = subprocess.run([sys.executable, CHILD, *args], env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_onnxruntime_spans_arrive_with_pid_tid_and_plausible_durations(
        received: Received) -> None:
    n = 200
    before = time.time_ns()
    child = run_child(received.rx.path, str(n), "--sleep-us", "300")
    after = time.time_ns()
    spans = received.wait_for(2 * n)
    assert child["sent"] == 2 * n and child["dropped"] == 0, child
    assert len(spans) == 2 * n
    assert {s.pid for s in spans} == {child["pid"]}
    assert {s.tid for s in spans} == {child["tid"]}
    runs = [s for s in spans if s.name == "tiny"]  # traced_session names it by the graph
    blocks = [s for s in spans if s.name == "block"]
    assert len(runs) == len(blocks) == n
    assert [s.request for s in runs] == [f"r{i}" for i in range(n)]
    assert [s.request for s in blocks] == [str(i) for i in range(n)]
    for s in spans:
        assert before < s.ts_ns - s.duration_ns < s.ts_ns < after
        assert s.runqueue_wait_ns is None and s.ran_instead == ()
    # A 256x256 MatMul at batch 8 takes microseconds, not seconds; a 300 us sleep takes
    # at least 300 us; together they fit in the loop's wall time.
    assert all(0 < s.duration_ns < 0.5e9 for s in runs)
    assert all(s.duration_ns >= 300_000 for s in blocks)
    assert sum(s.duration_ns for s in spans) <= int(child["wall_ns"])  # type: ignore[call-overload]
    # Spans of one thread end in order and do not overlap.
    ordered = sorted(spans, key=lambda s: s.ts_ns)
    for a, b in itertools.pairwise(ordered):
        assert a.ts_ns <= b.ts_ns - b.duration_ns + 1_000_000  # clocks: realtime vs monotonic
    assert received.rx.stats().rejected == 0


def test_no_listener_leaves_the_code_alone_and_counts_drops(tmp_path: Path) -> None:
    t0 = time.monotonic()
    child = run_child(str(tmp_path / "nobody-listens.sock"), "300", "--sleep-us", "0")
    assert time.monotonic() - t0 < 30
    assert child["sent"] == 0
    assert child["recorded"] == 600 and child["dropped"] == 600 and child["pending"] == 0
    assert child["reasons"] == {"no_listener": 600}


def test_a_path_that_is_not_a_socket_only_costs_drops(tmp_path: Path) -> None:
    f = tmp_path / "plain-file"
    f.write_text("not a socket")
    child = run_child(str(f), "50", "--sleep-us", "0")
    assert child["sent"] == 0 and child["dropped"] == 100, child
    assert f.read_text() == "not a socket"


def test_a_forked_child_reports_its_own_spans(received: Received) -> None:
    out = run_child(received.rx.path, "50", "--fork", "--sleep-us", "0")
    child = out["child"]
    assert isinstance(child, dict)
    assert out["pid"] != child["pid"]
    assert out["sent"] == 101 and child["sent"] == 100, out  # 1: the span before the fork
    spans = received.wait_for(201)  # 100 + 100 + the parent's span before the fork
    by_pid: dict[int, set[int]] = {}
    for s in spans:
        by_pid.setdefault(s.pid, set()).add(s.tid)
    assert by_pid[int(out["pid"])] == {out["tid"]}  # type: ignore[call-overload]
    assert by_pid[int(child["pid"])] == {child["tid"]}
    assert received.rx.stats().rejected == 0


def test_the_collector_can_restart_and_spans_find_it_again(tmp_path: Path) -> None:
    # In this process: spans go to a receiver that is closed and bound again at the same
    # path; the sender reconnects (at most RETRY_AFTER_S later) instead of giving up.
    path = str(tmp_path / "restart.sock")
    code = """
import sys, time
import ainative
from ainative.telemetry import span
for i in range(5):
    with ainative.span("a"):
        pass
span.flush(2)
sys.stdout.write("first\\n"); sys.stdout.flush()
sys.stdin.readline()
deadline = time.monotonic() + 5
while time.monotonic() < deadline and span.stats().sent < 10:
    with ainative.span("b"):
        pass
    span.flush(1)
    time.sleep(0.05)
"""
    r1 = Received(path)
    p = subprocess.Popen([sys.executable, "-c", code], env=dict(os.environ,
                         AINATIVE_EVENTS=path), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True)
    assert p.stdout is not None and p.stdin is not None
    try:
        assert p.stdout.readline() == "first\n"
        assert len(r1.wait_for(5)) == 5
        r1.close()
        r2 = Received(path)
        p.stdin.write("go\n")
        p.stdin.flush()
        assert r2.wait_for(5, timeout=8) and {s.name for s in r2.spans()} == {"b"}
        r2.close()
    finally:
        p.kill()
        p.wait()


# --- in this process: the API itself ---


def test_decorator_block_and_coroutine_record_names_and_survive_exceptions() -> None:
    span.flush(2)
    before = span.stats().recorded

    @span.traced
    def bare() -> int:
        return 1

    @span.traced("named")
    def failing() -> None:
        raise KeyError("boom")

    @span.traced
    async def coro() -> str:
        await asyncio.sleep(0.002)
        return "done"

    assert bare() == 1 and bare.__name__ == "bare"
    with pytest.raises(KeyError):
        failing()
    assert asyncio.run(coro()) == "done"
    with pytest.raises(ValueError), span.span("block"):
        raise ValueError("the block's own error goes on")
    names = [item[3] for item in list(span._ring)]
    assert span.stats().recorded == before + 4
    if names:  # the sender may already have taken some
        assert set(names) <= {"test_decorator_block_and_coroutine_record_names_and_survive_"
                              "exceptions.<locals>.bare", "named", "test_decorator_block_and_"
                              "coroutine_record_names_and_survive_exceptions.<locals>.coro",
                              "block"}


def test_a_span_in_a_thread_carries_that_threads_id() -> None:
    got: list[int] = []

    def worker() -> None:
        got.append(threading.get_native_id())
        with span.span("in-thread"):
            pass
        got.append(span._ring[-1][2])

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert got[0] == got[1] != threading.get_native_id()


def test_the_wire_bytes_are_those_of_events_encode() -> None:
    s = span._Sender("/nonexistent")
    for name, request in [("infer", None), ("é\"\\x\n", "r-1"), ("n" * 300, 12345),
                          ("tiny", "q" * 200)]:
        item = (1_700_000_000_000_000_000, 1234, 42, name, request, 0)
        ev = InferenceLatency(ts_ns=item[0], pid=s.pid, tid=42, name=str(name)[:128],
                              duration_ns=1234,
                              request=None if request is None else str(request)[:128])
        assert s._encode(item) == events.encode(ev)
        assert events.decode(s._encode(item)) == ev


def test_span_cost_is_a_few_microseconds_at_most() -> None:
    n = 20000
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter_ns()
        for _ in range(n):
            with span.span("cost"):
                pass
        best = min(best, (time.perf_counter_ns() - t0) / n)
        span.flush(2)
    assert best < 5000, f"{best:.0f} ns per span"
