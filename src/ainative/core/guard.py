"""The closed loop: while a serving process is busy, watch how long its threads wait for a
CPU and demote the busiest competing work only as far as that wait asks, step by step.

Why a loop and not a fixed policy: the fixed `background` class only reaches processes
the rules know, and a strong fixed demotion (SCHED_IDLE, a CPU fence) costs batch work
its throughput even when serving is not suffering. The wait itself is the evidence:
/proc/PID/task/TID/schedstat gives, per thread, the nanoseconds spent runnable but not
running. The loop reads it for the busy serving processes only (one small file per
thread, four times a second) and compares it with the CPU they used: a ratio of 0.2 means
each millisecond of serving work waited 0.2 ms for a CPU on average. Measured with the
stress comparison (mlp, 1,000 requests/s): about 0.1 alone on a quiet machine, 0.1 with
known hogs demoted to weight 1, 1.2-1.7 under 4 hogs left alone; hence the defaults
(climb above 0.3, come down below 0.15).

The ladder (``[guard] steps``; by default weight, then fence):

  1. weight: the busiest competing processes get nice 19 and go into the loop's own
     cgroup of cpu weight 1 (the background class's treatment, for processes no rule
     knows);
  2. idle: they also get SCHED_IDLE (not in the default ladder: measured worse here);
  3. fence: their affinity leaves out the reserved CPUs (the last ``reserve_cpus``), so
     a serving thread that wakes finds a CPU no competitor may run on;
  4. realtime, only for busy serving processes whose class asks (``guard_realtime = N``)
     and only where the kernel throttles realtime tasks: SCHED_FIFO at priority N (with
     SCHED_RESET_ON_FORK: children do not inherit it). The starvation guard: a process
     that uses more than ``rt_max_cpu_percent`` of a CPU while realtime loses the step at
     once and may not have it again for ``max_hold``.

It climbs one step when the ratio stays above ``wait_high`` for ``step_up`` and comes down
one step when it has stayed below ``wait_low`` for ``hold``; a climb soon after a descent
(the wait came back as soon as the step was lifted) doubles ``hold``, up to 16 times, so
the loop does not flap. When no serving process is busy, every step is lifted at once.

Competitors are any process (rules known or not) using at least ``contender_cpu_percent``
of a CPU, except serving processes, the daemon, init, kernel threads, realtime tasks and
what the classifier excludes (AINATIVE_CLASS=none, [[ignore]] rules, the daemon's scope).
They are found by a pass over /proc only while the loop is above step 0 or the wait is
high, once a second, so an uncontended machine costs nothing but the serving threads'
schedstat reads.

This module is the policy (pure: times and counters in, decisions out). The supervisor
feeds it; the Imposer (core/imposer.py) journals and writes the knobs.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import TypedDict

STEP_NAMES = ("weight", "idle", "fence")
# The default ladder leaves out "idle": SCHED_IDLE competitors made the serving tail worse
# on this kernel (README, "Why background is not SCHED_IDLE"; benchmarks/bench_guard_tail.py).
DEFAULT_STEPS = ("weight", "fence")
# A wait this many times wait_high takes the first step without waiting for step_up.
FAR_ABOVE = 3.0


@dataclass(frozen=True)
class GuardConfig:
    enabled: bool = True
    # Run-queue wait per unit of CPU used by busy serving processes: climb above wait_high,
    # come down below wait_low (a gap between them is the hysteresis).
    wait_high: float = 0.30
    wait_low: float = 0.15
    window_s: float = 1.0  # the ratio is taken over this long
    step_up_s: float = 0.5  # above wait_high this long before the next step
    hold_s: float = 10.0  # below wait_low this long before a step down
    max_hold_s: float = 600.0
    # Less CPU than this over the window: no decision (too few runs to judge a ratio).
    min_cpu_ms: float = 5.0
    contender_cpu_percent: float = 50.0  # of one CPU
    max_contenders: int = 16
    steps: tuple[str, ...] = DEFAULT_STEPS
    reserve_cpus: int = 1
    rt_max_cpu_percent: float = 80.0  # of one CPU, over the window


class ContenderView(TypedDict):
    pid: int
    name: str
    cpu_percent: float
    knobs: dict[str, str]
    why: str  # the step and the measurement that demoted it
    errors: dict[str, str]  # knob -> why it could not be set


class GuardView(TypedDict):
    """What `status` and `explain` show of the loop."""

    enabled: bool
    step: int  # 0: nothing imposed
    step_name: str | None
    steps: list[str]
    wait_ratio: float | None  # run-queue wait / CPU of busy serving, over the window
    wait_high: float
    wait_low: float
    hold_s: float  # the current hold (doubles after a flap)
    why: str  # the measurement behind the last change of step
    since_s: float | None  # how long the current step has been in force
    contenders: list[ContenderView]
    reserved_cpus: list[int]
    realtime: list[int]  # serving processes the realtime step holds at SCHED_FIFO


@dataclass
class WaitMeter:
    """The wait ratio of a set of processes from cumulative counters (wait ns per thread,
    CPU seconds per process), over a sliding window. Threads and processes may come and
    go between samples: only increases of a counter seen before are counted."""

    window_s: float = 1.0
    _last_wait: dict[tuple[int, int], int] = field(default_factory=dict)
    _last_cpu: dict[int, float] = field(default_factory=dict)
    _deltas: deque[tuple[float, float, float]] = field(default_factory=deque)  # t, wait s, cpu s

    def add(self, now: float, waits: dict[tuple[int, int], int], cpus: dict[int, float]) -> None:
        """One sample: ``waits`` maps (pid, tid) to its cumulative wait in ns, ``cpus``
        maps pid to its cumulative CPU seconds."""
        dw = sum(max(0, w - self._last_wait[k]) for k, w in waits.items() if k in self._last_wait)
        dc = sum(max(0.0, c - self._last_cpu[p]) for p, c in cpus.items() if p in self._last_cpu)
        self._last_wait, self._last_cpu = dict(waits), dict(cpus)
        self._deltas.append((now, dw / 1e9, dc))
        while self._deltas and self._deltas[0][0] <= now - self.window_s:
            self._deltas.popleft()

    def ratio(self, min_cpu_s: float) -> float | None:
        """Wait per CPU second over the window; None when too little CPU was used."""
        wait = sum(d[1] for d in self._deltas)
        cpu = sum(d[2] for d in self._deltas)
        if cpu <= 0 or cpu < min_cpu_s:
            return None
        return wait / cpu

    def restart_window(self) -> None:
        """Forget the deltas but keep the counters: after a step changes, the ratio is
        taken over what happened since (the old window would still show the wait the
        step was taken against)."""
        self._deltas.clear()

    def reset(self) -> None:
        self._last_wait.clear()
        self._last_cpu.clear()
        self._deltas.clear()


@dataclass
class Ladder:
    """Which step is in force, from the wait ratio over time. Pure."""

    config: GuardConfig
    step: int = 0
    since: float | None = None  # when the current step began
    hold_s: float = 0.0
    why: str = ""
    _high_since: float | None = None
    _low_since: float | None = None
    _last_down: float | None = None

    def __post_init__(self) -> None:
        self.hold_s = self.config.hold_s

    # 1 while a busy serving process's class asks for the realtime step (and it may have
    # it): the ladder then has one more step above the configured ones. Set by the loop.
    extra: int = 0

    @property
    def top(self) -> int:
        return len(self.config.steps) + self.extra

    def observe(self, now: float, ratio: float | None, serving_busy: bool,
                pressure: bool = False) -> int:
        """Feed one measurement; returns the step to be in force (0..len(steps)).

        ``pressure``: a competitor the loop holds still wants a CPU's worth. A step is
        lifted only without it: while the cause is still there, lifting the step only
        brings the wait back (measured: each such probe cost the server a queue of
        hundreds of ms), so the wait being low is the step working, not the need gone."""
        cfg = self.config
        if not cfg.enabled or not serving_busy:
            if self.step:
                self._set(now, 0, "no serving process is busy")
            self._high_since = self._low_since = None
            return self.step
        if self.step > self.top:
            self._set(now, self.top, "the realtime step is no longer available")
        if ratio is None:
            return self.step  # too little CPU to judge: keep what is in force
        if ratio > cfg.wait_high:
            self._low_since = None
            if self._high_since is None:
                self._high_since = now
            # _high_since restarts at each climb: a step gets step_up_s to show its effect.
            # The first step is taken at once when the wait is far above the threshold
            # (a whole queue builds in step_up at 1,000 requests/s).
            urgent = self.step == 0 and ratio >= FAR_ABOVE * cfg.wait_high
            if self.step < self.top and (urgent or
                                         now - self._high_since >= cfg.step_up_s * 0.999):
                if self._last_down is not None and now - self._last_down < self.hold_s * 2:
                    # The wait came back soon after a step was lifted: hold longer next time.
                    self.hold_s = min(cfg.max_hold_s, self.hold_s * 2)
                self._set(now, self.step + 1,
                          f"wait {ratio:.3f} s per CPU-second > {cfg.wait_high} "
                          f"for {now - self._high_since:.1f} s")
                self._high_since = now
        elif ratio < cfg.wait_low:
            self._high_since = None
            if self._low_since is None:
                self._low_since = now
            if self.step and not pressure and now - self._low_since >= self.hold_s * 0.999:
                self._set(now, self.step - 1,
                          f"wait {ratio:.3f} s per CPU-second < {cfg.wait_low} "
                          f"for {now - self._low_since:.1f} s")
                self._last_down = now
                self._low_since = now
        else:
            self._high_since = self._low_since = None
        return self.step

    def _set(self, now: float, step: int, why: str) -> None:
        self.step, self.since, self.why = step, now, why
        if step == 0:
            self.since = None

    def step_names(self) -> tuple[str, ...]:
        """The steps in force now, in ladder order."""
        return (*self.config.steps, "realtime")[: self.step]

    def name_of(self, step: int) -> str | None:
        return (*self.config.steps, "realtime")[step - 1] if step else None


def pick_contenders(rates: dict[int, float], min_percent: float, limit: int) -> list[int]:
    """The busiest processes at or above ``min_percent`` of one CPU, busiest first."""
    busy = [(r, p) for p, r in rates.items() if r >= min_percent]
    busy.sort(key=lambda rp: (-rp[0], rp[1]))
    return [p for _, p in busy[:limit]]


def fence_cpus(online: list[int], reserve: int) -> tuple[list[int], list[int]] | None:
    """(CPUs competitors keep, CPUs reserved for serving), or None when there are too few
    CPUs to reserve any and still leave one to the rest."""
    cpus = sorted(online)
    if reserve < 1 or len(cpus) <= reserve:
        return None
    return cpus[:-reserve], cpus[-reserve:]


class BadGuardKey(ValueError):
    """One key of the [guard] table is wrong; ``key`` lets the rule loader find its line."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def _number(key: str, v: object, lo: float, hi: float) -> float:
    if not isinstance(v, int | float) or isinstance(v, bool) or not lo <= v <= hi:
        raise BadGuardKey(key, f"[guard] {key} must be a number {lo:g}..{hi:g}, not {v!r}")
    return float(v)


def _seconds(key: str, v: object, lo: float, hi: float) -> float:
    from ainative.units import UnitError, parse_duration

    if isinstance(v, str):
        try:
            secs = parse_duration(v)
        except (UnitError, ValueError) as e:
            raise BadGuardKey(key, f"[guard] {key}: {e}") from None
    else:
        secs = _number(key, v, lo, hi)
    if not lo <= secs <= hi:
        raise BadGuardKey(key, f"[guard] {key} must be {lo:g}s..{hi:g}s, not {v!r}")
    return secs


def guard_config(table: dict[str, object], base: GuardConfig = GuardConfig()) -> GuardConfig:
    """The loop's settings from a [guard] table on top of ``base`` (an earlier file's).
    Raises BadGuardKey naming the key."""
    kw = dict(base.__dict__)
    for key, v in table.items():
        if key == "enabled":
            if not isinstance(v, bool):
                raise BadGuardKey(key, f"[guard] enabled must be true or false, not {v!r}")
            kw[key] = v
        elif key in ("wait_high", "wait_low"):
            kw[key] = _number(key, v, 0.0, 100.0)
        elif key in ("window", "step_up", "hold", "max_hold"):
            kw[f"{key}_s"] = _seconds(key, v, 0.1, 3600.0)
        elif key == "min_cpu_ms":
            kw[key] = _number(key, v, 0.0, 10_000.0)
        elif key == "rt_max_cpu_percent":
            kw[key] = _number(key, v, 1.0, 100_000.0)
        elif key == "contender_cpu_percent":
            kw[key] = _number(key, v, 1.0, 100_000.0)
        elif key in ("max_contenders", "reserve_cpus"):
            if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= 1024:
                raise BadGuardKey(key, f"[guard] {key} must be an integer 0..1024, not {v!r}")
            kw[key] = v
        elif key == "steps":
            if (not isinstance(v, list) or not all(isinstance(s, str) for s in v)
                    or any(s not in STEP_NAMES for s in v) or len(set(v)) != len(v)):
                raise BadGuardKey(key, f"[guard] steps must be a list of distinct steps from "
                                  f"{list(STEP_NAMES)}, not {v!r}")
            kw[key] = tuple(v)
        else:
            raise BadGuardKey(key, f"[guard] unknown key {key!r}; allowed: enabled, wait_high, "
                              "wait_low, window, step_up, hold, max_hold, min_cpu_ms, "
                              "contender_cpu_percent, max_contenders, steps, reserve_cpus, "
                              "rt_max_cpu_percent")
    cfg = GuardConfig(**kw)
    if cfg.wait_low > cfg.wait_high:
        raise BadGuardKey("wait_low", f"[guard] wait_low ({cfg.wait_low:g}) must not be above "
                          f"wait_high ({cfg.wait_high:g})")
    if cfg.max_hold_s < cfg.hold_s:
        cfg = GuardConfig(**{**kw, "max_hold_s": cfg.hold_s})
    return cfg
