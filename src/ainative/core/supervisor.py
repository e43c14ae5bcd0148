"""The supervisor: process events -> classification -> engine.

It owns the classifier, the engine and the activity tracker and is the one place that
decides what an event means: an exec is a new program to classify; a fork of a managed
process is a child that inherited our values (managed itself, or put back); an exit
purges every table entry of that pid; a library re-check timer looks again at a process
that may load a runtime late; an activity tick samples the CPU time of serving processes
(boost on while busy, off once idle) and of AI processes not yet serving (one that starts
using CPU is looked at again: it may have opened a listening socket); a rule swap
re-targets the processes already managed.

Platform-free and single-threaded: the daemon's loop feeds it events and timer ticks,
the API asks it to register, restore and resume. Unit-tested with a fake backend.
"""

from __future__ import annotations

import heapq
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from ainative import log
from ainative.core.activity import ActivityConfig, ActivityTracker, ActivityView
from ainative.core.classifier import Classifier, Decision
from ainative.core.engine import Engine, Managed, UndoReport
from ainative.core.guard import GuardView
from ainative.core.guardloop import GuardLoop
from ainative.core.imposer import Imposer
from ainative.core.journal import Journal
from ainative.core.rules import RuleSet
from ainative.platform.backend import Backend
from ainative.platform.base import ProcessGone, ProcEvent, TaskId
from ainative.telemetry.sink import NULL_SINK, EventSink

# Pending library re-checks are kept in a heap; entries of exited processes are dropped
# lazily, and the heap is rebuilt when it holds this many times more entries than live
# processes waiting, so an exec storm cannot grow it without bound.
_TIMER_SLACK = 4
# An AI process not (yet) serving that uses CPU is looked at for a listening socket at
# most this often: a batch job running flat out must not cost a socket scan (up to a few
# ms where the TCP tables are large) every tick. After _LISTEN_FAST_CHECKS looks that found
# none, it is looked at every _LISTEN_RECHECK_SLOW_S: a job busy for minutes without a
# socket is throughput work, and one that starts serving is still found in seconds.
_LISTEN_RECHECK_S = 0.5
_LISTEN_FAST_CHECKS = 20
_LISTEN_RECHECK_SLOW_S = 5.0


class Refused(Exception):
    """A request the supervisor will not carry out; the message says why."""


@dataclass(frozen=True)
class SupervisorConfig:
    scope_pid: int | None = None
    dry_run: bool = False
    cgroups: bool = True
    self_pid: int | None = None


class Supervisor:
    def __init__(
        self,
        backend: Backend,
        rules: RuleSet,
        journal: Journal | None,
        config: SupervisorConfig = SupervisorConfig(),
        *,
        gpu_pids: Callable[[], set[int]] = set,
        clock: Callable[[], float] = time.monotonic,
        sink: EventSink = NULL_SINK,
    ) -> None:
        """``sink``: where the engine reports each classification, knob write and undo
        as a telemetry event (the daemon's sinks; nothing by default)."""
        self.backend = backend
        self.rules = rules
        self.cfg = config
        self.clock = clock
        self.classifier = Classifier(
            backend, rules, self_pid=config.self_pid if config.self_pid else os.getpid(),
            scope_pid=config.scope_pid, gpu_pids=gpu_pids, clock=clock)
        self.activity = ActivityTracker(activity_config(rules))
        self.engine = Engine(backend, journal, rules.classes, dry_run=config.dry_run,
                             cgroups_enabled=config.cgroups, busy=self.activity.busy,
                             sink=sink)
        # The closed loop (core/guard.py): demotes competing work as far as the busy
        # serving processes' run-queue wait asks, on the activity tick.
        self.imposer = Imposer(self.engine)
        self.guard = GuardLoop(backend, self.classifier, self.imposer, rules.guard)
        self._next_sample: float | None = None
        # Whether any process's activity is watched: the loop wakes for activity ticks only
        # then (set when one is managed, recomputed at each tick), so an idle daemon with
        # only background processes managed does not wake four times a second.
        self._watching = False
        # pid -> (when its sockets were last read, how many times)
        self._listen_checked: dict[int, tuple[float, int]] = {}
        self._timers: list[tuple[float, int, TaskId]] = []
        # pid -> (identity, due time of its re-check): keyed by pid so an exit purges in O(1)
        self._waiting: dict[int, tuple[TaskId, float]] = {}

    # --- start and stop ---

    def recover(self) -> UndoReport | None:
        """Undo what a previous run left in force (it died without undoing)."""
        journal = self.engine.journal
        if journal is None or not journal.in_force():
            return None
        self.imposer.release_all("crash recovery")
        rep = self.engine.restore_all(pause=False, why="crash recovery")
        self._cleanup()
        return rep

    def stop(self) -> UndoReport:
        """Undo everything (children and threads that inherited included), remove the
        empty groups, release every pin."""
        self.guard.stand_down()
        rep = self.imposer.release_all("daemon stopping")
        rep.add(self.engine.restore_all(pause=True, why="daemon stopping"))
        self._cleanup()
        for ident in list(self.engine.managed):
            self.engine.forget(ident, "daemon stopping")
        return rep

    def _cleanup(self) -> None:
        if self.cfg.dry_run:
            return
        try:
            self.backend.cleanup()
        except (OSError, ValueError) as e:
            log.warn("cleanup_failed", error=str(e))

    # --- events ---

    def on_event(self, ev: ProcEvent) -> None:
        kind, pid, tid = ev.kind, ev.pid, ev.tid
        if kind == "scan":
            self.full_scan()
        elif kind == "exec":
            # A new program: what was mapped before (same pid, same start time) is gone.
            self.classifier.forget_pid(pid)
            self.examine(pid)
        elif kind == "comm":
            self.examine(pid)
        elif kind == "fork":
            if tid != pid:
                self.engine.on_new_thread(pid, tid)
            elif self.managed_by_pid(ev.parent_pid) is not None:
                # Only a managed parent's fork matters now (inherited values); any other
                # fork is looked at when it execs, which keeps busy build machines cheap.
                self.examine(pid, parent_pid=ev.parent_pid)
        elif kind == "exit" and tid == pid:
            self.on_exit(pid)

    def on_exit(self, pid: int) -> None:
        for ident in [i for i in self.engine.managed if i.pid == pid]:
            self.engine.forget(ident, "exited")
        self.classifier.forget_exited(pid)
        self._waiting.pop(pid, None)
        self.activity.forget(pid)
        self._listen_checked.pop(pid, None)
        self.imposer.forget_exited(pid)

    def managed_by_pid(self, pid: int) -> Managed | None:
        for ident, m in self.engine.managed.items():
            if ident.pid == pid:
                return m
        return None

    # --- classification ---

    def decide(self, pid: int) -> Decision:
        """The classifier's decision for pid now (for explain); ProcessGone if none."""
        info = self.backend.read_process(pid)
        managed = info.ident in self.engine.managed
        return self.classifier.classify(info, managed=managed, libraries=True)

    def examine(self, pid: int, parent_pid: int | None = None) -> None:
        try:
            info = self.backend.read_process(pid)
        except (ProcessGone, PermissionError, OSError):
            return
        managed = self.engine.managed.get(info.ident)
        try:
            d = self.classifier.classify(info, managed=managed is not None, libraries=True)
        except ProcessGone:
            return
        except (PermissionError, OSError) as e:
            log.debug("classify_failed", pid=pid, error=str(e))
            return
        if d.excluded:
            return
        parent = self.managed_by_pid(parent_pid if parent_pid else info.ppid)
        if d.cls is None:
            if managed is not None:
                self.engine.manage(d)
            elif parent is not None and parent_pid is not None:
                self.engine.reset_inherited(pid, parent)
            self._schedule(info.ident)
            return
        m = self.engine.manage(d, inherited=parent if parent_pid is not None else None)
        if m is not None and not self._watching and (
                self._is_serving(m) or _may_start_serving(m.decision)):
            # Due now: the loop wakes for it at once (None would mean "no deadline").
            self._watching, self._next_sample = True, self.clock()
        if m is not None and parent is not None and parent_pid is not None:
            # What it inherited from its parent and its own class does not set now (none
            # of it while not in force: a serving child not seen busy, a background one
            # while nothing serves; a batch child sets nothing) goes back.
            keep = frozenset(m.targets) if m.active else frozenset()
            self.engine.reset_inherited(pid, parent, keep)

    def full_scan(self) -> None:
        alive: set[TaskId] = set()
        for pid in self.backend.list_pids():
            try:
                alive.add(self.backend.task_id(pid))
            except ProcessGone:
                continue
            self.examine(pid)
        self.classifier.forget_gone(alive)
        for ident in [i for i in self.engine.managed if i not in alive]:
            self.engine.forget(ident, "exited")
        self._waiting = {p: w for p, w in self._waiting.items() if w[0] in alive}
        self._rebuild_timers()

    # --- library re-check timers ---

    def _schedule(self, ident: TaskId) -> None:
        due = self.classifier.next_library_check(ident)
        if due is None:
            return
        self._waiting[ident.pid] = (ident, due)
        heapq.heappush(self._timers, (due, ident.pid, ident))
        if len(self._timers) > _TIMER_SLACK * max(64, len(self._waiting)):
            self._rebuild_timers()

    def _rebuild_timers(self) -> None:
        self._timers = [(t, i.pid, i) for i, t in self._waiting.values()]
        heapq.heapify(self._timers)

    def next_timer(self) -> float | None:
        due = [t for t in (self._timers[0][0] if self._timers else None,
                           self._next_sample if self._watching else None) if t is not None]
        return min(due) if due else None

    def run_timers(self) -> None:
        now = self.clock()
        if self._next_sample is None or now >= self._next_sample:
            self.sample_activity()
        while self._timers and self._timers[0][0] <= now:
            due, _, ident = heapq.heappop(self._timers)
            if self._waiting.get(ident.pid) != (ident, due):
                continue  # superseded or purged
            del self._waiting[ident.pid]
            if ident in self.engine.managed:
                continue
            try:
                if self.backend.task_id(ident.pid) != ident:
                    self.classifier.forget(ident)
                    continue
            except ProcessGone:
                self.classifier.forget(ident)
                continue
            if self.classifier.library_recheck_due(ident):
                self.examine(ident.pid)
            else:
                self._schedule(ident)

    # --- activity ---

    def _watched(self) -> list[Managed]:
        """Managed processes whose CPU use matters: serving ones (their boost follows it)
        and AI ones that do not serve yet (they may start to)."""
        return [m for m in self.engine.managed.values()
                if self._is_serving(m) or _may_start_serving(m.decision)]

    def _is_serving(self, m: Managed) -> bool:
        cls = self.rules.classes.get(m.cls)
        return cls is not None and cls.serving

    def sample_activity(self) -> None:
        """One activity tick: read the CPU time of every watched process, apply or lift
        boosts whose busy state changed, look again at AI processes that started working."""
        now = self.clock()
        self._next_sample = now + self.activity.config.interval_s
        watched = self._watched()
        self._watching = bool(watched)
        changed = False
        recheck: list[int] = []
        for m in watched:
            try:
                user, system = self.backend.cpu_times(m.ident.pid)
            except (ProcessGone, PermissionError, OSError):
                continue
            if self.activity.observe(m.ident, now, user + system):
                changed = True
                log.event("busy" if self.activity.busy(m.ident) else "idle",
                          pid=m.ident.pid, name=m.name, cls=m.cls)
            if not self._is_serving(m) and self.activity.cpu_moved(m.ident):
                last, n = self._listen_checked.get(m.ident.pid, (-1e9, 0))
                every = _LISTEN_RECHECK_S if n < _LISTEN_FAST_CHECKS else _LISTEN_RECHECK_SLOW_S
                if now - last >= every:
                    recheck.append(m.ident.pid)
                    self._listen_checked[m.ident.pid] = (now, n + 1)
        self.activity.keep_only({m.ident for m in watched})
        for pid in recheck:
            self.examine(pid)  # a listening socket now makes it serving
        if not self.engine.paused:
            # Before update_activation: a serving process that went idle takes the loop
            # to step 0 (its layer off) before the classes it turned on are lifted.
            serving = [m for m in self.engine.managed.values() if self._is_serving(m)]
            self.guard.tick(now, [m for m in serving if self.activity.busy(m.ident)],
                            {m.ident for m in serving})
        if changed:
            self.engine.update_activation()

    def guard_view(self) -> GuardView:
        return self.guard.view(self.clock())

    def activity_view(self, ident: TaskId) -> ActivityView | None:
        return self.activity.view(ident, self.clock())

    def reconcile(self) -> None:
        self.engine.reconcile()

    # --- requests ---

    def swap_rules(self, rules: RuleSet) -> None:
        """New rules in force: processes whose class changed or went are undone and
        classified again under the new rules, everything else re-checked."""
        self.rules = rules
        self.classifier.rules = rules
        self.guard.reconfigure(rules.guard, "rules reloaded")
        cfg = activity_config(rules)
        if cfg != self.activity.config:
            self.activity.config = cfg
            self._next_sample = self.clock()
        for ident in self.engine.set_classes(rules.classes):
            self.examine(ident.pid)
        self.full_scan()

    def register(self, pid: int, cls: str, uid: int) -> Managed:
        """Registration by uid (root: 0) of pid into cls. Raises Refused."""
        if cls not in self.rules.classes:
            known = ", ".join(sorted(self.rules.classes))
            raise Refused(f"unknown class {cls!r}; known: {known}")
        try:
            info = self.backend.read_process(pid)
        except ProcessGone as e:
            raise Refused(f"no process {pid}") from e
        if uid != 0 and info.uid != uid:
            raise Refused(f"process {pid} belongs to uid {info.uid}; you (uid {uid}) may "
                          "only register your own processes")
        refused = self.classifier.refusal(cls, uid)
        if refused:
            raise Refused(refused)
        excluded = self.classifier.exclusion(info, info.ident in self.engine.managed)
        if excluded:
            raise Refused(f"process {pid} cannot be managed: {excluded}")
        self.classifier.registrations[info.ident] = (cls, uid)
        self.examine(pid)
        m = self.engine.managed.get(info.ident)
        if m is None:
            self.classifier.registrations.pop(info.ident, None)
            try:
                d = self.decide(pid)
            except (ProcessGone, PermissionError, OSError):
                d = None
            why = d.excluded if d is not None and d.excluded else "it exited or changed"
            raise Refused(f"process {pid} cannot be managed: {why}")
        log.event("registered", pid=pid, cls=cls, by_uid=uid)
        return m

    def restore(self) -> UndoReport:
        self.guard.stand_down()
        rep = self.imposer.release_all("restore requested")
        rep.add(self.engine.restore_all(pause=True, why="restore requested"))
        self._cleanup()
        return rep

    def resume(self) -> None:
        self.engine.resume()
        self.full_scan()


def activity_config(rules: RuleSet) -> ActivityConfig:
    return ActivityConfig(window_s=rules.active_window,
                          min_cpu_percent=rules.active_cpu_percent,
                          idle_after_s=rules.idle_after)


def _may_start_serving(d: Decision) -> bool:
    """Classified from AI evidence alone (a runtime or the GPU list), without a listening
    socket yet: opening one would make it serving."""
    matched = {s.name for s in d.matched_signals}
    return bool(matched & {"library", "gpu"}) and not matched & {
        "registration", "env", "rule", "listen"}
