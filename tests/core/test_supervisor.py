"""The supervisor and the engine against an in-memory backend: apply, override, undo,
inheritance by threads and children (live and after a crash), PID reuse within one
clock tick, the access policy for registration and the opt-in environment, rule swaps
and table purges. No root needed; the same paths run on the real kernel in tests/daemon.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tests.core.fake_backend import DEFAULTS, ROOT_CG, FakeBackend, FakeProc

from ainative.core.journal import Journal, make_validator
from ainative.core.rules import RuleSet, load_rules, parse_rules_text, validate
from ainative.core.supervisor import Refused, Supervisor, SupervisorConfig
from ainative.platform.base import ProcEvent, TaskId

ORT = "/usr/lib/python3/site-packages/onnxruntime/capi/libonnxruntime.so.1.17"
USER = 4242  # an unprivileged uid no test machine gives to anyone real
LISTEN = ["tcp 0.0.0.0:8000"]


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


# The built-in inference class raises only the I/O priority; these tests follow knobs
# through threads, children, crashes and reloads, so their inference class also raises the
# CPU priority, as an operator whose clients are remote would set it (and background
# uses every demotion knob).
BOOSTING = """
[classes.inference]
nice = -10
cgroup = true
cpu_weight = 10000
[classes.background]
policy = "idle"
cpu_idle = true
"""


def rules(extra: str = "") -> RuleSet:
    rs = load_rules(rules_dir=None)
    parse_rules_text(BOOSTING, "boosting.toml", rs)
    if extra:
        parse_rules_text(extra, "test.toml", rs)
        validate(rs)
    return rs


def make(tmp_path: Path, backend: FakeBackend, extra: str = "",
         scope: int | None = None) -> Supervisor:
    j = Journal(str(tmp_path), validate=make_validator("ainative"))
    return Supervisor(backend, rules(extra), j, SupervisorConfig(scope_pid=scope, self_pid=1),
                      clock=Clock())


def tick(sup: Supervisor, seconds: float, *busy: FakeProc, cpu_share: float = 0.5) -> None:
    """Let ``seconds`` pass in activity ticks; each process in ``busy`` uses cpu_share of
    a CPU meanwhile."""
    clock = sup.clock
    assert isinstance(clock, Clock)
    step = sup.activity.config.interval_s
    end = clock.t + seconds
    while clock.t < end - 1e-9:
        clock.t += step
        for p in busy:
            p.cpu += step * cpu_share
        sup.run_timers()


def server(fb: FakeBackend, comm: str = "server", **kw: Any) -> FakeProc:
    """An ONNX Runtime process that listens: serving, once it is busy."""
    kw.setdefault("maps", [ORT])
    kw.setdefault("listening", list(LISTEN))
    return fb.spawn(comm, **kw)


def serving(tmp_path: Path, fb: FakeBackend, p: FakeProc, extra: str = "") -> Supervisor:
    """A supervisor that has found p serving and seen it busy (its boost applied)."""
    sup = make(tmp_path, fb, extra)
    sup.full_scan()
    tick(sup, 0.5, p)
    m = sup.managed_by_pid(p.pid)
    assert m is not None and m.cls == "inference" and m.active
    return sup


@pytest.fixture
def fb() -> FakeBackend:
    return FakeBackend()


def test_inference_is_applied_to_every_thread_and_undone_on_stop(tmp_path: Path,
                                                                 fb: FakeBackend) -> None:
    p = server(fb, threads=3)
    sup = serving(tmp_path, fb, p)
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
    p = server(fb)
    serving(tmp_path, fb, p)
    knobs = [k for tid, k, _ in fb.writes if tid == p.pid]
    assert knobs.index("cgroup") < knobs.index("nice")


def test_a_manual_change_is_left_alone_and_not_restored(tmp_path: Path,
                                                        fb: FakeBackend) -> None:
    p = server(fb)
    sup = serving(tmp_path, fb, p)
    fb.set_knob(p.pid, "nice", 3)  # a person renices it
    sup.reconcile()
    m = sup.managed_by_pid(p.pid)
    assert m is not None and "nice" in m.overridden
    sup.stop()
    assert fb.value(p.pid, "nice") == 3


def test_threads_created_after_apply_are_restored(tmp_path: Path, fb: FakeBackend) -> None:
    p = server(fb)
    sup = serving(tmp_path, fb, p)
    late = fb.add_thread(p.pid)  # inherits nice -10 from the main thread
    assert fb.value(p.pid, "nice", late) == -10
    sup.stop()
    assert fb.value(p.pid, "nice", late) == 0


def test_child_that_execs_an_unmanaged_program_gets_everything_back(
        tmp_path: Path, fb: FakeBackend) -> None:
    parent = server(fb)
    sup = serving(tmp_path, fb, parent)
    child = server(fb, ppid=parent.pid)  # fork: a copy, same maps and sockets
    sup.on_event(ProcEvent("fork", child.pid, child.pid, parent_pid=parent.pid))
    assert sup.managed_by_pid(child.pid) is not None
    # Not seen busy yet: what it inherited goes back until it is.
    assert fb.value(child.pid, "cgroup") == ROOT_CG and fb.value(child.pid, "nice") == 0
    tick(sup, 0.5, parent, child)
    assert fb.value(child.pid, "cgroup") == {"cpu": "/ainative.inference"}
    child.comm, child.maps, child.listening = "sh", [], []  # exec of an unrelated program
    sup.on_event(ProcEvent("exec", child.pid, child.pid))
    assert sup.managed_by_pid(child.pid) is None
    assert fb.value(child.pid, "nice") == 0
    assert fb.value(child.pid, "cgroup") == ROOT_CG
    sup.stop()
    assert fb.value(parent.pid, "cgroup") == ROOT_CG


def test_unclassified_child_of_a_managed_parent_is_reset_on_fork(
        tmp_path: Path, fb: FakeBackend) -> None:
    parent = server(fb)
    sup = serving(tmp_path, fb, parent)
    child = fb.spawn("helper", ppid=parent.pid)  # inherits nice -10 and the group
    sup.on_event(ProcEvent("fork", child.pid, child.pid, parent_pid=parent.pid))
    assert fb.value(child.pid, "nice") == 0
    assert fb.value(child.pid, "cgroup") == ROOT_CG


def test_after_a_crash_threads_and_children_created_since_are_put_back(
        tmp_path: Path, fb: FakeBackend) -> None:
    parent = server(fb)
    sup = serving(tmp_path, fb, parent)
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
    p = server(fb)
    sup = serving(tmp_path, fb, p)
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
    assert sup.register(p.pid, "inference", USER).cls == "inference"
    assert sup.register(q.pid, "inference", 0).cls == "inference"
    tick(sup, 0.5, p, q)  # a serving class is boosted while busy, registered or not
    assert fb.value(p.pid, "nice") == -10 and fb.value(q.pid, "nice") == -10


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
    p = server(fb)
    sup = serving(tmp_path, fb, p)
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


# --- serving vs batch, activity ---

FAST = '[settings]\nidle_after = "2s"\n'


def test_an_idle_runtime_process_gets_nothing_and_demotes_nothing(tmp_path: Path,
                                                                  fb: FakeBackend) -> None:
    nb = fb.spawn("python3", maps=[ORT])  # imported onnxruntime, then sleeps
    hog = fb.spawn("make")
    sup = make(tmp_path, fb)
    sup.full_scan()
    tick(sup, 3.0)
    m = sup.managed_by_pid(nb.pid)
    assert m is not None and m.cls == "batch"
    assert fb.writes == []  # nothing touched at all
    assert fb.value(hog.pid, "policy") == DEFAULTS["policy"]


def test_serving_is_boosted_only_while_busy_and_background_only_demoted_then(
        tmp_path: Path, fb: FakeBackend) -> None:
    srv = server(fb)
    hog = fb.spawn("make")
    sup = make(tmp_path, fb, FAST)
    sup.full_scan()
    tick(sup, 2.0)  # listening but idle
    assert fb.value(srv.pid, "nice") == 0 and fb.value(hog.pid, "nice") == 0
    clock = sup.clock
    assert isinstance(clock, Clock)
    t0 = clock.t
    while fb.value(srv.pid, "nice") != -10:  # it starts taking requests
        tick(sup, sup.activity.config.interval_s, srv, cpu_share=0.2)
        assert clock.t - t0 <= 1.0, "not boosted within 1 s of getting busy"
    assert fb.value(hog.pid, "nice") == 19 and fb.value(hog.pid, "policy") == [5, 0]
    view = sup.activity_view(TaskId(srv.pid, srv.start))
    assert view is not None and view["busy"] and (view["cpu_percent"] or 0) >= 2.0
    tick(sup, 5.0, srv, cpu_share=0.2)  # still serving: stays boosted
    assert fb.value(srv.pid, "nice") == -10
    t1 = clock.t
    while fb.value(srv.pid, "nice") != 0:  # it stops
        tick(sup, sup.activity.config.interval_s)
        # idle_after after the window stopped showing CPU use, and one sample late at most
        bound = 2.0 + sup.activity.config.window_s + sup.activity.config.interval_s
        assert clock.t - t1 <= bound + 1e-6, "boost not lifted within idle_after"
    assert fb.value(srv.pid, "cgroup") == ROOT_CG
    assert fb.value(hog.pid, "nice") == 0 and fb.value(hog.pid, "policy") == DEFAULTS["policy"]
    m = sup.managed_by_pid(srv.pid)
    assert m is not None and m.cls == "inference" and not m.active


def test_a_batch_process_that_opens_a_listening_socket_becomes_serving(
        tmp_path: Path, fb: FakeBackend) -> None:
    p = fb.spawn("python3", maps=[ORT])
    sup = make(tmp_path, fb)
    sup.full_scan()
    tick(sup, 1.0, p)  # busy, but no socket: batch, untouched
    assert sup.managed_by_pid(p.pid).cls == "batch"  # type: ignore[union-attr]
    assert fb.value(p.pid, "nice") == 0
    p.listening = ["unix /run/model.sock"]
    tick(sup, 1.0, p)
    m = sup.managed_by_pid(p.pid)
    assert m is not None and m.cls == "inference" and m.active
    assert fb.value(p.pid, "nice") == -10


def test_a_runtime_own_socket_is_not_serving(tmp_path: Path, fb: FakeBackend) -> None:
    # Every process that initialises CUDA listens on an abstract @cuda-uvmfd-* socket.
    p = fb.spawn("python3", maps=[ORT], listening=["unix @cuda-uvmfd-4026531836-4711"])
    sup = make(tmp_path, fb)
    sup.full_scan()
    tick(sup, 1.0, p)
    m = sup.managed_by_pid(p.pid)
    assert m is not None and m.cls == "batch"
    listen = next(s for s in m.decision.signals if s.name == "listen")
    assert not listen.matched and "runtime's own socket" in listen.detail
    p.listening.append("tcp 0.0.0.0:8000")  # a real server socket beside it
    tick(sup, 1.0, p)
    assert sup.managed_by_pid(p.pid).cls == "inference"  # type: ignore[union-attr]


def test_opted_out_process_is_never_touched(tmp_path: Path, fb: FakeBackend) -> None:
    p = server(fb, env={"AINATIVE_CLASS": "none"}, uid=USER)
    sup = make(tmp_path, fb)
    sup.full_scan()
    tick(sup, 2.0, p)
    assert sup.managed_by_pid(p.pid) is None
    assert [w for w in fb.writes if w[0] == p.pid] == []
    with pytest.raises(Refused, match="opted out"):
        sup.register(p.pid, "inference", 0)


def test_a_fork_child_classified_batch_gets_what_it_inherited_back(
        tmp_path: Path, fb: FakeBackend) -> None:
    parent = server(fb)
    sup = serving(tmp_path, fb, parent)
    # A worker forked without the listening socket: an AI process, not serving.
    child = fb.spawn("worker", ppid=parent.pid, maps=[ORT])
    assert fb.value(child.pid, "nice") == -10  # inherited
    sup.on_event(ProcEvent("fork", child.pid, child.pid, parent_pid=parent.pid))
    m = sup.managed_by_pid(child.pid)
    assert m is not None and m.cls == "batch"
    assert fb.value(child.pid, "nice") == 0 and fb.value(child.pid, "cgroup") == ROOT_CG


def test_the_slice_is_set_on_every_thread_and_undone_and_left_out_where_missing(
        tmp_path: Path, fb: FakeBackend) -> None:
    p = server(fb, threads=2)
    sup = serving(tmp_path, fb, p, '[classes.inference]\nslice = "0.1ms"\n')
    assert all(fb.value(p.pid, "slice", t) == 100_000 for t in p.threads)
    sup.stop()
    assert all(fb.value(p.pid, "slice", t) == 0 for t in p.threads)
    # A kernel without custom slices: the knob is left out, the reason kept for explain.
    fb2 = FakeBackend()
    fb2.missing = {"slice": "this kernel has no custom EEVDF slices (Linux 6.12+)"}
    q = server(fb2)
    sup2 = serving(tmp_path / "2", fb2, q, '[classes.inference]\nslice = "0.1ms"\n')
    m = sup2.managed_by_pid(q.pid)
    assert m is not None and "slice" not in m.targets and "Linux 6.12" in m.errors["slice"]
    assert fb2.value(q.pid, "slice") == 0
    assert fb2.value(q.pid, "nice") == -10  # the rest of the class still applies
