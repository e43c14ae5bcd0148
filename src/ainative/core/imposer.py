"""Writes the closed loop's demotions on competing processes, through the journal.

The engine applies a class to the processes it classified; the loop (core/guardloop.py)
also demotes processes that no rule knows, and adds steps (SCHED_IDLE, a CPU fence) on top
of what a class set. Those changes are journaled like the engine's (write-ahead, the same
journal), so a stop, a restore request or the next start after a crash undoes them; every
thread is covered, those created later are caught up on each pass, and on release the
threads and children that inherited the values get the originals back.

Layering on a process the engine also manages (a `background` process under the fence):
the loop's changes are later in the journal, so an undo of everything (newest first) puts
the class's values back before the originals. The engine asks ``release`` before it undoes
a process of its own (``Engine.before_undo``), and its manual-override check accepts the
values written here (``Engine.layered``), so neither mistakes the other for a person.

An owner who puts a value back themselves (an unprivileged user may widen their own
affinity, though not undo nice 19 or SCHED_IDLE) is not a person overriding ainative by
hand but the competitor the loop exists for: the next pass journals their value as the
one to restore and writes the loop's again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from ainative import log
from ainative.core.engine import Engine, UndoReport
from ainative.core.journal import Change
from ainative.core.knobs import comparable, describe
from ainative.platform.base import ProcessGone, TaskId
from ainative.telemetry.events import MAX_TEXT, PolicyApplied
from ainative.telemetry.sink import restore_why


@dataclass
class Imposed:
    """One competing process and what the loop set on it."""

    ident: TaskId
    name: str
    knobs: dict[str, Any]
    why: str
    pin: int | None = None
    owned: dict[tuple[int, str], Change] = field(default_factory=dict)  # (tid, knob)
    errors: dict[str, str] = field(default_factory=dict)
    # knob -> (the main thread's value before the loop, the loop's value): what a child
    # forked meanwhile inherited, and what it gets back on release.
    original: dict[str, tuple[Any, Any]] = field(default_factory=dict)


class Imposer:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.imposed: dict[TaskId, Imposed] = {}
        engine.before_undo = self.release
        engine.layered = self.value_on

    @property
    def _live(self) -> bool:
        return not self.engine.dry_run and not self.engine.paused

    def value_on(self, tid: int, knob: str) -> Any:
        """The value the loop set on thread tid for knob, or None (for "cgroup", tid is
        the process)."""
        for imp in self.imposed.values():
            for (t, k), c in imp.owned.items():
                if t == tid and k == knob:
                    return c.new
        return None

    def impose(self, ident: TaskId, name: str, knobs: dict[str, Any], why: str) -> Imposed | None:
        """Make ``knobs`` (thread knobs: nice, policy, affinity) what the loop holds on
        every thread of ident; knobs it held before and no longer names are undone.
        None when the process is gone."""
        imp = self.imposed.get(ident)
        if imp is None:
            try:
                pin = self.engine.backend.pin(ident)
            except ProcessGone:
                return None
            imp = Imposed(ident, name, dict(knobs), why, pin)
            self.imposed[ident] = imp
        else:
            dropped = [c for (_, k), c in imp.owned.items() if k not in knobs]
            if dropped:
                self._undo(imp, dropped, "the loop stepped down")
            imp.knobs, imp.why = dict(knobs), why
        if self._live:
            try:
                self._apply(imp)
            except ProcessGone:
                self._forget(imp)
                return None
        return imp

    def _apply(self, imp: Imposed) -> None:
        """Journal then write every knob on every thread where it is not in force yet."""
        eng, be = self.engine, self.engine.backend
        if imp.pin is not None and not be.pinned_alive(imp.pin):
            raise ProcessGone(imp.ident.pid)
        if be.task_id(imp.ident.pid) != imp.ident:
            raise ProcessGone(imp.ident.pid)
        batch: list[tuple[TaskId, TaskId, str, Any, Any]] = []
        for tid in be.list_threads(imp.ident.pid):
            try:
                tident = be.task_id(imp.ident.pid, tid)
                for knob, target in imp.knobs.items():
                    if knob == "cgroup" and tid != imp.ident.pid:
                        continue  # process-wide: moved through its main thread
                    cur = comparable(be.get_knob(tid, knob), target)
                    if cur == target:
                        continue
                    old = imp.owned.pop((tid, knob), None)
                    if old is not None and eng.journal:
                        # Put back by its owner: their value is the one to restore now.
                        eng.journal.close([old.seq], "released")
                    batch.append((imp.ident, tident, knob, cur, target))
            except ProcessGone:
                continue
            except (PermissionError, OSError) as e:
                imp.errors["read"] = str(e)
        if not batch:
            return
        changes = eng.journal.record(batch) if eng.journal else []
        for c in changes:
            tid = c.task.pid
            try:
                if be.task_id(imp.ident.pid, tid if c.knob != "cgroup" else None) != c.task:
                    raise ProcessGone(tid)
                be.set_knob(tid, c.knob, c.new)
            except ProcessGone:
                if eng.journal:
                    eng.journal.close([c.seq], "gone")
                continue
            except (PermissionError, OSError, ValueError) as e:
                if eng.journal:
                    eng.journal.close([c.seq], "failed")
                imp.errors[c.knob] = f"{type(e).__name__}: {e}"
                continue
            imp.owned[(tid, c.knob)] = c
            if tid == imp.ident.pid:
                imp.original.setdefault(c.knob, (c.old, c.new))
            eng.sink.emit(PolicyApplied(time.time_ns(), imp.ident.pid, tid, c.knob,
                                        describe(c.knob, c.old)[:MAX_TEXT],
                                        describe(c.knob, c.new)[:MAX_TEXT], "guard"))

    def catch_up(self) -> None:
        """Cover threads created since the last pass (and values their owner put back)."""
        if not self._live:
            return
        for imp in list(self.imposed.values()):
            try:
                self._apply(imp)
            except ProcessGone:
                self._forget(imp)
            except OSError as e:
                log.warn("guard_catch_up_failed", pid=imp.ident.pid, error=str(e))

    def release(self, ident: TaskId, why: str = "released") -> UndoReport:
        """Undo what the loop set on ident (no-op when it set nothing)."""
        imp = self.imposed.pop(ident, None)
        if imp is None:
            return UndoReport()
        if self._live:
            try:
                self._apply(imp)  # journal late threads first, so the undo covers them
            except (ProcessGone, OSError):
                pass
        rep = self._undo(imp, list(imp.owned.values()), why)
        if not self.engine.dry_run:
            self._reset_descendants(imp, rep, why)
        self._unpin(imp)
        log.event("guard_released", pid=ident.pid, name=imp.name, why=why, undone=rep.undone,
                  inherited=rep.inherited)
        return rep

    def release_all(self, why: str) -> UndoReport:
        rep = UndoReport()
        for ident in list(self.imposed):
            rep.add(self.release(ident, why))
        return rep

    def forget_exited(self, pid: int) -> None:
        for imp in [i for i in self.imposed.values() if i.ident.pid == pid]:
            self._forget(imp)

    def _forget(self, imp: Imposed) -> None:
        self.imposed.pop(imp.ident, None)
        if self.engine.journal and imp.owned:
            self.engine.journal.close([c.seq for c in imp.owned.values()], "gone")
        imp.owned.clear()
        self._unpin(imp)

    def _unpin(self, imp: Imposed) -> None:
        if imp.pin is not None:
            self.engine.backend.unpin(imp.pin)
            imp.pin = None

    def _undo(self, imp: Imposed, changes: list[Change], why: str) -> UndoReport:
        for c in changes:
            imp.owned.pop((c.task.pid, c.knob), None)
        return self.engine.undo_changes(changes, {imp.ident: imp.pin},
                                        why=restore_why("lifted", f"guard: {why}"))

    def _reset_descendants(self, imp: Imposed, rep: UndoReport, why: str) -> None:
        """Children forked while the loop held imp's values inherited them: put the main
        thread's originals back where a descendant still holds the loop's value (one the
        loop demotes itself is left to its own entry)."""
        if not imp.original:
            return
        eng = self.engine
        parents = eng.parent_map()
        children: dict[int, list[int]] = {}
        for pid, ppid in parents.items():
            children.setdefault(ppid, []).append(pid)
        todo = list(children.get(imp.ident.pid, []))
        seen: set[int] = set()
        held = {i.pid for i in self.imposed}
        while todo:
            pid = todo.pop()
            if pid in seen:
                continue
            seen.add(pid)
            if pid not in held:
                eng.reset_values(pid, imp.original, set(), rep, None, restore_why(
                    "inherited", f"from {imp.ident.pid}, demoted by the guard: {why}"))
            todo.extend(children.get(pid, []))
