"""The engine: applies a class's knobs to every thread of a process, follows new
threads, notices when a person changes a value after us, and undoes everything.

Every change goes through the journal first (write-ahead), so it can be undone on stop,
on request, and on the next start after a crash. An undo only writes a value back when
the task is still the same one (pid and start time) and the value is still ours: it
never clobbers what someone else set since.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ainative import log
from ainative.core.classes import ClassPolicy, format_cpus
from ainative.core.classifier import Decision
from ainative.core.journal import Change, Journal
from ainative.platform.backend import THREAD_KNOBS, Backend
from ainative.platform.base import POLICY_NAMES, ProcessGone, TaskId

INFERENCE = "inference"


def thread_targets(cls: ClassPolicy) -> dict[str, Any]:
    t: dict[str, Any] = {}
    if cls.nice is not None:
        t["nice"] = cls.nice
    if cls.policy is not None:
        t["policy"] = [cls.policy, cls.rt_priority if cls.is_realtime else 0]
    if cls.ioprio is not None:
        t["ioprio"] = list(cls.ioprio)
    if cls.affinity is not None:
        t["affinity"] = sorted(cls.affinity)
    return t


def cgroup_settings(cls: ClassPolicy) -> dict[str, Any]:
    return {"cpu_weight": cls.cpu_weight, "cpu_idle": cls.cpu_idle, "cpuset": cls.cpuset,
            "memory_low": cls.memory_low}


def comparable(cur: Any, ref: Any) -> Any:
    """A read-back value in the shape of the one it is compared with. A cgroup value lists
    every managed hierarchy, but a target or journal entry only those a class uses."""
    if isinstance(cur, dict) and isinstance(ref, dict):
        return {k: cur.get(k, "/") for k in ref}
    return cur


def describe(knob: str, value: Any) -> str:
    if knob == "policy" and isinstance(value, list):
        name = POLICY_NAMES.get(int(value[0]), str(value[0]))
        return f"{name}:{value[1]}" if value[1] else name
    if knob == "ioprio" and isinstance(value, list):
        return f"{['none', 'rt', 'be', 'idle'][int(value[0])]}:{value[1]}"
    if knob == "affinity" and isinstance(value, list):
        return format_cpus(frozenset(value))
    if knob == "cgroup" and isinstance(value, dict):
        return ",".join(sorted(set(value.values())))
    return str(value)


@dataclass
class Managed:
    """A process ainative decided on, and what it did to it."""

    ident: TaskId
    name: str
    cls: str
    decision: Decision
    since: float = field(default_factory=time.time)
    active: bool = False  # knobs applied (background may wait for inference)
    baseline: dict[str, Any] = field(default_factory=dict)  # values before us (main thread)
    targets: dict[str, Any] = field(default_factory=dict)
    threads: dict[int, TaskId] = field(default_factory=dict)
    owned: dict[tuple[int, str], Change] = field(default_factory=dict)  # (tid, knob) -> change
    overridden: dict[str, str] = field(default_factory=dict)  # knob -> what the person did
    errors: dict[str, str] = field(default_factory=dict)  # knob -> why it was not applied

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
    details: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"undone": self.undone, "skipped_gone": self.skipped_gone,
                "skipped_changed": self.skipped_changed, "failed": self.failed,
                "details": self.details[-200:]}

    def add(self, other: UndoReport) -> None:
        self.undone += other.undone
        self.skipped_gone += other.skipped_gone
        self.skipped_changed += other.skipped_changed
        self.failed += other.failed
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
    ) -> None:
        self.backend = backend
        self.journal = journal
        self.classes = classes
        self.dry_run = dry_run or journal is None
        self.cgroups_enabled = cgroups_enabled
        self.clock = clock
        self.managed: dict[TaskId, Managed] = {}
        self.paused = False
        self._cgroup_paths: dict[str, dict[str, str]] = {}
        self._cgroup_error: dict[str, str] = {}

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
        m = Managed(decision.ident, decision.name, decision.cls, decision, since=self.clock())
        m.targets = thread_targets(cls)
        if inherited is not None and inherited.active:
            m.baseline = dict(inherited.baseline)
        if cls.cgroup and self.cgroups_enabled:
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
        self.update_activation()
        if not m.active and self._should_be_active(m):
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
        return paths

    def _should_be_active(self, m: Managed) -> bool:
        if self.paused:
            return False
        cls = self.classes[m.cls]
        if cls.only_while_inference_active:
            return self.inference_active()
        return True

    def inference_active(self) -> bool:
        return any(m.cls == INFERENCE and m.active for m in self.managed.values())

    def update_activation(self) -> None:
        """Apply or lift classes that wait for an active inference process."""
        for m in list(self.managed.values()):
            if m.cls == INFERENCE:
                continue
            want = self._should_be_active(m)
            if want and not m.active:
                self.activate(m)
            elif not want and m.active:
                self.deactivate(m, "no inference process is active")

    # --- applying ---

    def activate(self, m: Managed) -> None:
        m.active = True
        try:
            self._apply_process(m)
        except ProcessGone:
            self.forget(m.ident, "exited")
            return
        log.event("applied", pid=m.ident.pid, name=m.name, cls=m.cls,
                  knobs=m.applied_summary(), errors=m.errors or None, dry_run=self.dry_run)
        if m.cls == INFERENCE:
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
        self._catch_up(m)
        rep = self._undo_changes(list(m.owned.values()))
        m.owned.clear()
        m.threads.clear()
        m.active = False
        log.event("lifted", pid=m.ident.pid, name=m.name, cls=m.cls, why=why,
                  undone=rep.undone)

    def _verify(self, ident: TaskId, tid: int | None = None) -> TaskId:
        cur = self.backend.task_id(ident.pid, tid)
        if tid is None and cur != ident:
            raise ProcessGone(ident.pid)
        return cur

    def _apply_process(self, m: Managed) -> None:
        self._verify(m.ident)
        batch: list[tuple[TaskId, TaskId, str, Any, Any]] = []
        todo: list[tuple[int, str, Any]] = []
        tknobs = {k: v for k, v in m.targets.items()
                  if k in THREAD_KNOBS and k not in m.overridden}
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
        if "cgroup" in m.targets and "cgroup" not in m.overridden and (
                (m.ident.pid, "cgroup") not in m.owned):
            target = m.targets["cgroup"]
            try:
                cur = self.backend.get_knob(m.ident.pid, "cgroup")
                cur = comparable(cur, target)
                m.baseline.setdefault("cgroup", cur)
                if cur != target:
                    batch.append((m.ident, m.ident, "cgroup", cur, target))
                    todo.append((m.ident.pid, "cgroup", target))
            except ProcessGone:
                raise
            except (OSError, ValueError) as e:
                m.errors["cgroup"] = str(e)
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
                if self.backend.task_id(m.ident.pid, tid) != c.task:
                    raise ProcessGone(tid)
                self.backend.set_knob(tid, knob, target)
            except ProcessGone:
                self._close(m, c, "gone")
            except (PermissionError, OSError, ValueError) as e:
                self._close(m, c, "failed")
                m.errors[knob] = f"{type(e).__name__}: {e}"
                log.warn("apply_failed", pid=m.ident.pid, tid=tid, knob=knob, error=str(e))

    def _close(self, m: Managed, c: Change, reason: str) -> None:
        m.owned.pop((c.task.pid, c.knob), None)
        if self.journal:
            self.journal.close([c.seq], reason)

    def reset_inherited(self, pid: int, parent: Managed) -> int:
        """A child of a managed process inherits its knobs (and cgroup) on fork. When the
        child is not classified itself, put back what the parent had before us, so that
        ainative's changes never leak to processes it did not choose. Returns how many
        values were reset."""
        if self.dry_run or not parent.active:
            return 0
        n = 0
        try:
            for tid in self.backend.list_threads(pid):
                for knob, target in parent.targets.items():
                    if knob not in THREAD_KNOBS or knob in parent.overridden:
                        continue
                    base = parent.baseline.get(knob)
                    if base is None or base == target:
                        continue
                    if self.backend.get_knob(tid, knob) == target:
                        self.backend.set_knob(tid, knob, base)
                        n += 1
            if "cgroup" in parent.targets and "cgroup" in parent.baseline:
                cur = self.backend.get_knob(pid, "cgroup")
                target = parent.targets["cgroup"]
                if comparable(cur, target) == target:
                    self.backend.set_knob(pid, "cgroup", parent.baseline["cgroup"])
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
                self._verify(m.ident)
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
            if cur != c.new:
                what = f"thread {tid}: {describe(knob, c.new)} -> {describe(knob, cur)}"
                m.overridden[knob] = what
                self._close(m, c, "released")
                log.warn("manual_override", pid=m.ident.pid, name=m.name, knob=knob,
                         change=what, action="backing off: ainative leaves this knob alone "
                         "for this process and will not restore it")

    def forget(self, ident: TaskId, why: str) -> None:
        m = self.managed.pop(ident, None)
        if m is None:
            return
        if self.journal and m.owned:
            self.journal.close([c.seq for c in m.owned.values()], "gone")
        log.event("forgotten", pid=ident.pid, name=m.name, cls=m.cls, why=why)
        if m.cls == INFERENCE:
            self.update_activation()

    def unmanage(self, ident: TaskId, why: str) -> UndoReport:
        m = self.managed.get(ident)
        if m is None:
            return UndoReport()
        self._catch_up(m)
        del self.managed[ident]
        rep = self._undo_changes(list(m.owned.values()))
        log.event("unmanaged", pid=ident.pid, name=m.name, cls=m.cls, why=why, undone=rep.undone)
        if m.cls == INFERENCE:
            self.update_activation()
        return rep

    # --- undoing ---

    def _undo_changes(self, changes: list[Change]) -> UndoReport:
        rep = UndoReport()
        closes: dict[str, list[int]] = {"undone": [], "gone": [], "skipped": [], "failed": []}
        for c in sorted(changes, key=lambda c: -c.seq):
            tid = c.task.pid
            try:
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

    def restore_all(self, pause: bool = True) -> UndoReport:
        """Undo every change in force: those of this run and any left by a crashed one."""
        rep = UndoReport()
        for m in list(self.managed.values()):
            self._catch_up(m)
        if self.journal is not None:
            rep = self._undo_changes(self.journal.in_force())
            self.journal.compact()
        for m in self.managed.values():
            m.owned.clear()
            m.threads.clear()
            m.active = False
        if pause:
            self.paused = True
        log.event("restored", **{k: v for k, v in rep.to_json().items() if k != "details"})
        return rep

    def resume(self) -> None:
        self.paused = False
        for m in self.managed.values():
            if not m.active and self._should_be_active(m):
                self.activate(m)
        self.update_activation()
