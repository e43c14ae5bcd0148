"""The engine's telemetry events against the in-memory backend: one PolicyApplied per
knob write the backend saw, one PolicyRestored per value put back (restored, lifted,
inherited) or let go (override), an AiTaskRegistered per classification, none in a dry
run, and a failing sink costs events, never a policy action. No root needed; the daemon
end of it (counters a real Prometheus reads) is tests/daemon/test_daemon_metrics.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

from tests.core.fake_backend import DEFAULTS, FakeBackend
from tests.core.test_supervisor import FAST, Clock, rules, server, tick

from ainative.core.journal import Journal, make_validator
from ainative.core.knobs import describe
from ainative.core.supervisor import Supervisor, SupervisorConfig
from ainative.platform.base import ProcEvent
from ainative.telemetry.events import (
    AiTaskRegistered,
    Event,
    PolicyApplied,
    PolicyRestored,
)
from ainative.telemetry.sink import Fanout, restore_action

E = TypeVar("E", AiTaskRegistered, PolicyApplied, PolicyRestored)


class ListSink:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def emit(self, ev: Event, /) -> None:
        self.events.append(ev)

    def of(self, kind: type[E]) -> list[E]:
        return [e for e in self.events if isinstance(e, kind)]


class BrokenSink:
    def emit(self, ev: Event, /) -> None:
        raise RuntimeError("disk full")


def make(tmp_path: Path, fb: FakeBackend, sink: ListSink | Fanout, extra: str = "",
         dry_run: bool = False) -> Supervisor:
    j = Journal(str(tmp_path), validate=make_validator("ainative"))
    return Supervisor(fb, rules(extra), j, SupervisorConfig(self_pid=1, dry_run=dry_run),
                      clock=Clock(), sink=sink)


def busy_server(tmp_path: Path, fb: FakeBackend, sink: ListSink | Fanout,
                extra: str = "") -> tuple[Supervisor, int]:
    p = server(fb, threads=3)
    sup = make(tmp_path, fb, sink, extra)
    sup.full_scan()
    tick(sup, 0.5, p)
    m = sup.managed_by_pid(p.pid)
    assert m is not None and m.active
    return sup, p.pid


def restored(sink: ListSink, action: str) -> list[PolicyRestored]:
    return [e for e in sink.of(PolicyRestored) if restore_action(e.why) == action]


def test_each_knob_write_is_one_policy_applied_event(tmp_path: Path) -> None:
    fb, sink = FakeBackend(), ListSink()
    _, pid = busy_server(tmp_path, fb, sink)
    applied = sink.of(PolicyApplied)
    assert {(e.tid, e.knob) for e in applied} == {(tid, k) for tid, k, _ in fb.writes}
    assert len(applied) == len(fb.writes)
    for e in applied:
        assert e.pid == pid and e.cls == "inference" and e.ts_ns > 0
        assert e.new == describe(e.knob, fb.value(pid, e.knob, e.tid))
    nice = next(e for e in applied if e.knob == "nice")
    assert nice.old == describe("nice", DEFAULTS["nice"]) and nice.new == describe("nice", -10)
    reg = sink.of(AiTaskRegistered)
    assert [(e.pid, e.cls, e.comm) for e in reg] == [(pid, "inference", "server")]
    assert reg[0].signals  # the matched signals' details


def test_stop_restores_each_write_and_says_why(tmp_path: Path) -> None:
    fb, sink = FakeBackend(), ListSink()
    sup, pid = busy_server(tmp_path, fb, sink)
    writes = {(tid, k) for tid, k, _ in fb.writes}
    sup.stop()
    back = restored(sink, "restored")
    assert {(e.tid, e.knob) for e in back} == writes
    for e in back:
        assert e.pid == pid and e.why == "restored: daemon stopping"
        assert e.value == describe(e.knob, fb.value(pid, e.knob, e.tid))


def test_a_serving_process_going_idle_is_lifted(tmp_path: Path) -> None:
    fb, sink = FakeBackend(), ListSink()
    sup, pid = busy_server(tmp_path, fb, sink, FAST)
    n = len(sink.of(PolicyApplied))
    tick(sup, 10.0)  # no CPU use: idle after 2 s
    lifted = restored(sink, "lifted")
    assert len(lifted) == n and all(e.why.startswith("lifted: idle") for e in lifted)
    assert fb.value(pid, "nice") == DEFAULTS["nice"]


def test_a_manual_change_is_an_override_event_carrying_the_persons_value(
        tmp_path: Path) -> None:
    fb, sink = FakeBackend(), ListSink()
    sup, pid = busy_server(tmp_path, fb, sink)
    fb.set_knob(pid, "nice", 3)  # a person renices the main thread
    sup.reconcile()
    over = restored(sink, "override")
    assert [(e.pid, e.tid, e.knob, e.value) for e in over] == [
        (pid, pid, "nice", describe("nice", 3))]
    sup.stop()
    assert not [e for e in restored(sink, "restored") if (e.tid, e.knob) == (pid, "nice")]


def test_a_child_that_inherited_is_put_back_as_inherited(tmp_path: Path) -> None:
    fb, sink = FakeBackend(), ListSink()
    sup, pid = busy_server(tmp_path, fb, sink)
    child = fb.spawn("helper", ppid=pid)  # inherits nice -10 and the group
    sup.on_event(ProcEvent("fork", child.pid, child.pid, parent_pid=pid))
    inh = restored(sink, "inherited")
    assert {(e.pid, e.knob) for e in inh} >= {(child.pid, "nice"), (child.pid, "cgroup")}
    assert all(e.why == f"inherited: from managed parent {pid}" for e in inh)


def test_a_dry_run_emits_classifications_but_no_writes(tmp_path: Path) -> None:
    fb, sink = FakeBackend(), ListSink()
    p = server(fb)
    sup = make(tmp_path, fb, sink, dry_run=True)
    sup.full_scan()
    tick(sup, 0.5, p)
    sup.stop()
    assert fb.writes == []
    assert not sink.of(PolicyApplied) and not sink.of(PolicyRestored)
    assert len(sink.of(AiTaskRegistered)) == 1


def test_a_failing_sink_costs_events_never_a_policy_action(tmp_path: Path) -> None:
    fb, good = FakeBackend(), ListSink()
    fan = Fanout(BrokenSink(), good)
    hog = fb.spawn("stress-ng")
    sup = make(tmp_path, fb, fan, '[classes.background]\nonly_while_serving_active = false\n')
    sup.full_scan()
    assert fb.value(hog.pid, "nice") == 19  # applied although a sink raised
    assert good.of(PolicyApplied) and fan.failures["BrokenSink"] == len(good.events)
