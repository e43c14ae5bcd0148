"""The engine: applies a class's knobs to every thread of a process, follows new
threads, notices when a person changes a value after us, and undoes everything.

Every change goes through the journal first (write-ahead), so it can be undone on stop,
on request, and on the next start after a crash. An undo only writes a value back when
the task is still the same one (pid and start time, and for a live managed process a
pidfd proving it has not exited, since start times tick only every 10 ms) and the value
is still ours: it never clobbers what someone else set since.

Children and threads inherit what ainative set on their creator. Those it manages itself
are journaled with the creator's original values; those it does not are put back: on
fork while the daemon runs, and on every restore (also after a crash) by walking the
journaled processes' threads and descendants and the members of ainative's own groups.

Beside its log line, each classification, each knob written and each value put back (or
let go after a manual override) is reported as a typed telemetry event
(telemetry/events.py) through the sink the daemon passes in (telemetry/sink.py): one
event per thread and knob, only for writes that happened (never in a dry run).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ainative import log
from ainative.core.classes import ClassPolicy
from ainative.core.classifier import Decision
from ainative.core.journal import Change, Journal
from ainative.core.knobs import THREAD_KNOBS, comparable, describe, knobs_for
from ainative.platform.backend import Backend
from ainative.platform.base import ProcessGone, TaskId
from ainative.telemetry.events import (
    MAX_LIST,
    MAX_TEXT,
    AiTaskRegistered,
    PolicyApplied,
    PolicyRestored,
)
from ainative.telemetry.sink import NULL_SINK, EventSink, restore_why


def thread_targets(cls: ClassPolicy) -> dict[str, Any]:
    t: dict[str, Any] = {}
    if cls.nice is not None:
        t["nice"] = cls.nice
    if cls.policy is not None:
        t["policy"] = [cls.policy, cls.rt_priority if cls.is_realtime else 0]
    if cls.ioprio is not None:
        t["ioprio"] = list(cls.ioprio)
    if cls.slice_ns is not None:
        t["slice"] = cls.slice_ns
    if cls.affinity is not None:
        t["affinity"] = sorted(cls.affinity)
    if cls.priority_class is not None:
        t["priority_class"] = cls.priority_class
    if cls.thread_priority is not None:
        t["thread_priority"] = cls.thread_priority
    return t


def cgroup_settings(cls: ClassPolicy) -> dict[str, Any]:
    return {"cpu_weight": cls.cpu_weight, "cpu_idle": cls.cpu_idle, "cpuset": cls.cpuset,
            "memory_low": cls.memory_low}


@dataclass
class Managed:
    """A process ainative decided on, and what it did to it."""

    ident: TaskId
    name: str
    cls: str
    decision: Decision
    since: float = field(default_factory=time.time)
    active: bool = False  # knobs applied (serving waits to be busy, background for serving)
    baseline: dict[str, Any] = field(default_factory=dict)  # values before us (main thread)
    targets: dict[str, Any] = field(default_factory=dict)
    threads: dict[int, TaskId] = field(default_factory=dict)
    owned: dict[tuple[int, str], Change] = field(default_factory=dict)  # (tid, knob) -> change
    overridden: dict[str, str] = field(default_factory=dict)  # knob -> what the person did
    errors: dict[str, str] = field(default_factory=dict)  # knob -> why it was not applied
    policy: ClassPolicy | None = None  # the class as it was when targets were computed
    pin: int | None = None  # a pidfd proving the process has not exited (None: unsupported)

    def applied_summary(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for knob, val in self.targets.items():
            if knob in self.overridden or knob in self.errors:
                continue
            if any(k == knob for (_, k) in self.owned) or self.active:
                out[knob] = describe(knob, val)
        return out


@dataclass
class UndoReport:
    undone: int = 0
    skipped_gone: int = 0
    skipped_changed: int = 0
    failed: int = 0
    inherited: int = 0  # values put back on children/threads that inherited them
    details: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"undone": self.undone, "skipped_gone": self.skipped_gone,
                "skipped_changed": self.skipped_changed, "failed": self.failed,
                "inherited": self.inherited, "details": self.details[-200:]}

    def add(self, other: UndoReport) -> None:
        self.undone += other.undone
        self.skipped_gone += other.skipped_gone
        self.skipped_changed += other.skipped_changed
        self.failed += other.failed
        self.inherited += other.inherited
        self.details.extend(other.details)


class Engine:
    def __init__(
        self,
        backend: Backend,
        journal: Journal | None,
        classes: dict[str, ClassPolicy],
        *,
        dry_run: bool = False,
        cgroups_enabled: bool = True,
        clock: Callable[[], float] = time.time,
        busy: Callable[[TaskId], bool] = lambda _ident: True,
        sink: EventSink = NULL_SINK,
    ) -> None:
        self.backend = backend
        self.journal = journal
        self.classes = classes
        self.dry_run = dry_run or journal is None
        self.cgroups_enabled = cgroups_enabled
        self.clock = clock
        # Whether a serving process is busy now (the supervisor's activity tracker).
        self.busy = busy
        # Where each classification, knob write and undo is reported (telemetry/sink.py).
        self.sink = sink
        self.managed: dict[TaskId, Managed] = {}
        self.paused = False
        self._cgroup_paths: dict[str, dict[str, str]] = {}
        self._cgroup_error: dict[str, str] = {}
        self._prepared: dict[str, ClassPolicy] = {}  # the class each group was set up for
        # The closed loop's imposer (core/imposer.py) layers its own values on processes;
        # before the engine undoes a process it asks the loop to take its layer off first,
        # and a value the loop wrote is not a person's manual override.
        self.before_undo: Callable[[TaskId, str], object] = lambda _ident, _why: None
        self.layered: Callable[[int, str], Any] = lambda _tid, _knob: None

    # --- deciding ---

    def manage(self, decision: Decision, inherited: Managed | None = None) -> Managed | None:
        """Take a classified process under management (or update its class).

        ``inherited``: the managed parent this process was forked from; values it inherited
        from that parent are journaled with the parent's original values as 'old'."""
        if decision.cls is None:
            old = self.managed.get(decision.ident)
            if old is not None:
                self.unmanage(decision.ident, "no longer classified")
            return None
        cls = self.classes[decision.cls]
        m = self.managed.get(decision.ident)
        if m is not None and m.cls == decision.cls:
            m.decision = decision
            return m
        if m is not None:
            self.unmanage(decision.ident, f"class changed {m.cls} -> {decision.cls}")
        try:
            pin = self.backend.pin(decision.ident)
        except ProcessGone:
            return None
        m = Managed(decision.ident, decision.name, decision.cls, decision, since=self.clock(),
                    policy=cls, pin=pin)
        # A class may name Linux and Windows knobs; this backend sets only its own.
        mine = knobs_for(self.backend.name)
        m.targets = {k: v for k, v in thread_targets(cls).items() if k in mine}
        for knob, why in self.backend.missing_knobs().items():
            if m.targets.pop(knob, None) is not None:
                m.errors[knob] = why
        if inherited is not None and inherited.active:
            m.baseline = dict(inherited.baseline)
        if cls.cgroup and self.cgroups_enabled and "cgroup" in mine:
            paths = self._group_paths(cls)
            if paths:
                m.targets["cgroup"] = paths
            else:
                m.errors["cgroup"] = self._cgroup_error.get(cls.name, "cgroups unavailable")
        if cls.is_realtime and not self.backend.rt_throttled():
            m.errors["policy"] = ("refusing a realtime policy: the kernel does not throttle "
                                  "realtime tasks (sched_rt_runtime_us = -1)")
            m.targets.pop("policy", None)
        self.managed[decision.ident] = m
        log.event("classified", pid=m.ident.pid, name=m.name, cls=m.cls,
                  signals=[s.detail for s in decision.matched_signals])
        self.sink.emit(AiTaskRegistered(
            time.time_ns(), m.ident.pid, m.ident.pid, m.cls, m.name[:MAX_TEXT],
            tuple(s.detail[:MAX_TEXT] for s in decision.matched_signals[:MAX_LIST])))
        # Only m can change state here: a serving m that is applied turns on what waits
        # for serving itself (activate cascades), so no pass over every managed process.
        if self._should_be_active(m):
            self.activate(m)
        return m

    def _group_paths(self, cls: ClassPolicy) -> dict[str, str] | None:
        if cls.name in self._cgroup_paths:
            return self._cgroup_paths[cls.name]
        if cls.name in self._cgroup_error:
            return None
        if self.dry_run:
            return {"*": self.backend.cgroup_path(cls.name)}
        try:
            paths = self.backend.cgroup_prepare(cls.name, cgroup_settings(cls))
        except (OSError, ValueError, NotImplementedError) as e:
            self._cgroup_error[cls.name] = f"cannot prepare cgroup: {e}"
            log.warn("cgroup_unavailable", cls=cls.name, error=str(e))
            return None
        if not paths:
            self._cgroup_error[cls.name] = "no cgroup hierarchy offers what this class asks"
            return None
        self._cgroup_paths[cls.name] = paths
        self._prepared[cls.name] = cls
        return paths

    def _serving(self, m: Managed) -> bool:
        cls = self.classes.get(m.cls)
        return cls is not None and cls.serving

    def _should_be_active(self, m: Managed) -> bool:
        if self.paused:
            return False
        cls = self.classes[m.cls]
        if cls.serving:
            return self.busy(m.ident)
        if cls.only_while_serving_active:
            return self.serving_active()
        return True

    def serving_active(self) -> bool:
        """Whether some serving process is busy (and so has its boost)."""
        return any(m.active and self._serving(m) for m in self.managed.values())

    def update_activation(self) -> None:
        """Apply or lift what depends on activity: serving processes by their own, then
        the classes that wait for a busy serving process."""
        serving = [m for m in self.managed.values() if self._serving(m)]
        others = [m for m in self.managed.values() if not self._serving(m)]
        for m in (*serving, *others):
            if m.ident not in self.managed:
                continue  # exited while an earlier one was applied
            want = self._should_be_active(m)
            if want and not m.active:
                self.activate(m, cascade=False)
            elif not want and m.active:
                why = ("idle: no recent CPU use" if self._serving(m)
                       else "no serving process is busy")
                self.deactivate(m, why)

    # --- applying ---

    def activate(self, m: Managed, cascade: bool = True) -> None:
        m.active = True
        try:
            self._apply_process(m)
        except ProcessGone:
            self.forget(m.ident, "exited")
            return
        log.event("applied", pid=m.ident.pid, name=m.name, cls=m.cls,
                  knobs=m.applied_summary(), errors=m.errors or None, dry_run=self.dry_run)
        if cascade and self._serving(m):
            self.update_activation()

    def _catch_up(self, m: Managed) -> None:
        """Journal threads created since the last pass before undoing: they inherited our
        values from their creator, and an undo that missed them would leave them changed."""
        if not m.active or self.dry_run:
            return
        try:
            self._apply_process(m)
        except ProcessGone:
            pass
        except OSError as e:
            log.warn("catch_up_failed", pid=m.ident.pid, error=str(e))

    def deactivate(self, m: Managed, why: str) -> None:
        self.before_undo(m.ident, why)
        self._catch_up(m)
        rep = self.undo_changes(list(m.owned.values()), {m.ident: m.pin},
                                 why=restore_why("lifted", why))
        m.owned.clear()
        m.threads.clear()
        m.active = False
        log.event("lifted", pid=m.ident.pid, name=m.name, cls=m.cls, why=why,
                  undone=rep.undone)

    def _verify(self, m: Managed) -> None:
        """Raise ProcessGone unless m's process is still the one we decided on."""
        if m.pin is not None and not self.backend.pinned_alive(m.pin):
            raise ProcessGone(m.ident.pid)
        if self.backend.task_id(m.ident.pid) != m.ident:
            raise ProcessGone(m.ident.pid)

    def _apply_process(self, m: Managed) -> None:
        self._verify(m)
        batch: list[tuple[TaskId, TaskId, str, Any, Any]] = []
        todo: list[tuple[int, str, Any]] = []
        tknobs = {k: v for k, v in m.targets.items()
                  if k in THREAD_KNOBS and k not in m.overridden}
        # The cgroup first: on some kernels (6.1) moving a task into a cpuset-enabled group
        # resets its affinity, so thread knobs go on after the move.
        if "cgroup" in m.targets and "cgroup" not in m.overridden and (
                (m.ident.pid, "cgroup") not in m.owned):
            target = m.targets["cgroup"]
            try:
                cur = comparable(self.backend.get_knob(m.ident.pid, "cgroup"), target)
                m.baseline.setdefault("cgroup", cur)
                base = m.baseline["cgroup"]
                if cur != target:
                    batch.append((m.ident, m.ident, "cgroup", cur, target))
                    todo.append((m.ident.pid, "cgroup", target))
                elif base != target:
                    # Inherited from a managed parent: journaled so an undo moves it back.
                    batch.append((m.ident, m.ident, "cgroup", base, target))
            except ProcessGone:
                raise
            except (OSError, ValueError) as e:
                m.errors["cgroup"] = str(e)
        tids = self.backend.list_threads(m.ident.pid)
        # The main thread first: its values before we touch it are the baseline that new
        # threads and children inherit from, and what a restore brings back.
        tids.sort(key=lambda t: t != m.ident.pid)
        for tid in tids:
            if tid in m.threads:
                continue
            try:
                tident = self.backend.task_id(m.ident.pid, tid)
                for knob, target in tknobs.items():
                    cur = self.backend.get_knob(tid, knob)
                    if tid == m.ident.pid:
                        m.baseline.setdefault(knob, cur)
                    if cur == target:
                        # A thread that inherited our value (created after we applied)
                        # must still be put back on undo.
                        base = m.baseline.get(knob)
                        if base is not None and base != target:
                            batch.append((m.ident, tident, knob, base, target))
                        continue
                    batch.append((m.ident, tident, knob, cur, target))
                    todo.append((tid, knob, target))
            except ProcessGone:
                continue
            except PermissionError as e:
                m.errors["read"] = str(e)
                continue
            m.threads[tid] = tident
        if self.dry_run:
            return
        changes = self.journal.record(batch) if (self.journal and batch) else []
        by_key = {(c.task.pid, c.knob): c for c in changes}
        for c in changes:
            m.owned[(c.task.pid, c.knob)] = c
        for tid, knob, target in todo:
            c = by_key[(tid, knob)]
            try:
                # Re-check identity right before the write so a reused TID is never touched.
                if m.pin is not None and not self.backend.pinned_alive(m.pin):
                    raise ProcessGone(tid)
                if self.backend.task_id(m.ident.pid, tid) != c.task:
                    raise ProcessGone(tid)
                self.backend.set_knob(tid, knob, target)
            except ProcessGone:
                self._close(m, c, "gone")
                continue
            except (PermissionError, OSError, ValueError) as e:
                self._close(m, c, "failed")
                m.errors[knob] = f"{type(e).__name__}: {e}"
                log.warn("apply_failed", pid=m.ident.pid, tid=tid, knob=knob, error=str(e))
                continue
            self.sink.emit(PolicyApplied(time.time_ns(), m.ident.pid, tid, knob,
                                         _shown(knob, c.old), _shown(knob, target), m.cls))

    def _restored(self, pid: int, tid: int, knob: str, value: Any, why: str) -> None:
        self.sink.emit(PolicyRestored(time.time_ns(), pid, tid, knob, _shown(knob, value), why))

    def _close(self, m: Managed, c: Change, reason: str) -> None:
        m.owned.pop((c.task.pid, c.knob), None)
        if self.journal:
            self.journal.close([c.seq], reason)

    def reset_inherited(self, pid: int, parent: Managed, keep: frozenset[str] = frozenset()
                        ) -> int:
        """A child of a managed process inherits its knobs (and cgroup) on fork. When the
        child is not classified itself, or its own class does not set a knob (``keep``
        names those it sets and has journaled), put back what the parent had before us,
        so that ainative's changes never leak to processes it did not choose. Returns how
        many values were reset."""
        if self.dry_run or not parent.active:
            return 0
        n = 0
        why = restore_why("inherited", f"from managed parent {parent.ident.pid}")
        try:
            for tid in self.backend.list_threads(pid):
                for knob, target in parent.targets.items():
                    if knob not in THREAD_KNOBS or knob in parent.overridden or knob in keep:
                        continue
                    base = parent.baseline.get(knob)
                    if base is None or base == target:
                        continue
                    if self.backend.get_knob(tid, knob) == target:
                        self.backend.set_knob(tid, knob, base)
                        self._restored(pid, tid, knob, base, why)
                        n += 1
            if "cgroup" in parent.targets and "cgroup" in parent.baseline and (
                    "cgroup" not in keep):
                cur = self.backend.get_knob(pid, "cgroup")
                target = parent.targets["cgroup"]
                if comparable(cur, target) == target:
                    self.backend.set_knob(pid, "cgroup", parent.baseline["cgroup"])
                    self._restored(pid, pid, "cgroup", parent.baseline["cgroup"], why)
                    n += 1
        except (ProcessGone, PermissionError, OSError, ValueError):
            pass
        if n:
            log.event("inheritance_reset", pid=pid, parent=parent.ident.pid, values=n)
        return n

    def on_new_thread(self, pid: int, tid: int) -> None:
        for m in self.managed.values():
            if m.ident.pid == pid and m.active:
                try:
                    self._apply_process(m)
                except ProcessGone:
                    self.forget(m.ident, "exited")
                return

    # --- watching ---

    def reconcile(self) -> None:
        """Drop exited processes and threads, pick up new threads, respect manual changes."""
        for m in list(self.managed.values()):
            try:
                self._verify(m)
            except ProcessGone:
                self.forget(m.ident, "exited")
                continue
            if not m.active:
                continue
            self._check_overrides(m)
            try:
                live = set(self.backend.list_threads(m.ident.pid))
            except ProcessGone:
                self.forget(m.ident, "exited")
                continue
            for tid in [t for t in m.threads if t not in live]:
                del m.threads[tid]
                for key in [k for k in m.owned if k[0] == tid and k[1] != "cgroup"]:
                    self._close(m, m.owned[key], "gone")
            if live - set(m.threads):
                try:
                    self._apply_process(m)
                except ProcessGone:
                    self.forget(m.ident, "exited")

    def _check_overrides(self, m: Managed) -> None:
        for (tid, knob), c in list(m.owned.items()):
            try:
                if self.backend.task_id(m.ident.pid, tid if knob != "cgroup" else None) != c.task:
                    self._close(m, c, "gone")
                    continue
                cur = self.backend.get_knob(tid, knob)
            except ProcessGone:
                self._close(m, c, "gone")
                continue
            except (PermissionError, OSError):
                continue
            cur = comparable(cur, c.new)
            if cur != c.new and cur != self.layered(tid, knob):
                what = f"thread {tid}: {describe(knob, c.new)} -> {describe(knob, cur)}"
                m.overridden[knob] = what
                self._close(m, c, "released")
                self.sink.emit(PolicyRestored(time.time_ns(), m.ident.pid, tid, knob,
                                              _shown(knob, cur), restore_why("override", what)))
                log.warn("manual_override", pid=m.ident.pid, name=m.name, knob=knob,
                         change=what, action="backing off: ainative leaves this knob alone "
                         "for this process and will not restore it")

    def forget(self, ident: TaskId, why: str) -> None:
        m = self.managed.pop(ident, None)
        if m is None:
            return
        self._unpin(m)
        if self.journal and m.owned:
            self.journal.close([c.seq for c in m.owned.values()], "gone")
        log.event("forgotten", pid=ident.pid, name=m.name, cls=m.cls, why=why)
        if m.active and self._serving(m):
            self.update_activation()

    def unmanage(self, ident: TaskId, why: str) -> UndoReport:
        m = self.managed.get(ident)
        if m is None:
            return UndoReport()
        self.before_undo(ident, why)
        self._catch_up(m)
        del self.managed[ident]
        rep = self.undo_changes(list(m.owned.values()), {m.ident: m.pin},
                                 why=restore_why("restored", why))
        self._unpin(m)
        log.event("unmanaged", pid=ident.pid, name=m.name, cls=m.cls, why=why, undone=rep.undone)
        if m.active and self._serving(m):
            self.update_activation()
        return rep

    def _unpin(self, m: Managed) -> None:
        if m.pin is not None:
            self.backend.unpin(m.pin)
            m.pin = None

    def set_classes(self, classes: dict[str, ClassPolicy]) -> list[TaskId]:
        """New class definitions (a reload). Processes whose class is gone or changed are
        unmanaged (everything undone); returns them, for the caller to classify again."""
        self.classes = classes
        changed = {n for n in set(self._cgroup_paths) | set(self._cgroup_error)
                   if classes.get(n) is None or cgroup_settings(classes[n]) !=
                   cgroup_settings(self._prepared.get(n, classes[n]))}
        for n in changed:
            self._cgroup_paths.pop(n, None)
            self._cgroup_error.pop(n, None)
        out: list[TaskId] = []
        for ident, m in list(self.managed.items()):
            new = classes.get(m.cls)
            if new is None:
                self.unmanage(ident, f"class {m.cls} no longer defined")
                out.append(ident)
            elif new != m.policy:
                self.unmanage(ident, f"class {m.cls} changed on reload")
                out.append(ident)
        return out

    # --- undoing ---

    def undo_changes(self, changes: list[Change],
                      pins: dict[TaskId, int | None] | None = None, *,
                      why: str) -> UndoReport:
        """Write back each change's old value where the task and the value are still
        the ones ainative set; ``why`` goes with each PolicyRestored event."""
        rep = UndoReport()
        closes: dict[str, list[int]] = {"undone": [], "gone": [], "skipped": [], "failed": []}
        pins = pins if pins is not None else {m.ident: m.pin for m in self.managed.values()}
        # Newest first, except slices last: a slice can only be written to a fair-policy
        # thread, and a thread that appeared after a realtime step has its slice change
        # journaled after that step's (so it would come first, and fail, under FIFO).
        for c in sorted(changes, key=lambda c: (c.knob == "slice", -c.seq)):
            tid = c.task.pid
            try:
                pin = pins.get(c.proc)
                if pin is not None and not self.backend.pinned_alive(pin):
                    raise ProcessGone(tid)
                cur_id = self.backend.task_id(c.proc.pid, tid if c.knob != "cgroup" else None)
                if cur_id != c.task:
                    raise ProcessGone(tid)
                cur = self.backend.get_knob(tid, c.knob)
                cur = comparable(cur, c.new)
                if cur != c.new:
                    rep.skipped_changed += 1
                    rep.details.append(f"pid {c.proc.pid} tid {tid} {c.knob}: now "
                                       f"{describe(c.knob, cur)}, set by someone else; left")
                    closes["skipped"].append(c.seq)
                    continue
                self.backend.set_knob(tid, c.knob, c.old)
                rep.undone += 1
                closes["undone"].append(c.seq)
                self._restored(c.proc.pid, tid, c.knob, c.old, why)
            except ProcessGone:
                rep.skipped_gone += 1
                closes["gone"].append(c.seq)
            except (PermissionError, OSError, ValueError) as e:
                rep.failed += 1
                rep.details.append(f"pid {c.proc.pid} tid {tid} {c.knob}: {e}")
                closes["failed"].append(c.seq)
        if self.journal:
            for reason, seqs in closes.items():
                if seqs:
                    self.journal.close(seqs, reason)
        return rep

    def restore_all(self, pause: bool = True, why: str = "restore requested") -> UndoReport:
        """Undo every change in force: those of this run and any left by a crashed one."""
        rep = UndoReport()
        for m in list(self.managed.values()):
            self._catch_up(m)
        if self.journal is not None:
            changes = self.journal.in_force()
            rep = self.undo_changes(changes, why=restore_why("restored", why))
            if not self.dry_run:
                self._put_back_inherited(changes, rep)
            self.journal.compact()
        for m in self.managed.values():
            m.owned.clear()
            m.threads.clear()
            m.active = False
        if pause:
            self.paused = True
        log.event("restored", **{k: v for k, v in rep.to_json().items() if k != "details"})
        return rep

    def _put_back_inherited(self, changes: list[Change], rep: UndoReport) -> None:
        """Threads and descendants that inherited our values from a journaled process
        without being journaled themselves (created after a crash, or between two passes)
        get the process's original values back; then whatever is left in ainative's own
        groups is moved out (to where its journaled ancestor came from, else the root)."""
        origin: dict[TaskId, dict[str, tuple[Any, Any]]] = {}
        journaled: set[tuple[int, int]] = set()
        for c in changes:
            journaled.add((c.task.pid, c.task.start_time))
            if c.task == c.proc:
                origin.setdefault(c.proc, {})[c.knob] = (c.old, c.new)
        live = {p for p in origin if self._alive(p)}
        # Descendants are found from the parent map, which costs a read of every
        # process: only when some journaled process is still there to have any.
        parents = self.parent_map() if live else {}
        by_pid = {p.pid: p for p in live}

        def ancestor(pid: int) -> TaskId | None:
            seen = 0
            cur = parents.get(pid)
            while cur is not None and cur > 1 and seen < 1024:
                if cur in by_pid:
                    return by_pid[cur]
                cur, seen = parents.get(cur), seen + 1
            return None

        for proc in live:
            self.reset_values(proc.pid, origin[proc], journaled, rep, proc,
                               restore_why("inherited", "by a thread created after the "
                                           "change"))
        for pid in parents:
            anc = ancestor(pid)
            if anc is not None:
                self.reset_values(pid, origin[anc], journaled, rep, None,
                                   restore_why("inherited", f"from managed ancestor {anc.pid}"))
        try:
            strays = self.backend.cgroup_members()
        except (OSError, ValueError) as e:
            rep.details.append(f"cannot list ainative's cgroups: {e}")
            return
        for pid in strays:
            anc = ancestor(pid)
            old = origin[anc].get("cgroup", (None, None))[0] if anc is not None else None
            if old is None:
                # Nothing says where it came from: the hierarchy's root, never another
                # process's original group.
                old = self.backend.cgroup_root_path()
            try:
                self.backend.set_knob(pid, "cgroup", old)
                rep.inherited += 1
                self._restored(pid, pid, "cgroup", old,
                               restore_why("inherited", "left in ainative's group"))
            except ProcessGone:
                continue
            except (PermissionError, OSError, ValueError) as e:
                rep.failed += 1
                rep.details.append(f"pid {pid}: cannot move out of ainative's group: {e}")

    def _alive(self, ident: TaskId) -> bool:
        try:
            return self.backend.task_id(ident.pid) == ident
        except ProcessGone:
            return False

    def parent_map(self) -> dict[int, int]:
        out: dict[int, int] = {}
        for pid in self.backend.list_pids():
            try:
                out[pid] = self.backend.parent_pid(pid)
            except (ProcessGone, PermissionError, OSError):
                continue
        return out

    def reset_values(self, pid: int, values: dict[str, tuple[Any, Any]],
                      journaled: set[tuple[int, int]], rep: UndoReport,
                      proc: TaskId | None, why: str) -> None:
        """Put back, on every thread of pid not journaled itself, each thread knob whose
        value is still what ainative set on the origin (and the cgroup for a child)."""
        try:
            tids = self.backend.list_threads(pid)
            for tid in tids:
                tident = self.backend.task_id(pid, tid)
                if (tident.pid, tident.start_time) in journaled:
                    continue
                for knob, (old, new) in values.items():
                    if knob not in THREAD_KNOBS:
                        continue
                    if self.backend.get_knob(tid, knob) == new and old != new:
                        self.backend.set_knob(tid, knob, old)
                        rep.inherited += 1
                        self._restored(pid, tid, knob, old, why)
            if proc is None and "cgroup" in values:
                old, new = values["cgroup"]
                if comparable(self.backend.get_knob(pid, "cgroup"), new) == new:
                    self.backend.set_knob(pid, "cgroup", old)
                    rep.inherited += 1
                    self._restored(pid, pid, "cgroup", old, why)
        except ProcessGone:
            return
        except (PermissionError, OSError, ValueError) as e:
            rep.failed += 1
            rep.details.append(f"pid {pid}: inherited values not put back: {e}")

    def resume(self) -> None:
        self.paused = False
        for m in self.managed.values():
            if not m.active and self._should_be_active(m):
                self.activate(m)
        self.update_activation()


def _shown(knob: str, value: Any) -> str:
    """A knob's value as an event carries it: as `status` shows it, within the schema's
    limit on text."""
    return describe(knob, value)[:MAX_TEXT]
