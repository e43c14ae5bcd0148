"""The open-loop scheduler: keeps its rate, measures from the scheduled time, counts late
and dropped requests instead of hiding them."""

from __future__ import annotations

import threading
import time

import pytest

from ainative.stress.loadgen import LoadConfig, OpenLoop


def busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_keeps_the_rate_with_a_fast_request() -> None:
    r = OpenLoop(LoadConfig(rate=500, duration=2.0), lambda: busy(0.0002)).run()
    assert r.scheduled == 1000
    assert r.completed == 1000 and r.dropped == 0 and r.errors == 0
    assert 1.9 < r.elapsed_s <= 2.05
    assert 450 < r.to_json()["throughput_per_s"] < 520
    # Latency includes the request's own service time.
    assert r.histogram.get_min_value() >= 200


def test_a_stall_makes_queued_requests_late_and_their_latency_counts() -> None:
    calls = [0]

    def request() -> None:
        calls[0] += 1
        if calls[0] == 50:
            time.sleep(0.2)  # one slow request: 200 ms of queue builds up behind it

    r = OpenLoop(LoadConfig(rate=1000, duration=1.0, late_threshold_s=0.001), request).run()
    assert r.completed == 1000 and r.dropped == 0
    # Requests due during the stall start late: about 200 of them.
    assert 150 <= r.late <= 260, r.late
    # Measured from the scheduled time, the one behind the stall waited ~200 ms
    # (a closed-loop tool would report ~0 for it: coordinated omission).
    assert r.histogram.get_max_value() >= 190_000
    assert r.histogram.get_value_at_percentile(99) >= 50_000


def test_overload_drops_and_counts_instead_of_queueing_forever() -> None:
    r = OpenLoop(LoadConfig(rate=1000, duration=1.5, max_queue_s=0.1),
                 lambda: busy(0.002)).run()  # 2 ms per request at 1 ms spacing
    assert r.dropped > 0
    assert r.completed + r.dropped + r.errors <= r.scheduled + 1
    assert r.completed < 900
    # The queue is bounded, so no latency exceeds the bound by much.
    assert r.histogram.get_max_value() < 200_000


def test_workers_share_the_load() -> None:
    r = OpenLoop(LoadConfig(rate=400, duration=1.0, workers=4), lambda: time.sleep(0.008)).run()
    assert r.completed == 400 and r.dropped == 0
    assert r.histogram.get_value_at_percentile(50) < 15_000


def test_stop_ends_early_and_marks_interrupted() -> None:
    loop = OpenLoop(LoadConfig(rate=200, duration=30.0), lambda: None)
    threading.Timer(0.5, loop.stop.set).start()
    r = loop.run()
    assert r.interrupted and r.elapsed_s < 5
    assert 50 < r.completed < 200


def test_errors_are_counted_with_the_first_message() -> None:
    def bad() -> None:
        raise RuntimeError("model exploded")

    r = OpenLoop(LoadConfig(rate=100, duration=0.3), bad).run()
    assert r.errors == r.scheduled and r.completed == 0
    assert r.first_error == "RuntimeError: model exploded"


def test_bad_configs() -> None:
    for kw in ({"rate": 0, "duration": 1}, {"rate": 1, "duration": 0},
               {"rate": 1, "duration": 1, "workers": 0}):
        with pytest.raises(ValueError):
            LoadConfig(**kw)  # type: ignore[arg-type]


def test_ticks_report_each_interval_and_keep_nothing_between() -> None:
    seen = []
    loop = OpenLoop(LoadConfig(rate=400, duration=1.2), lambda: busy(0.0002))
    r = loop.run(seen.append, tick_s=0.25)
    assert 3 <= len(seen) <= 5
    assert [p.completed for p in seen] == sorted(p.completed for p in seen)
    for p in seen:
        assert 300 < p.interval_throughput < 500
        assert 0.2 <= p.interval["p50_ms"] < 50
    assert loop._in < 200  # the interval buffer is emptied at every tick
    assert r.completed == 480


def test_without_a_reader_no_interval_figures_are_kept() -> None:
    loop = OpenLoop(LoadConfig(rate=500, duration=0.5), lambda: None)
    loop.run()
    assert loop._in == 0
