"""The closed loop's driver: measures, asks the ladder (core/guard.py), finds the competing
processes and has the imposer (core/imposer.py) hold the step's knobs on them.

Called by the supervisor on its activity tick (four times a second while something
serves). What it reads each tick: the schedstat wait of every thread of the busy serving
processes and their CPU time. Only while the ladder is above step 0, or the wait is above
its threshold, it also reads the CPU time of every process, once a second, to find the
busiest competitors.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from ainative import log
from ainative.core.classifier import Classifier
from ainative.core.engine import Managed
from ainative.core.guard import (
    ContenderView,
    GuardConfig,
    GuardView,
    Ladder,
    WaitMeter,
    fence_cpus,
    pick_contenders,
)
from ainative.core.imposer import Imposer
from ainative.core.knobs import describe
from ainative.platform.backend import Backend
from ainative.platform.base import SCHED_FIFO, SCHED_IDLE, ProcessGone, TaskId

# How often the competitors are looked for while the loop is engaged and holds some;
# while it is engaged and has found none yet (or the wait is high at step 0, to have a
# first sample ready), every tick: a competitor's demand needs two samples of its CPU
# and of its wait, so the first demotion comes three ticks after the wait rose.
_SCAN_EVERY_S = 1.0
_FAST_SCANS = 8
# A demoted competitor is released once it uses less than this (percent of one CPU): a
# demoted process gets less CPU than the threshold that found it, so the threshold that
# keeps it is lower, or the loop would release and find it again in turns.
_RELEASE_BELOW_PERCENT = 5.0


# Processes using less than this are not looked at closer (their run-queue wait is not
# read): they are not competitors whatever they wait.
_CANDIDATE_PERCENT = 5.0


@dataclass
class _Rate:
    ident: TaskId
    t: float
    cpu: float
    wait_ns: int | None = None  # the main thread's run-queue wait, once it was a candidate
    percent: float = 0.0  # CPU it got, percent of one CPU
    demand: float = 0.0  # CPU it got plus the main thread's wait for one: what it wants


def _own_cpus() -> list[int]:
    """The CPUs this process may run on; every CPU where the OS has no such call
    (Windows: the fence is a Linux mechanism, the loop only has to start there)."""
    get = getattr(os, "sched_getaffinity", None)
    return sorted(get(0)) if get is not None else list(range(os.cpu_count() or 1))


class GuardLoop:
    def __init__(self, backend: Backend, classifier: Classifier, imposer: Imposer,
                 config: GuardConfig, *, online_cpus: Callable[[], list[int]] | None = None
                 ) -> None:
        self.backend = backend
        self.classifier = classifier
        self.imposer = imposer
        self.config = config
        self.ladder = Ladder(config)
        self.meter = WaitMeter(config.window_s)
        self.ratio: float | None = None
        self._online = online_cpus or _own_cpus
        self._rates: dict[int, _Rate] = {}
        self._next_scan = 0.0
        self._excluded: dict[TaskId, str | None] = {}
        self._empty_scans = 0  # scans in a row that found no competitor
        self._group_paths: dict[str, str] | None = None
        self._group_error: str | None = None
        self._self_original = _own_cpus()
        # The realtime step: serving processes it holds, their last CPU sample, and those
        # barred from it (the starvation guard) until a time.
        self._rt: set[TaskId] = set()
        self._rt_cpu: dict[TaskId, tuple[float, float]] = {}
        self._rt_barred: dict[TaskId, float] = {}
        self._self_cpus: list[int] | None = None

    def reconfigure(self, config: GuardConfig, why: str) -> None:
        if config == self.config:
            return
        self.stand_down()
        self.imposer.release_all(why)
        self.config = config
        self.ladder = Ladder(config)
        self.meter = WaitMeter(config.window_s)

    def stand_down(self) -> None:
        """Back to step 0 (the caller undoes what the imposer holds)."""
        self._rt.clear()
        self.ladder = Ladder(self.config)
        self.meter.reset()
        self.ratio = None
        self._rates.clear()
        self._keep_self_off(None)

    def _keep_self_off(self, cpus: list[int] | None) -> None:
        """While the fence is up, the daemon's own threads stay on the competitors' CPUs
        too, out of the reserved ones' way; ``None`` gives them their CPUs back. Its own
        process: not journaled (a crash ends it)."""
        if cpus == self._self_cpus:
            return
        target = cpus if cpus is not None else self._self_original
        try:
            for tid in self.backend.list_threads(os.getpid()):
                os.sched_setaffinity(tid, target)
            self._self_cpus = cpus
        except OSError as e:
            log.warn("guard_self_affinity_failed", error=str(e))

    # --- one tick ---

    def tick(self, now: float, busy_serving: list[Managed], serving: set[TaskId]) -> None:
        waits: dict[tuple[int, int], int] = {}
        cpus: dict[int, float] = {}
        for m in busy_serving:
            pid = m.ident.pid
            try:
                user, system = self.backend.cpu_times(pid)
                cpus[pid] = user + system
                for tid in self.backend.list_threads(pid):
                    try:
                        waits[(pid, tid)] = self.backend.run_queue_wait_ns(pid, tid)
                    except (ProcessGone, OSError):
                        continue
            except (ProcessGone, PermissionError, OSError):
                continue
        self.meter.add(now, waits, cpus)
        self.ratio = self.meter.ratio(self.config.min_cpu_ms / 1000.0)
        rt = self._realtime_candidates(now, busy_serving, cpus)
        self.ladder.extra = 1 if rt else 0
        before = self.ladder.step
        step = self.ladder.observe(now, self.ratio, bool(busy_serving), self._pressure())
        if step != before:
            self.meter.restart_window()
            log.event("guard_step", step=step, name=self._step_name(step),
                      why=self.ladder.why)
        if step == 0:
            if self.imposer.imposed:
                self.imposer.release_all(self.ladder.why or "step 0")
            self._rt.clear()
            self._empty_scans = 0
            self._keep_self_off(None)
            if self.ratio is not None and self.ratio > self.config.wait_high:
                # A first sample (CPU and wait), so the first step finds its competitors.
                self._scan(now)
            else:
                self._rates.clear()
            return
        self._hold_realtime(rt if "realtime" in self.ladder.step_names() else {})
        if step != before or now >= self._next_scan:
            self._hold(now, serving)
            held = any(i not in self._rt for i in self.imposer.imposed)
            # Every tick until competitors are found, but not for ever when there are
            # none (a server whose own threads outnumber the CPUs waits on itself).
            fast = not held and self._empty_scans < _FAST_SCANS
            self._next_scan = now + (0.0 if fast else _SCAN_EVERY_S)
        else:
            self.imposer.catch_up()

    def _realtime_candidates(self, now: float, busy_serving: list[Managed],
                             cpus: dict[int, float]) -> dict[TaskId, tuple[Managed, int]]:
        """Busy serving processes whose class asks for the realtime step and may have it
        now, with their priority. The starvation guard runs here: one that used more than
        rt_max_cpu_percent of a CPU since the last tick while realtime loses the step."""
        out: dict[TaskId, tuple[Managed, int]] = {}
        throttled: bool | None = None
        for m in busy_serving:
            prio = m.policy.guard_realtime if m.policy is not None else None
            if prio is None or self._rt_barred.get(m.ident, 0.0) > now:
                continue
            cpu = cpus.get(m.ident.pid)
            prev = self._rt_cpu.get(m.ident)
            if cpu is not None:
                self._rt_cpu[m.ident] = (now, cpu)
            if m.ident in self._rt and cpu is not None and prev is not None and now > prev[0]:
                pct = (cpu - prev[1]) / (now - prev[0]) * 100.0
                if pct > self.config.rt_max_cpu_percent:
                    self._rt_barred[m.ident] = now + self.config.max_hold_s
                    self._rt.discard(m.ident)
                    why = (f"used {pct:.0f} % of a CPU while realtime (more than "
                           f"{self.config.rt_max_cpu_percent:g} %): barred for "
                           f"{self.config.max_hold_s:g} s")
                    self.imposer.release(m.ident, why)
                    log.event("guard_realtime_lifted", pid=m.ident.pid, why=why)
                    continue
            if throttled is None:
                throttled = self.backend.rt_throttled()
            if throttled:
                out[m.ident] = (m, prio)
        self._rt_barred = {i: t for i, t in self._rt_barred.items() if t > now}
        return out

    def _hold_realtime(self, want: dict[TaskId, tuple[Managed, int]]) -> None:
        for ident in [i for i in self._rt if i not in want]:
            self._rt.discard(ident)
            self.imposer.release(ident, "the realtime step is lifted")
        for ident, (m, prio) in want.items():
            why = f"step {self.ladder.step} (realtime): {self.ladder.why}"
            if self.imposer.impose(ident, m.name, {"policy": [SCHED_FIFO, prio]}, why):
                self._rt.add(ident)

    def _pressure(self) -> bool:
        """Whether a competitor the loop holds still wants at least the threshold's worth
        of CPU (then a low wait is the step working, and the step stays)."""
        for ident in self.imposer.imposed:
            if ident in self._rt:
                continue
            r = self._rates.get(ident.pid)
            if r is not None and r.ident == ident and (
                    r.demand >= self.config.contender_cpu_percent):
                return True
        return False

    def _step_name(self, step: int) -> str | None:
        return self.ladder.name_of(step)

    def _group(self) -> dict[str, str] | None:
        """The loop's own cgroup (``<root>.guard``, cpu weight 1: the least either layout
        allows, as the background class), made on first use; None where cgroups cannot be
        used (said once in the log)."""
        if self._group_paths is None and self._group_error is None:
            eng = self.imposer.engine
            if eng.dry_run or not eng.cgroups_enabled:
                self._group_error = "cgroups off"
            else:
                try:
                    self._group_paths = self.backend.cgroup_prepare("guard", {
                        "cpu_weight": 1, "cpu_idle": None, "cpuset": None,
                        "memory_low": None}) or None
                except (OSError, ValueError, NotImplementedError) as e:
                    self._group_error = str(e)
                if self._group_paths is None:
                    self._group_error = self._group_error or "no cpu controller"
                    log.warn("guard_no_cgroup", why=self._group_error,
                             detail="the weight step sets nice 19 only")
        return self._group_paths

    def _knobs(self) -> dict[str, object]:
        knobs: dict[str, object] = {}
        names = self.ladder.step_names()
        if "weight" in names:
            # nice 19 weighs 15 against a normal thread's 1024, per thread; a group of
            # weight 1 weighs all of a competitor's threads together as one thread at
            # 1/100 of the default: the background class's pair of knobs, measured best
            # here (README, "Why background is not SCHED_IDLE").
            knobs["nice"] = 19
            group = self._group()
            if group:
                knobs["cgroup"] = group
        if "idle" in names:
            knobs["policy"] = [SCHED_IDLE, 0]
        if "fence" in names:
            fence = fence_cpus(self._online(), self.config.reserve_cpus)
            if fence is not None:
                knobs["affinity"] = fence[0]
        return knobs

    def _hold(self, now: float, serving: set[TaskId]) -> None:
        """Find the competitors and make the step's knobs what the imposer holds on them."""
        percent = self._scan(now)
        wanted = set(pick_contenders(percent, self.config.contender_cpu_percent,
                                     self.config.max_contenders))
        self._empty_scans = 0 if wanted else self._empty_scans + 1
        knobs = self._knobs()
        self._keep_self_off(knobs.get("affinity"))  # type: ignore[arg-type]
        held = {i.pid: i for i in self.imposer.imposed if i not in self._rt}
        for pid, ident in held.items():
            if percent.get(pid, 0.0) < _RELEASE_BELOW_PERCENT and pid not in wanted:
                self.imposer.release(ident, f"uses {percent.get(pid, 0.0):.0f} % of a CPU")
        why = f"step {self.ladder.step} ({self._step_name(self.ladder.step)}): {self.ladder.why}"
        pids = sorted(wanted | (set(held) & set(percent)))
        self._find_clients(pids, serving)
        for pid in pids:
            r = self._rates.get(pid)
            if r is None or r.ident in serving:
                continue
            excluded = self._exclusion(r.ident)
            if excluded is not None:
                if r.ident in self.imposer.imposed:  # found to be a client since
                    self.imposer.release(r.ident, excluded)
                continue
            try:
                name = self.backend.process_name(pid)
            except (ProcessGone, PermissionError, OSError):
                continue
            mine = dict(knobs)
            m = self.imposer.engine.managed.get(r.ident)
            if m is not None and m.policy is not None and m.policy.cgroup:
                mine.pop("cgroup", None)  # its class has a group of its own already
            self.imposer.impose(r.ident, name, mine, why)

    def _scan(self, now: float, prime: bool = False) -> dict[int, float]:
        """Each process's CPU demand since the last scan, in percent of one CPU (new ones:
        none yet). Demand, not use: under contention a busy loop gets a fraction of a CPU
        (four loops and a server on two CPUs: under half each), but it is runnable all the
        time; the time its main thread waited for a CPU is added to the time it ran."""
        out: dict[int, float] = {}
        seen: dict[int, _Rate] = {}
        prime = prime or not self._rates
        for pid in self.backend.list_pids():
            try:
                user, system = self.backend.cpu_times(pid)
                prev = self._rates.get(pid)
                if prev is None or now <= prev.t or user + system < prev.cpu:
                    # First sight: its wait too when the loop is about to need demands
                    # (the priming scan at step 0), so the first step can pick at once.
                    wait = self.backend.run_queue_wait_ns(pid) if prime else None
                    seen[pid] = _Rate(self.backend.task_id(pid), now, user + system, wait)
                    continue
                span = now - prev.t
                pct = (user + system - prev.cpu) / span * 100.0
                r = _Rate(prev.ident, now, user + system, None, pct, pct)
                if pct >= _CANDIDATE_PERCENT:
                    r.wait_ns = self.backend.run_queue_wait_ns(pid)
                    if prev.wait_ns is not None:
                        r.demand = pct + max(0, r.wait_ns - prev.wait_ns) / 1e9 / span * 100.0
                seen[pid] = r
                out[pid] = r.demand
            except (ProcessGone, PermissionError, OSError):
                continue
        # A pid whose start time changed is a new process: its rate starts again.
        self._rates = seen
        alive = {r.ident for r in seen.values()}
        self._excluded = {i: e for i, e in self._excluded.items() if i in alive}
        return out

    def _find_clients(self, pids: list[int], serving: set[TaskId]) -> None:
        """Mark the serving processes' local clients among ``pids`` (those not judged
        yet) as never demoted: a load client or proxy talking to a model server over a
        Unix socket or loopback is on the serving path. Its waiting for a CPU makes it
        look like a contender (demand counts the wait), and demoting it made every
        request late (issue 9: a client at nice 19 gave p99 6.8 ms against 0.7 alone)."""
        fresh = {pid: r.ident for pid in pids if (r := self._rates.get(pid)) is not None
                 and r.ident not in self._excluded and r.ident not in serving}
        if not fresh or not serving:
            return
        try:
            clients = self.backend.local_peers({i.pid for i in serving}, set(fresh))
        except OSError as e:
            log.warn("guard_peers_unread", error=str(e))
            return
        for pid in clients:
            self._excluded[fresh[pid]] = "a local client of a serving process"

    def _exclusion(self, ident: TaskId) -> str | None:
        """Why ident is never demoted by the loop (cached per process), or None."""
        if ident in self._excluded:
            return self._excluded[ident]
        try:
            info = self.backend.read_process(ident.pid)
            if info.ident != ident:
                return "gone"
            d = self.classifier.classify(info, managed=False, libraries=False)
            why = d.excluded
        except (ProcessGone, PermissionError, OSError) as e:
            why = f"cannot be read: {e}"
        self._excluded[ident] = why
        return why

    # --- what status and explain show ---

    def view(self, now: float) -> GuardView:
        contenders = [self._contender(i) for i in self.imposer.imposed if i not in self._rt]
        fence = fence_cpus(self._online(), self.config.reserve_cpus)
        step = self.ladder.step
        return GuardView(
            enabled=self.config.enabled, step=step, step_name=self._step_name(step),
            steps=list(self.config.steps) + (["realtime"] if self.ladder.extra else []),
            realtime=sorted(i.pid for i in self._rt),
            wait_ratio=None if self.ratio is None else round(self.ratio, 4),
            wait_high=self.config.wait_high, wait_low=self.config.wait_low,
            hold_s=self.ladder.hold_s, why=self.ladder.why,
            since_s=None if self.ladder.since is None else round(now - self.ladder.since, 2),
            contenders=sorted(contenders, key=lambda c: c["pid"]),
            reserved_cpus=fence[1] if fence and "fence" in self.config.steps else [])

    def contender_view(self, ident: TaskId) -> ContenderView | None:
        return self._contender(ident) if ident in self.imposer.imposed else None

    def _contender(self, ident: TaskId) -> ContenderView:
        imp = self.imposer.imposed[ident]
        r = self._rates.get(ident.pid)
        return ContenderView(pid=ident.pid, name=imp.name,
                             cpu_percent=round(r.percent, 1) if r else 0.0,
                             knobs={k: describe(k, v) for k, v in imp.knobs.items()},
                             why=imp.why, errors=dict(imp.errors))
