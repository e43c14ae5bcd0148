"""The thresholds of the comparison's honesty checks, on figures given by hand: when the
baseline counts as disturbed, when the contention was weaker than asked, and how many
samples a percentile rests on. (The measurement itself is tested on real processes in
test_machine_load.py.)"""

from __future__ import annotations

from typing import Any

from ainative.stress.caveats import (
    OTHER_CPUS_MAX,
    P99_9_MIN_SAMPLES,
    hog_shortfall,
    p99_9_trusted,
    tail_count,
    warnings,
)


def fig(window: float = 10.0, other: float = 0.0, own: float = 3.0, hog: float = 0.0,
        cpu_hogs: int = 0, steal: float = 0.0, before: dict[str, Any] | None = None,
        cpus: int = 2) -> dict[str, Any]:
    return {"window_s": window, "cpus": cpus, "busy_cpu_s": other + own + hog,
            "steal_cpu_s": steal, "own_cpu_s": own, "hog_cpu_s": hog, "other_cpu_s": other,
            "top": [["make", 4242, other]] if other else [], "cpu_hogs": cpu_hogs,
            "before": before}


def quiet_before() -> dict[str, Any]:
    return fig(window=0.5, other=0.01, own=0.0)


def test_tail_count_is_what_a_percentile_rests_on() -> None:
    assert tail_count(12_000, 99.9) == 12
    assert tail_count(12_000, 99.0) == 120
    assert tail_count(178, 99.0) == 2
    assert tail_count(500, 99.9) == 1  # the maximum, in effect
    assert tail_count(0, 99.0) == 0
    assert not p99_9_trusted(P99_9_MIN_SAMPLES - 1) and p99_9_trusted(P99_9_MIN_SAMPLES)


def test_a_quiet_comparison_gives_no_warning() -> None:
    scen = {"alone": {"machine_load": fig(other=0.5, before=quiet_before())},
            "contended": {"machine_load": fig(other=0.2, own=3.0, hog=16.8, cpu_hogs=4)}}
    assert warnings(scen) == []


def test_load_before_alone_is_a_disturbed_baseline() -> None:
    busy_before = fig(window=0.5, other=0.5 * 0.6, own=0.0)
    w = warnings({"alone": {"machine_load": fig(other=0.1, before=busy_before)}})
    assert len(w) == 1 and w[0].startswith("baseline disturbed: before 'alone'")
    assert "0.60 CPUs" in w[0] and "make pid 4242" in w[0]


def test_load_during_alone_is_a_disturbed_baseline_just_above_the_threshold() -> None:
    above = fig(other=(OTHER_CPUS_MAX + 0.01) * 10.0, before=quiet_before())
    below = fig(other=(OTHER_CPUS_MAX - 0.01) * 10.0, before=quiet_before())
    w = warnings({"alone": {"machine_load": above}})
    assert len(w) == 1 and "during 'alone'" in w[0]
    assert warnings({"alone": {"machine_load": below}}) == []


def test_other_load_in_another_scenario_is_not_a_disturbed_baseline() -> None:
    # The daemon's own CPU counts as "other" in the ainative scenario: not the baseline.
    w = warnings({"ainative": {"machine_load": fig(other=3.0, hog=14.0, own=3.0,
                                                   cpu_hogs=4)}})
    assert not any("baseline" in x for x in w)


def test_one_disturbed_round_is_not_averaged_away() -> None:
    quiet = fig(other=0.1, before=quiet_before())
    busy = fig(other=5.0, before=quiet_before())
    merged = {**fig(window=30, other=5.2), "rounds": [quiet, busy, quiet]}
    w = warnings({"alone": {"machine_load": merged}})
    assert len(w) == 1 and "'alone' round 2" in w[0]


def test_hogs_that_got_less_than_they_should() -> None:
    # 4 hogs on 2 CPUs for 10 s, the workload took 3 CPU-s: 17 CPU-s were theirs.
    assert hog_shortfall(fig(own=3.0, hog=16.5, cpu_hogs=4)) is None
    assert hog_shortfall(fig(own=3.0, hog=12.0, cpu_hogs=4)) == (12.0, 17.0)
    # One hog on 2 CPUs can use one CPU, whatever the workload takes from the other.
    assert hog_shortfall(fig(own=3.0, hog=9.5, cpu_hogs=1)) is None
    assert hog_shortfall(fig(own=3.0, hog=6.0, cpu_hogs=1)) == (6.0, 10.0)
    assert hog_shortfall(fig(own=3.0, hog=0.0, cpu_hogs=0)) is None  # no CPU hogs
    w = warnings({"contended": {"machine_load": fig(own=3.0, hog=12.0, other=5.0,
                                                    cpu_hogs=4)}})
    assert len(w) == 1 and "contention weaker than asked in 'contended'" in w[0]


def test_steal_and_failed_scenarios() -> None:
    w = warnings({"nice": {"machine_load": fig(own=3.0, hog=17.0, cpu_hogs=4, steal=2.0)},
                  "chrt": {"error": "chrt -f 10 did not take effect"}})
    assert w == ["the hypervisor took 0.20 CPUs (steal) during 'nice'"]
    assert warnings({"alone": {"completed": 5}}) == []  # no figures: nothing to say
