"""The supervisor and the engine against an in-memory backend: apply, override, undo,
inheritance by threads and children (live and after a crash), PID reuse within one
clock tick, the access policy for registration and the opt-in environment, rule swaps
and table purges. No root needed; the same paths run on the real kernel in tests/daemon.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.core.fake_backend import DEFAULTS, ROOT_CG, FakeBackend

from ainative.core.journal import Journal, make_validator
from ainative.core.rules import RuleSet, load_rules, parse_rules_text, validate
from ainative.core.supervisor import Refused, Supervisor, SupervisorConfig
from ainative.platform.base import ProcEvent, TaskId

ORT = "/usr/lib/python3/site-packages/onnxruntime/capi/libonnxruntime.so.1.17"
USER = 4242  # an unprivileged uid no test machine gives to anyone real


def rules(extra: str = "") -> RuleSet:
    rs = load_rules(rules_dir=None)
    if extra:
        parse_rules_text(extra, "test.toml", rs)
        validate(rs)
    return rs


def make(tmp_path: Path, backend: FakeBackend, extra: str = "",
         scope: int | None = None) -> Supervisor:
    j = Journal(str(tmp_path), validate=make_validator("ainative"))
    return Supervisor(backend, rules(extra), j, SupervisorConfig(scope_pid=scope, self_pid=1))


@pytest.fixture
def fb() -> FakeBackend:
    return FakeBackend()


def test_inference_is_applied_to_every_thread_and_undone_on_stop(tmp_path: Path,
                                                                 fb: FakeBackend) -> None:
    p = fb.spawn("server", threads=3, maps=[ORT])
    sup = make(tmp_path, fb)
    sup.full_scan()
    m = sup.managed_by_pid(p.pid)
    assert m is not None and m.cls == "inference" and m.active
    for tid in p.threads:
        assert fb.value(p.pid, "nice", tid) == -10
    assert fb.value(p.pid, "cgroup") == {"cpu": "/ainative.inference"}
    sup.stop()
    for tid in p.threads:
        assert fb.value(p.pid, "nice", tid) == DEFAULTS["nice"]
    assert fb.value(p.pid, "cgroup") == ROOT_CG
    assert "/ainative.inference" not in fb.groups  # empty group removed


def test_cgroup_is_moved_before_thread_knobs(tmp_path: Path, fb: FakeBackend) -> None:
    """On 6.1 a move into a cpuset-enabled group resets affinity: knobs go on after it."""
    p = fb.spawn("server", maps=[ORT])
    make(tmp_path, fb).full_scan()
    knobs = [k for tid, k, _ in fb.writes if tid == p.pid]
    assert knobs.index("cgroup") < knobs.index("nice")


def test_a_manual_change_is_left_alone_and_not_restored(tmp_path: Path,
                                                        fb: FakeBackend) -> None:
    p = fb.spawn("server", maps=[ORT])
    sup = make(tmp_path, fb)
    sup.full_scan()
    fb.set_knob(p.pid, "nice", 3)  # a person renices it
    sup.reconcile()
    m = sup.managed_by_pid(p.pid)
    assert m is not None and "nice" in m.overridden
    sup.stop()
    assert fb.value(p.pid, "nice") == 3


def test_threads_created_after_apply_are_restored(tmp_path: Path, fb: FakeBackend) -> None:
    p = fb.spawn("server", maps=[ORT])
    sup = make(tmp_path, fb)
    sup.full_scan()
    late = fb.add_thread(p.pid)  # inherits nice -10 from the main thread
    assert fb.value(p.pid, "nice", late) == -10
    sup.stop()
    assert fb.value(p.pid, "nice", late) == 0


def test_child_that_execs_an_unmanaged_program_gets_everything_back(
        tmp_path: Path, fb: FakeBackend) -> None:
    parent = fb.spawn("server", maps=[ORT])
    sup = make(tmp_path, fb)
    sup.full_scan()
    child = fb.spawn("server", ppid=parent.pid, maps=[ORT])  # fork: a copy, same maps
    sup.on_event(ProcEvent("fork", child.pid, child.pid, parent_pid=parent.pid))
    assert sup.managed_by_pid(child.pid) is not None
    assert fb.value(child.pid, "cgroup") == {"cpu": "/ainative.inference"}
    child.comm, child.maps = "sh", []  # exec of an unrelated program
    sup.on_event(ProcEvent("exec", child.pid, child.pid))
    assert sup.managed_by_pid(child.pid) is None
    assert fb.value(child.pid, "nice") == 0
    assert fb.value(child.pid, "cgroup") == ROOT_CG
    sup.stop()
    assert fb.value(parent.pid, "cgroup") == ROOT_CG


def test_unclassified_child_of_a_managed_parent_is_reset_on_fork(
        tmp_path: Path, fb: FakeBackend) -> None:
    parent = fb.spawn("server", maps=[ORT])
    sup = make(tmp_path, fb)
    sup.full_scan()
    child = fb.spawn("helper", ppid=parent.pid)  # inherits nice -10 and the group
    sup.on_event(ProcEvent("fork", child.pid, child.pid, parent_pid=parent.pid))
    assert fb.value(child.pid, "nice") == 0
    assert fb.value(child.pid, "cgroup") == ROOT_CG


def test_after_a_crash_threads_and_children_created_since_are_put_back(
        tmp_path: Path, fb: FakeBackend) -> None:
    parent = fb.spawn("server", maps=[ORT])
    sup = make(tmp_path, fb)
    sup.full_scan()
    sup.engine.journal.shutdown()  # kill -9: nothing undone
    late = fb.add_thread(parent.pid)
    child = fb.spawn("worker", ppid=parent.pid)  # nobody saw this fork
    grandchild = fb.spawn("tool", ppid=child.pid)
    assert fb.value(grandchild.pid, "nice") == -10
    sup2 = make(tmp_path, fb)
    rep = sup2.recover()
    assert rep is not None and rep.undone >= 2 and rep.inherited >= 4
    for pid, tid in ((parent.pid, parent.pid), (parent.pid, late), (child.pid, child.pid),
                     (grandchild.pid, grandchild.pid)):
        assert fb.value(pid, "nice", tid) == 0, (pid, tid)
    for pid in (parent.pid, child.pid, grandchild.pid):
        assert fb.value(pid, "cgroup") == ROOT_CG
    assert not fb.groups


def test_pid_reused_within_the_same_tick_is_never_touched(tmp_path: Path,
                                                          fb: FakeBackend) -> None:
    p = fb.spawn("server", maps=[ORT])
    sup = make(tmp_path, fb)
    sup.full_scan()
    imposter = fb.reuse_pid(p.pid)  # same pid, same start time, another process
    imposter.threads[p.pid].knobs["nice"] = -10  # happens to hold the value we wrote
    imposter.cgroup = {"cpu": "/ainative.inference"}
    writes = len(fb.writes)
    sup.reconcile()
    sup.stop()
    assert fb.value(p.pid, "nice") == -10  # not "restored" to the old process's 0
    assert [w for w in fb.writes[writes:] if w[0] == p.pid and w[1] == "nice"] == []


def test_a_user_cannot_register_into_a_class_that_raises_priority(
        tmp_path: Path, fb: FakeBackend) -> None:
    p = fb.spawn("mine", uid=USER)
    sup = make(tmp_path, fb)
    with pytest.raises(Refused, match="inference"):
        sup.register(p.pid, "inference", USER)
    assert fb.value(p.pid, "nice") == 0
    m = sup.register(p.pid, "background", USER)  # lowering their own priority is fine
    assert m.cls == "background"


def test_a_user_cannot_register_someone_elses_process(tmp_path: Path,
                                                      fb: FakeBackend) -> None:
    p = fb.spawn("theirs", uid=USER + 1)
    with pytest.raises(Refused, match="belongs to uid"):
        make(tmp_path, fb).register(p.pid, "background", USER)


def test_a_grant_lets_that_user_register_and_root_always_may(tmp_path: Path,
                                                             fb: FakeBackend) -> None:
    p = fb.spawn("mine", uid=USER)
    q = fb.spawn("other", uid=USER + 1)
    sup = make(tmp_path, fb, f"[access.inference]\nusers = [{USER}]\n")
    assert sup.register(p.pid, "inference", USER).active
    assert fb.value(p.pid, "nice") == -10
    assert sup.register(q.pid, "inference", 0).active


def test_env_opt_in_goes_through_the_same_access_policy(tmp_path: Path,
                                                        fb: FakeBackend) -> None:
    fifo = ('[classes.rt]\npolicy = "fifo"\nrt_priority = 50\n'
            '[classes.rtio]\nioprio = "rt:0"\n')
    a = fb.spawn("a", uid=USER, env={"AINATIVE_CLASS": "rt"})
    b = fb.spawn("b", uid=USER, env={"AINATIVE_CLASS": "rtio"})
    c = fb.spawn("c", uid=USER, env={"AINATIVE_CLASS": "inference"})
    d = fb.spawn("d", uid=USER, env={"AINATIVE_CLASS": "background"})
    r = fb.spawn("r", uid=0, env={"AINATIVE_CLASS": "rt"})
    sup = make(tmp_path, fb, fifo)
    sup.full_scan()
    for p in (a, b, c):
        assert sup.managed_by_pid(p.pid) is None, p.comm
    assert fb.value(a.pid, "policy") == [0, 0]
    assert fb.value(b.pid, "ioprio") == DEFAULTS["ioprio"]
    assert sup.managed_by_pid(d.pid) is not None
    assert fb.value(r.pid, "policy") == [1, 50]
    env = next(s for s in sup.decide(a.pid).signals if s.name == "env")
    assert not env.matched and "refused" in env.detail


def test_reload_retargets_processes_already_managed(tmp_path: Path, fb: FakeBackend) -> None:
    p = fb.spawn("server", maps=[ORT])
    sup = make(tmp_path, fb)
    sup.full_scan()
    assert fb.value(p.pid, "nice") == -10
    sup.swap_rules(rules("[classes.inference]\nnice = -5\n"))
    assert fb.value(p.pid, "nice") == -5
    sup.stop()
    assert fb.value(p.pid, "nice") == 0


def test_exit_purges_every_table_entry(tmp_path: Path, fb: FakeBackend) -> None:
    sup = make(tmp_path, fb)
    for _ in range(200):
        p = fb.spawn("short")
        sup.on_event(ProcEvent("exec", p.pid, p.pid))
        fb.exit(p.pid)
        sup.on_event(ProcEvent("exit", p.pid, p.pid))
    assert not sup.classifier._libs and not sup._waiting


def test_scope_excludes_everything_outside_it(tmp_path: Path, fb: FakeBackend) -> None:
    root = fb.spawn("runner")
    inside = fb.spawn("server", ppid=root.pid, maps=[ORT])
    outside = fb.spawn("server", maps=[ORT])
    sup = make(tmp_path, fb, scope=root.pid)
    sup.full_scan()
    assert sup.managed_by_pid(inside.pid) is not None
    assert sup.managed_by_pid(outside.pid) is None
    assert sup.managed_by_pid(root.pid) is None


def test_forged_journal_records_are_refused_on_replay(tmp_path: Path, fb: FakeBackend) -> None:
    victim = fb.spawn("victim")
    ident = TaskId(victim.pid, victim.start)
    j = Journal(str(tmp_path))
    j.record([(ident, ident, "policy", [1, 50], [0, 0]),       # undo would grant FIFO
              (ident, ident, "cgroup", {"cpu": "/"}, {"cpu": "/../../x"}),
              (ident, ident, "nice", 0, 0)])                   # fine
    j.shutdown()
    sup = make(tmp_path, fb)
    assert sup.engine.journal is not None and sup.engine.journal.unusable_count == 2
    sup.recover()
    assert fb.value(victim.pid, "policy") == [0, 0]
