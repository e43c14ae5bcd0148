"""The closed loop's policy, pure: the ladder climbs one step per step_up while the wait
stays high, comes down one step per hold while it stays low, doubles the hold after a
flap, drops to 0 when serving is idle; the wait meter counts only increases of counters
it saw before; contenders are the busiest above the threshold; the [guard] table is
validated with one-line errors naming the file and line."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ainative.core.classes import ConfigError
from ainative.core.guard import (
    GuardConfig,
    Ladder,
    WaitMeter,
    fence_cpus,
    guard_config,
    pick_contenders,
)
from ainative.core.rules import load_rules

CFG = GuardConfig(wait_high=0.1, wait_low=0.02, step_up_s=1.0, hold_s=5.0, max_hold_s=20.0,
                  steps=("weight", "idle", "fence"))


def feed(ladder: Ladder, t0: float, t1: float, ratio: float | None, busy: bool = True,
         dt: float = 0.25) -> float:
    t = t0
    while t < t1 - 1e-9:
        ladder.observe(t, ratio, busy)
        t += dt
    return t


def test_climbs_one_step_per_step_up_while_the_wait_is_high() -> None:
    lad = Ladder(CFG)
    t = feed(lad, 0.0, 1.0, 0.25)
    assert lad.step == 0  # high for less than step_up
    t = feed(lad, t, t + 0.25, 0.25)
    assert lad.step == 1 and "0.250" in lad.why
    t = feed(lad, t, t + 1.0, 0.25)
    assert lad.step == 2
    feed(lad, t, t + 10.0, 0.25)
    assert lad.step == 3 == lad.top  # never beyond the last step
    assert lad.step_names() == ("weight", "idle", "fence")


def test_comes_down_one_step_per_hold_and_not_inside_the_band() -> None:
    lad = Ladder(CFG)
    t = feed(lad, 0.0, 3.1, 0.25)
    assert lad.step == 3
    t = feed(lad, t, t + 30, 0.05)  # between low and high: nothing moves
    assert lad.step == 3
    t = feed(lad, t, t + 5.1, 0.0)
    assert lad.step == 2
    t = feed(lad, t, t + 5.1, 0.0)
    assert lad.step == 1


def test_a_climb_soon_after_a_descent_doubles_the_hold_up_to_the_maximum() -> None:
    lad = Ladder(CFG)
    t = feed(lad, 0.0, 1.1, 0.25)
    assert lad.step == 1
    holds = []
    for _ in range(4):
        t = feed(lad, t, t + lad.hold_s + 0.3, 0.0)
        assert lad.step == 0
        t = feed(lad, t, t + 1.1, 0.25)
        assert lad.step == 1
        holds.append(lad.hold_s)
    assert holds == [10.0, 20.0, 20.0, 20.0]


def test_idle_serving_or_disabled_means_step_zero_at_once() -> None:
    lad = Ladder(CFG)
    t = feed(lad, 0.0, 3.1, 0.25)
    assert lad.step == 3
    lad.observe(t, 0.25, False)
    assert lad.step == 0 and "no serving" in lad.why
    off = Ladder(GuardConfig(enabled=False))
    feed(off, 0.0, 10.0, 5.0)
    assert off.step == 0


def test_no_measurement_keeps_the_step() -> None:
    lad = Ladder(CFG)
    t = feed(lad, 0.0, 2.1, 0.25)
    assert lad.step == 2
    feed(lad, t, t + 60, None)
    assert lad.step == 2


@given(st.lists(st.tuples(st.one_of(st.none(), st.floats(0, 10)), st.booleans()),
                max_size=200))
def test_the_step_stays_in_range_and_is_zero_whenever_serving_is_idle(
        seq: list[tuple[float | None, bool]]) -> None:
    lad = Ladder(CFG)
    for i, (ratio, busy) in enumerate(seq):
        step = lad.observe(i * 0.25, ratio, busy)
        assert 0 <= step <= lad.top
        if not busy:
            assert step == 0


def test_wait_meter_counts_increases_of_known_counters_over_the_window() -> None:
    m = WaitMeter(window_s=1.0)
    m.add(0.0, {(1, 1): 1_000_000_000}, {1: 10.0})  # first sight: no delta
    assert m.ratio(0.001) is None
    m.add(0.5, {(1, 1): 1_050_000_000, (1, 2): 7_000_000_000}, {1: 10.1})
    assert m.ratio(0.001) == pytest.approx(0.05 / 0.1)  # the new thread counts next time
    m.add(1.0, {(1, 1): 1_050_000_000, (1, 2): 7_100_000_000}, {1: 10.3})
    assert m.ratio(0.001) == pytest.approx(0.1 / 0.2)  # the sample at 0.5 left the window
    assert m.ratio(1.0) is None  # too little CPU to judge
    m.add(1.5, {(2, 2): 5}, {2: 1.0})  # everything new: no delta, no negative
    assert m.ratio(0.0) == pytest.approx(0.1 / 0.2)
    m.add(2.1, {(2, 2): 5}, {2: 1.0})
    assert m.ratio(0.0) is None  # no CPU at all in the window


def test_pick_contenders_and_fence() -> None:
    rates = {10: 99.0, 11: 30.0, 12: 51.0, 13: 50.0, 14: 49.9}
    assert pick_contenders(rates, 50.0, 8) == [10, 12, 13]
    assert pick_contenders(rates, 50.0, 2) == [10, 12]
    assert fence_cpus([0, 1, 2, 3], 1) == ([0, 1, 2], [3])
    assert fence_cpus([0], 1) is None
    assert fence_cpus([0, 1], 0) is None


def test_guard_table_values() -> None:
    cfg = guard_config({"wait_high": 0.2, "hold": "30s", "steps": ["weight", "fence"],
                        "enabled": False})
    assert (cfg.wait_high, cfg.hold_s, cfg.steps, cfg.enabled) == (
        0.2, 30.0, ("weight", "fence"), False)
    assert cfg.max_hold_s >= cfg.hold_s
    for bad, key in [({"wait_high": "x"}, "wait_high"), ({"steps": ["idle", "idle"]}, "steps"),
                     ({"steps": ["boost"]}, "steps"), ({"hold": "forever"}, "hold"),
                     ({"wait_low": 0.5, "wait_high": 0.1}, "wait_low"),
                     ({"enabled": 1}, "enabled"), ({"max_contenders": -1}, "max_contenders"),
                     ({"nonsense": 1}, "nonsense")]:
        with pytest.raises(ValueError) as e:
            guard_config(bad)
        assert getattr(e.value, "key", None) == key, (bad, e.value)


def test_guard_table_in_a_rule_file(tmp_path: Path) -> None:
    good = tmp_path / "a.toml"
    good.write_text('[guard]\nwait_high = 0.3\n')
    later = tmp_path / "b.toml"
    later.write_text('[guard]\nhold = "20s"\n')
    rs = load_rules([str(good), str(later)], rules_dir=None)
    assert rs.guard.wait_high == 0.3 and rs.guard.hold_s == 20.0  # later files add keys
    bad = tmp_path / "c.toml"
    bad.write_text('# a comment\n[guard]\nwait_high = 0.3\nsteps = ["nope"]\n')
    with pytest.raises(ConfigError) as e:
        load_rules([str(bad)], rules_dir=None)
    msg = str(e.value)
    assert f"{bad}:4" in msg and "steps" in msg and "\n" not in msg


def test_the_realtime_step_exists_only_while_available() -> None:
    lad = Ladder(GuardConfig(wait_high=0.1, wait_low=0.02, step_up_s=1.0, steps=("weight",)))
    t = feed(lad, 0.0, 5.0, 0.25)
    assert lad.step == 1  # nothing above weight while no class asks for realtime
    lad.extra = 1
    t = feed(lad, t, t + 1.25, 0.25)
    assert lad.step == 2 and lad.step_names() == ("weight", "realtime")
    lad.extra = 0  # the starvation guard barred the only candidate
    lad.observe(t, 0.25, True)
    assert lad.step == 1 and "no longer available" in lad.why


def test_a_wait_far_above_takes_the_first_step_at_once() -> None:
    lad = Ladder(CFG)
    lad.observe(0.0, 0.1 * 3.5, True)
    assert lad.step == 1  # no step_up wait for the first step
    lad.observe(0.25, 0.1 * 3.5, True)
    assert lad.step == 1  # the next ones wait for step_up as usual


def test_no_step_down_while_a_held_competitor_still_wants_the_cpu() -> None:
    lad = Ladder(CFG)
    t = feed(lad, 0.0, 1.25, 0.25)
    assert lad.step == 1
    t0 = t
    while t < t0 + 60:
        lad.observe(t, 0.0, True, pressure=True)
        t += 0.25
    assert lad.step == 1  # the low wait is the step working
    feed(lad, t, t + 5.1, 0.0)  # the competitor went quiet
    assert lad.step == 0
