"""The classifier's signal order and exclusions, tested once against an in-memory process
table (the Linux backend is tested on its own in tests/linux, and end to end in
tests/daemon)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ainative.core.classifier import Classifier
from ainative.core.rules import load_rules
from ainative.platform.base import SCHED_FIFO, ProcessGone, ProcessInfo, TaskId


@dataclass
class Table:
    """Just the read side of the Backend interface the classifier uses."""

    procs: dict[int, ProcessInfo] = field(default_factory=dict)
    env: dict[int, dict[str, str]] = field(default_factory=dict)
    maps: dict[int, list[str]] = field(default_factory=dict)
    maps_reads: int = 0
    listening: dict[int, list[str]] = field(default_factory=dict)
    socket_reads: int = 0

    def add(self, pid: int, comm: str, *, ppid: int = 100, exe: str | None = None,
            cmdline: list[str] | None = None, env: dict[str, str] | None = None,
            maps: list[str] | None = None, start: int = 0, uid: int = 1000,
            **kw: Any) -> ProcessInfo:
        user = "alice" if uid == 1000 else "root" if uid == 0 else None
        info = ProcessInfo(TaskId(pid, start or 1000 + pid), ppid, comm, exe or f"/usr/bin/{comm}",
                           cmdline or [comm], uid, user, {"0": "/user.slice"}, **kw)
        self.procs[pid] = info
        self.env[pid] = env or {}
        self.maps[pid] = maps or ["/usr/lib/x86_64-linux-gnu/libc.so.6"]
        return info

    def read_process(self, pid: int) -> ProcessInfo:
        if pid not in self.procs:
            raise ProcessGone(pid)
        return self.procs[pid]

    def process_name(self, pid: int) -> str:
        return self.read_process(pid).comm

    def task_id(self, pid: int, tid: int | None = None) -> TaskId:
        return self.read_process(pid).ident

    def environ_value(self, pid: int, name: str) -> str | None:
        return self.env[pid].get(name)

    def mapped_files(self, pid: int) -> list[str]:
        self.maps_reads += 1
        if pid not in self.maps:
            raise ProcessGone(pid)
        return self.maps[pid]

    def listening_sockets(self, pid: int) -> list[str]:
        self.socket_reads += 1
        return self.listening.get(pid, [])

    def is_descendant(self, pid: int, ancestor: int) -> bool:
        cur = self.procs.get(pid)
        while cur is not None and cur.ppid not in (0, 1):
            if cur.ppid == ancestor:
                return True
            cur = self.procs.get(cur.ppid)
        return False


ORT = "/venv/lib/python3.11/site-packages/onnxruntime/capi/libonnxruntime.so.1.20.0"


@pytest.fixture
def table() -> Table:
    t = Table()
    t.add(100, "bash", ppid=1)
    return t


def classifier(t: Table, **kw: Any) -> Classifier:
    return Classifier(t, load_rules(rules_dir=None), self_pid=99, **kw)  # type: ignore[arg-type]


def signal(d: Any, name: str) -> Any:
    return next(s for s in d.signals if s.name == name)


def test_a_runtime_alone_is_batch_and_a_listening_socket_makes_it_serving(table: Table) -> None:
    info = table.add(200, "python3", maps=["/usr/lib/libc.so.6", ORT])
    c = classifier(table)
    d = c.classify(info)
    assert d.cls == "batch"
    lib = signal(d, "library")
    assert lib.matched and "libonnxruntime" in lib.detail
    listen = signal(d, "listen")
    assert not listen.matched and "no listening socket" in listen.detail
    table.listening[200] = ["unix /run/model.sock", "tcp 0.0.0.0:8000"]
    d = c.classify(info)
    assert d.cls == "inference"
    listen = signal(d, "listen")
    assert listen.matched and "unix /run/model.sock" in listen.detail


def test_sockets_are_read_only_for_ai_processes_without_a_declared_class(table: Table) -> None:
    c = classifier(table)
    c.classify(table.add(210, "nginx"))
    c.classify(table.add(211, "llama-server", maps=[ORT]))  # a rule says inference
    assert table.socket_reads == 0
    assert "not needed" in signal(c.classify(table.procs[211]), "listen").detail


def test_bare_cudart_without_the_driver_is_not_an_ai_runtime(table: Table) -> None:
    rt = "/venv/lib/python3.11/site-packages/nvidia/cuda_runtime/lib/libcudart.so.12"
    info = table.add(212, "python3", maps=[rt])
    d = classifier(table).classify(info)
    assert d.cls is None
    lib = signal(d, "library")
    assert not lib.matched and "CUDA is not in use" in lib.detail
    table.maps[212] = [rt, "/usr/lib/x86_64-linux-gnu/libcuda.so.1"]
    assert classifier(table).classify(info).cls == "batch"  # the driver too: CUDA in use


@pytest.mark.parametrize(("uid", "grant", "opted_out"), [
    (1000, "", False),  # a user may not opt out of the demotion the rules give
    (1000, '[access.none]\nusers = [1000]\n', True),
    (0, "", True),  # root may
])
def test_opting_out_of_a_demotion_needs_a_grant(table: Table, tmp_path: Path, uid: int,
                                                 grant: str, opted_out: bool) -> None:
    extra = tmp_path / "g.toml"
    extra.write_text(grant)
    c = Classifier(table, load_rules(rules_dir=None, extra=[str(extra)]),  # type: ignore[arg-type]
                   self_pid=99)
    info = table.add(213, "make", env={"AINATIVE_CLASS": "none"}, uid=uid)
    d = c.classify(info)
    env = signal(d, "env")
    if opted_out:
        assert d.cls is None and d.excluded and "AINATIVE_CLASS=none" in d.excluded
        assert env.matched
    else:
        assert d.cls == "background" and not d.excluded
        assert not env.matched and "[access.none]" in env.detail


def test_anyone_may_opt_out_of_a_boost_or_of_batch(table: Table) -> None:
    c = classifier(table)
    table.listening[214] = ["tcp 0.0.0.0:8000"]
    for pid in (214, 215):
        d = c.classify(table.add(pid, "python3", maps=[ORT], env={"AINATIVE_CLASS": "none"}))
        assert d.cls is None and d.excluded and "opted out" in d.excluded


def test_ignore_tables_exclude_whatever_else_matches(table: Table, tmp_path: Path) -> None:
    extra = tmp_path / "i.toml"
    extra.write_text('[[ignore]]\nname = "alice\'s jobs"\nuser = "alice"\n')
    c = Classifier(table, load_rules(rules_dir=None, extra=[str(extra)]),  # type: ignore[arg-type]
                   self_pid=99)
    info = table.add(216, "llama-server", maps=[ORT], env={"AINATIVE_CLASS": "background"})
    d = c.classify(info)
    assert d.cls is None and d.excluded and "alice's jobs" in d.excluded
    assert "i.toml:1" in d.excluded


def test_plain_process_is_left_alone(table: Table) -> None:
    d = classifier(table).classify(table.add(201, "vim"))
    assert d.cls is None and not d.excluded
    assert not d.matched_signals


def test_precedence_registration_then_env_then_rule_then_library(table: Table) -> None:
    c = classifier(table)
    info = table.add(202, "stress-ng", maps=[ORT], env={"AINATIVE_CLASS": "training"})
    # env beats the rule (stress-ng -> background) and the library (-> inference)
    assert c.classify(info).cls == "training"
    c.registrations[info.ident] = ("background", 0)
    assert c.classify(info).cls == "background"
    del c.registrations[info.ident]
    table.env[202] = {}
    assert c.classify(info).cls == "background"  # the rule beats the library
    table.procs[202] = table.add(202, "python3", maps=[ORT])
    assert c.classify(table.procs[202]).cls == "batch"
    table.listening[202] = ["tcp [::]:9000"]
    assert c.classify(table.procs[202]).cls == "inference"


def test_unknown_env_class_is_ignored_and_said(table: Table) -> None:
    info = table.add(203, "python3", env={"AINATIVE_CLASS": "turbo"})
    d = classifier(table).classify(info)
    assert d.cls is None
    env = next(s for s in d.signals if s.name == "env")
    # Said, without echoing what another user's environment holds.
    assert not env.matched and "not a known class" in env.detail and "turbo" not in env.detail


def test_gpu_process_list_is_a_signal_and_its_failure_is_not_fatal(table: Table) -> None:
    info = table.add(204, "python3")
    assert classifier(table, gpu_pids=lambda: {204}).classify(info).cls == "batch"
    table.listening[204] = ["tcp 0.0.0.0:8000"]
    assert classifier(table, gpu_pids=lambda: {204}).classify(info).cls == "inference"

    def broken() -> set[int]:
        raise RuntimeError("NVML exploded")

    d = classifier(table, gpu_pids=broken).classify(info)
    assert d.cls is None and any("NVML exploded" in s.detail for s in d.signals)


@pytest.mark.parametrize(("pid", "kw", "why"), [
    (1, {}, "PID 1"),
    (205, {"is_kernel_thread": True}, "kernel thread"),
    (99, {}, "daemon itself"),
    (206, {"policy": SCHED_FIFO}, "realtime"),
])
def test_exclusions(table: Table, pid: int, kw: dict[str, Any], why: str) -> None:
    info = table.add(pid, "python3", maps=[ORT], env={"AINATIVE_CLASS": "inference"}, **kw)
    d = classifier(table).classify(info)
    assert d.cls is None and d.excluded and why in d.excluded


def test_scope_limits_to_descendants(table: Table) -> None:
    leader = table.add(300, "leader", maps=[ORT])
    inside = table.add(301, "python3", ppid=300, maps=[ORT])
    outside = table.add(302, "python3", maps=[ORT])
    c = classifier(table, scope_pid=300)
    assert c.classify(inside).cls == "batch"
    d = c.classify(outside)
    assert d.cls is None and "scope" in (d.excluded or "")
    # The scope's root itself is never managed, even when it maps a runtime.
    d = c.classify(leader)
    assert d.cls is None and "root" in (d.excluded or "")


def test_libraries_are_cached_by_identity_and_rechecked_with_backoff(table: Table) -> None:
    now = [0.0]
    c = classifier(table, clock=lambda: now[0])
    info = table.add(400, "python3")
    assert c.classify(info).cls is None
    reads = table.maps_reads
    # Maps are not re-read before the recheck is due...
    now[0] += 0.01
    assert not c.library_recheck_due(info.ident)
    c.classify(info)
    c.classify(info, libraries=False)
    assert table.maps_reads == reads
    # ...and a process that loads onnxruntime later is found once it is.
    table.maps[400] = [ORT]
    now[0] += 100.0
    assert c.library_recheck_due(info.ident)
    assert c.classify(info, libraries=False).cls is None
    assert c.classify(info).cls == "batch"
    assert not c.library_recheck_due(info.ident)  # a runtime found stays the answer
    # A reused PID (new start time) never inherits the old answer.
    reused = table.add(400, "python3", start=99999)
    assert reused.ident != info.ident
    assert c.classify(reused).cls is None


def test_parent_rule_reads_the_parent_name_only_when_a_rule_needs_it(
        table: Table, tmp_path: Path) -> None:
    rules = tmp_path / "r.toml"
    rules.write_text('[[rule]]\nname = "cron jobs"\nparent = "cron"\nclass = "background"\n')
    table.add(500, "cron")
    job = table.add(501, "indexer", ppid=500)
    named: list[int] = []
    real = table.process_name

    def counting(pid: int) -> str:
        named.append(pid)
        return real(pid)

    table.process_name = counting  # type: ignore[method-assign]
    c = Classifier(table, load_rules(rules_dir=None, extra=[str(rules)]),  # type: ignore[arg-type]
                   self_pid=99)
    d = c.classify(job)
    assert d.cls == "background" and named == [500]
    assert any("parent=cron" in s.detail for s in d.signals)
    named.clear()
    assert classifier(table).classify(job).cls is None  # built-in rules: no parent condition
    assert named == []
