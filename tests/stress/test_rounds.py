"""Merging a scenario's rounds: histograms add (p99 of all requests, not a mean of p99s),
counts and seconds sum, a failed round fails the scenario. Real HdrHistograms, recorded
with known latencies."""

from __future__ import annotations

from typing import Any

import pytest

from ainative.stress.metrics import new_histogram, summarise
from ainative.stress.rounds import encode_histogram, merge_rounds


def round_result(latencies_us: list[int], late: int, rq: float) -> dict[str, Any]:
    h = new_histogram()
    for v in latencies_us:
        h.record_value(v)
    return {"scheduled": len(latencies_us), "completed": len(latencies_us), "late": late,
            "dropped": 0, "errors": 0, "elapsed_s": 1.0, "throughput_per_s": 0.0,
            "latency": summarise(h), "histogram": encode_histogram(h),
            "resources": {"run_queue_wait_s": rq, "cpu_user_s": 0.5, "cpu_system_s": 0.1,
                          "peak_rss_mib": 80.0},
            "contention_cpu_s": 1.9, "sched": {"nice": 0}}


def test_rounds_merge_into_the_percentiles_of_every_request() -> None:
    # Round 1: 985 fast requests and 15 slow; round 2: all fast. Merged, 15 of 2000 are
    # slow (0.75 %): p99 is fast although round 1's own p99 (1.5 % slow) is slow.
    r1 = round_result([300] * 985 + [20_000] * 15, late=10, rq=0.25)
    r2 = round_result([310] * 1000, late=1, rq=0.5)
    assert r1["latency"]["p99_ms"] > 10
    m = merge_rounds([r1, r2])
    assert m["completed"] == 2000 and m["late"] == 11
    assert m["resources"]["run_queue_wait_s"] == pytest.approx(0.75)
    assert m["contention_cpu_s"] == pytest.approx(3.8)
    assert m["resources"]["peak_rss_mib"] == 80.0  # not a sum: the last round's
    assert m["latency"]["p99_ms"] < 0.4
    assert m["latency"]["max_ms"] == pytest.approx(20.0, rel=0.01)
    assert m["throughput_per_s"] == pytest.approx(1000.0)
    assert [x["p99_ms"] for x in m["rounds"]] == [r1["latency"]["p99_ms"],
                                                  r2["latency"]["p99_ms"]]
    # Merging is by histogram, not an average: the merged p99.9 sits in the slow mode.
    assert m["latency"]["p99_9_ms"] > 10


def test_a_failed_round_fails_the_scenario_and_one_round_is_itself() -> None:
    ok = round_result([300] * 100, late=0, rq=0.0)
    bad = {"error": "the model server exited"}
    assert merge_rounds([ok, bad])["error"] == "round 2 of 2: the model server exited"
    assert merge_rounds([ok]) is ok
    with pytest.raises(ValueError):
        merge_rounds([])


def test_the_verdict_pairs_ainative_with_alone_round_by_round() -> None:
    from ainative.stress.compare import verdict

    alone = merge_rounds([round_result([300] * 1000, 0, 0.1), round_result([900] * 1000, 0, 0.1),
                          round_result([400] * 1000, 0, 0.1)])
    ain = merge_rounds([round_result([330] * 1000, 0, 0.1), round_result([1800] * 1000, 0, 0.1),
                        round_result([400] * 1000, 0, 0.1)])
    v = verdict({"alone": alone, "ainative": ain})
    assert v["ainative_vs_alone_p99_by_round"] == pytest.approx([1.1, 2.0, 1.0], abs=0.02)
    assert v["median_round_ratio"] == pytest.approx(1.1, abs=0.02)
    # The merged ratio is the p99 of every request: the slow second round dominates it.
    assert v["ainative_vs_alone_p99"] > 1.5 and v["within_1_5x_alone"] is False


def test_the_daemons_cpu_averages_and_the_loops_steps_gather_over_rounds() -> None:
    r1 = round_result([300] * 100, late=0, rq=0.1)
    r2 = round_result([300] * 100, late=0, rq=0.1)
    r1.update(daemon_cpu_percent=0.4, guard={"max_step": 3, "changes": [
        {"ts": 1.0, "step": 1, "name": "weight", "why": "w"}]})
    r2.update(daemon_cpu_percent=0.8, guard={"max_step": 0, "changes": []})
    m = merge_rounds([r1, r2])
    assert m["daemon_cpu_percent"] == pytest.approx(0.6)
    assert m["guard"]["max_step"] == 3 and m["guard"]["max_step_by_round"] == [3, 0]
    assert [c["name"] for c in m["guard"]["changes"]] == ["weight"]
