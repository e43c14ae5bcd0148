"""The Windows backend against a real Windows CPython process under Wine (API contract:
the calls succeed and values read back; see WINDOWS.md for what Wine only stores).

A real Windows Python child imports onnxruntime and runs a model; the backend must find
it by its loaded modules, the unchanged core (rules, classifier, supervisor, engine,
journal) must classify it and set its priority class, thread priorities and affinity,
and every change must come back on restore and after a crash. Affinity is the one knob
Wine really applies: the Linux side (tests/winhost/linux_responder.py) reads the child's
Cpus_allowed_list from /proc. Run by scripts/windows-tests, never by the Linux pytest.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from winhelp import ORT_CHILD, Child, linux_side

from ainative.core.journal import Journal, make_validator
from ainative.core.rules import load_rules, parse_rules_text, validate
from ainative.core.signatures import match_libraries
from ainative.core.supervisor import Supervisor, SupervisorConfig
from ainative.platform import get_platform
from ainative.platform.windows.backend import WindowsBackend

pytestmark = pytest.mark.skipif(sys.platform != "win32", reason="needs a Windows Python")

# A class that sets every Windows knob, chosen by the child's unique marker.
RULES = """
[classes.winserve]
priority_class = "high"
thread_priority = "highest"
affinity = "0"
[[rule]]
name = "the test's child"
cmdline = "{marker}"
class = "winserve"
"""


@pytest.fixture
def child(tmp_path: Path) -> Iterator[Child]:
    c = Child(tmp_path, ORT_CHILD)
    try:
        assert c.line() == "ready"
        yield c
    finally:
        c.close()


@pytest.fixture
def backend() -> WindowsBackend:
    b = get_platform().backend
    assert isinstance(b, WindowsBackend)
    return b


def _supervisor(tmp_path: Path, backend: WindowsBackend, marker: str
                ) -> tuple[Supervisor, Journal]:
    rs = load_rules(rules_dir=None)
    parse_rules_text(RULES.format(marker=marker), "win.toml", rs)
    validate(rs)
    j = Journal(str(tmp_path / "state"), validate=make_validator("ainative"))
    # Only this test's descendants may be touched.
    return Supervisor(backend, rs, j, SupervisorConfig(scope_pid=os.getpid())), j


def _values(backend: WindowsBackend, pid: int) -> dict[str, object]:
    """Every knob as Windows reads it back now: the class once, each thread's priority
    and affinity."""
    tids = backend.list_threads(pid)
    return {"priority_class": backend.get_knob(pid, "priority_class"),
            "thread_priority": sorted({backend.get_knob(t, "thread_priority") for t in tids}),
            "affinity": sorted({tuple(backend.get_knob(t, "affinity")) for t in tids}),
            "threads": len(tids)}


def test_the_backend_finds_an_onnxruntime_process_by_its_loaded_modules(
        child: Child, backend: WindowsBackend) -> None:
    assert child.pid in backend.list_pids()
    info = backend.read_process(child.pid)
    assert info.ident == backend.task_id(child.pid)
    assert info.ppid == os.getpid()
    assert info.comm == "python" and info.exe and info.exe.lower().endswith("python.exe")
    assert child.marker in " ".join(info.cmdline)
    mods = backend.mapped_files(child.pid)
    found = match_libraries(mods)
    # The wheel links the runtime into its .pyd and never loads onnxruntime.dll.
    assert found["onnxruntime"].lower().endswith(".pyd"), found
    assert backend.is_descendant(child.pid, os.getpid())
    assert backend.list_threads(child.pid)[0] == child.pid  # the pid names the main thread
    assert len(backend.list_threads(child.pid)) >= 2


def test_the_built_in_rules_classify_it_by_its_loaded_runtime(
        child: Child, backend: WindowsBackend) -> None:
    """No rule names the child: the unchanged classifier sees ONNX Runtime in its loaded
    modules and, as it listens on nothing, makes it batch (an AI process that serves
    nothing). (Its listening sockets cannot be shown under Wine 8, whose TCP table gives
    every row owning pid 0.)"""
    from ainative.core.classifier import Classifier

    rs = load_rules(rules_dir=None)
    d = Classifier(backend, rs, scope_pid=os.getpid()).classify(
        backend.read_process(child.pid))
    lib = [s for s in d.matched_signals if s.name == "library"]
    assert d.cls == "batch" and lib and "onnxruntime" in lib[0].detail, d.to_json()


def test_the_core_classifies_applies_and_restores_every_windows_knob(
        child: Child, backend: WindowsBackend, tmp_path: Path) -> None:
    before = _values(backend, child.pid)
    assert before["priority_class"] == "normal"
    linux_before = linux_side("before", child.marker)
    sup, journal = _supervisor(tmp_path, backend, child.marker)
    sup.examine(child.pid)
    m = sup.managed_by_pid(child.pid)
    assert m is not None and m.cls == "winserve", sup.decide(child.pid)
    assert not m.errors, m.errors
    during = _values(backend, child.pid)
    assert during["priority_class"] == "high"
    assert during["thread_priority"] == [2]  # THREAD_PRIORITY_HIGHEST on every thread
    assert during["affinity"] == [(0,)]
    linux = linux_side("applied", child.marker, cpus="0")
    if linux is not None:
        # Wine applies thread affinity for real: the Linux main thread follows, and so
        # does one Linux task per Windows thread set.
        assert linux["main_cpus"] == "0", linux
        assert linux["task_cpus"].count("0") >= during["threads"], linux
    # Every change was journaled before it was made.
    knobs = {c.knob for c in journal.in_force()}
    assert knobs == {"priority_class", "thread_priority", "affinity"}
    rep = sup.stop()
    assert rep.failed == 0 and rep.skipped_changed == 0, rep.details
    after = _values(backend, child.pid)
    assert after == before
    assert not Journal(str(tmp_path / "state")).in_force()
    linux = linux_side("restored", child.marker)
    if linux is not None and linux_before is not None:
        assert linux["main_cpus"] == linux_before["main_cpus"], (linux, linux_before)
        assert linux["main_cpus"] != "0" or linux_before["main_cpus"] == "0"


def test_a_crashed_daemon_s_changes_come_back_at_the_next_start(
        child: Child, backend: WindowsBackend, tmp_path: Path) -> None:
    before = _values(backend, child.pid)
    sup, journal = _supervisor(tmp_path, backend, child.marker)
    sup.examine(child.pid)
    assert _values(backend, child.pid)["priority_class"] == "high"
    # A crash: the supervisor is dropped without restoring; its journal stays.
    journal.shutdown()
    del sup
    again, _j = _supervisor(tmp_path, WindowsBackend(), child.marker)
    rep = again.recover()
    assert rep is not None and rep.undone >= 3 and rep.failed == 0, rep
    assert _values(backend, child.pid) == before
    again.stop()


def test_a_value_someone_else_sets_is_left_alone(
        child: Child, backend: WindowsBackend, tmp_path: Path) -> None:
    sup, _j = _supervisor(tmp_path, backend, child.marker)
    sup.examine(child.pid)
    # A person lowers the class by hand after ainative raised it.
    backend.api.set_priority_class(child.pid, 0x20)  # NORMAL_PRIORITY_CLASS
    sup.reconcile()
    m = sup.managed_by_pid(child.pid)
    assert m is not None and "priority_class" in m.overridden
    sup.stop()
    assert backend.get_knob(child.pid, "priority_class") == "normal"


def test_realtime_reads_back_as_realtime_for_an_administrator(
        child: Child, backend: WindowsBackend) -> None:
    # Wine runs everything as Administrator; the downgrade to HIGH for other users is
    # tested with a fake boundary (tests/winhost/test_windows_fake_boundary.py).
    assert backend.api.is_admin()
    backend.set_knob(child.pid, "priority_class", "realtime")
    try:
        assert backend.get_knob(child.pid, "priority_class") == "realtime"
        assert backend.read_process(child.pid).policy != 0  # someone's realtime: hands off
    finally:
        backend.set_knob(child.pid, "priority_class", "normal")


def test_pin_notices_the_exit_and_a_gone_process_is_process_gone(
        child: Child, backend: WindowsBackend) -> None:
    from ainative.platform.base import ProcessGone

    ident = backend.task_id(child.pid)
    pin = backend.pin(ident)
    assert pin is not None and backend.pinned_alive(pin)
    child.close()
    assert not backend.pinned_alive(pin)
    backend.unpin(pin)
    with pytest.raises(ProcessGone):
        backend.pin(ident)


def test_probe_and_event_source(child: Child) -> None:
    plat = get_platform(poll_interval=0.1)
    mechs = {m.name: m for m in plat.probe()}
    assert mechs["priority_class"].available and mechs["affinity"].available
    assert not mechs["cgroups"].available
    src = plat.open_events()
    try:
        child.close()
        import select
        import time

        seen: list[str] = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(
                e == f"exit {child.pid}" for e in seen):
            select.select([src.fileno()], [], [], 0.5)
            seen += [f"{e.kind} {e.pid}" for e in src.read()]
        assert f"exit {child.pid}" in seen
    finally:
        src.close()
