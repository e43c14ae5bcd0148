"""The platform seam (get_platform), the event source inside PID and user namespaces
(for real, under unshare), pidfd pins on processes this test starts, and the probe of a
daemon that runs without root (for real, under setpriv)."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import ainative
from ainative.platform import Platform, get_platform
from ainative.platform.base import EventSource, Mechanism, MechanismUnavailable, ProcessGone
from ainative.platform.linux import procfs
from ainative.platform.linux.backend import LinuxBackend

ROOT = os.geteuid() == 0
SRC = Path(ainative.__file__).parent
needs_unshare = pytest.mark.skipif(not ROOT or shutil.which("unshare") is None,
                                   reason="new namespaces need root and util-linux unshare")


# --- the seam ---


def test_get_platform_picks_linux_once() -> None:
    p = get_platform(cgroup_root="ainative-test-seam", poll_interval=0.05)
    assert isinstance(p, Platform) and p.name == "linux" and p.backend.name == "linux"
    with pytest.raises(AttributeError):
        p.name = "other"  # type: ignore[misc]  # frozen
    src: EventSource = p.open_events()
    try:
        assert src.name in ("netlink", "poll") and src.overruns == 0
        assert (src.fallback_reason is None) == (src.name == "netlink")
        assert isinstance(src.fileno(), int) and isinstance(src.read(), list)
    finally:
        src.close()
    mechs = p.probe()
    assert mechs and all(isinstance(m, Mechanism) for m in mechs)


def test_another_platform_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    with pytest.raises(MechanismUnavailable, match=r"^ainative has no backend for darwin yet$"):
        get_platform()


# daemon/server.py still imports the Linux backend directly until it moves to get_platform().
_NOT_YET_SWITCHED: set[str] = set()


def test_nothing_outside_platform_imports_the_linux_package() -> None:
    offenders = []
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC).as_posix()
        if rel.startswith("platform/") or rel in _NOT_YET_SWITCHED:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n == "ainative.platform.linux" or n.startswith("ainative.platform.linux.")
                   for n in names):
                offenders.append(f"{rel}:{node.lineno}")
    assert offenders == []


# --- namespaces ---

_OPEN = ("import json; from ainative.platform import get_platform; "
         "s = get_platform().open_events(); "
         "print(json.dumps([s.name, s.fallback_reason])); s.close()")


def _in_namespace(flags: list[str], code: str, timeout: float = 60) -> str:
    r = subprocess.run(["unshare", *flags, sys.executable, "-c", code], capture_output=True,
                       text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    return r.stdout


@needs_unshare
def test_in_a_pid_namespace_the_source_is_the_poller_and_says_why() -> None:
    name, reason = json.loads(_in_namespace(["--pid", "--fork", "--mount-proc"], _OPEN))
    assert name == "poll"
    assert reason == ("in a non-initial PID namespace the process connector delivers no "
                      "events; polling /proc every 0.5 s")


@needs_unshare
def test_a_pid_namespace_seen_through_the_hosts_proc_is_recognised_too() -> None:
    # Without --mount-proc, /proc is the host's and NSpid lists two ids.
    out = _in_namespace(["--pid", "--fork"], "import json; from ainative.platform.linux "
                        "import procfs; print(json.dumps([procfs.nested_namespace(), "
                        "procfs.read_status('self')['NSpid'].split()]))")
    nested, nspid = json.loads(out)
    assert nested == "PID" and len(nspid) == 2 and nspid[1] == "1"
    # There /proc numbers processes as the host does, the syscalls as the namespace does:
    # the platform refuses rather than renice whatever the host's pid N is.
    out = _in_namespace(["--pid", "--fork"], "from ainative.platform import get_platform\n"
                        "try:\n    get_platform()\nexcept Exception as e:\n"
                        "    print(type(e).__name__, e)")
    assert out.startswith("MechanismUnavailable /proc belongs to another PID namespace "
                          "(it shows this process as pid ")
    assert out.rstrip().endswith("not 1); mount a /proc for this namespace")


@needs_unshare
def test_in_a_user_namespace_the_source_is_the_poller_and_says_why() -> None:
    name, reason = json.loads(_in_namespace(["--user", "--map-root-user"], _OPEN))
    assert name == "poll"
    assert reason.startswith("in a non-initial user namespace the process connector")


def test_the_initial_namespaces_are_recognised() -> None:
    if os.readlink("/proc/self/ns/pid") != f"pid:[{procfs.PROC_PID_INIT_INO}]":
        pytest.skip("this test itself runs in a nested PID namespace")
    expected = None
    if procfs.parse_uid_map(Path("/proc/self/uid_map").read_text()) != [(0, 0, 4294967295)]:
        expected = "user"
    if len(procfs.read_status("self").get("NSpid", "").split()) > 1:
        expected = "PID"
    assert procfs.nested_namespace() == expected


_POLL_IN_NS = r"""
import json, subprocess, time
from ainative.platform.linux.connector import PollSource
src = PollSource(0.05, reason="test")
p = subprocess.Popen(["/bin/sh", "-c", "read x; exec /bin/sleep 5"], stdin=subprocess.PIPE)
seen = []
deadline = time.monotonic() + 5
while time.monotonic() < deadline and {"fork", "exec"} - {k for k, _ in seen}:
    time.sleep(0.05)
    seen += [(e.kind, e.pid) for e in src.read() if e.pid == p.pid]
p.stdin.write(b"go\n"); p.stdin.flush()
later = []
deadline = time.monotonic() + 5
while time.monotonic() < deadline and not later:
    time.sleep(0.05)
    later = [e.kind for e in src.read() if e.pid == p.pid]
p.kill(); p.wait()
gone = []
deadline = time.monotonic() + 5
while time.monotonic() < deadline and not gone:
    time.sleep(0.05)
    gone = [e.kind for e in src.read() if e.pid == p.pid]
src.close()
print(json.dumps({"pid": p.pid, "first": sorted(k for k, _ in seen), "later": later,
                  "gone": gone}))
"""


@needs_unshare
def test_inside_a_pid_namespace_the_poller_sees_fork_exec_and_exit() -> None:
    got = json.loads(_in_namespace(["--pid", "--fork", "--mount-proc"], _POLL_IN_NS))
    assert got["pid"] < 100  # the namespace's own numbering: it really ran inside
    assert got["first"] == ["exec", "fork"]
    assert got["later"] == ["exec"]  # sh became sleep
    assert got["gone"] == ["exit"]


# --- pins ---


@pytest.fixture
def backend() -> LinuxBackend:
    return LinuxBackend(cgroup_root=f"ainative-test-pin-{os.getpid()}")


def _open_fds() -> set[int]:
    return {int(n) for n in os.listdir("/proc/self/fd")}


def test_pin_follows_the_process_until_it_exits(backend: LinuxBackend) -> None:
    p = subprocess.Popen(["sleep", "30"])
    try:
        pin = backend.pin(backend.task_id(p.pid))
        assert pin is not None and not os.get_inheritable(pin)
        assert backend.pinned_alive(pin)
        p.kill()
        deadline = time.monotonic() + 3
        while backend.pinned_alive(pin) and time.monotonic() < deadline:
            time.sleep(0.01)
        # Exited (a zombie not yet reaped counts): its PID may be reused from now on.
        assert not backend.pinned_alive(pin)
        backend.unpin(pin)
        assert not backend.pinned_alive(pin)  # a closed pin is never alive
        backend.unpin(pin)  # twice is harmless
    finally:
        p.kill()
        p.wait()


def test_pin_refuses_another_start_time_and_keeps_nothing_open(backend: LinuxBackend) -> None:
    p = subprocess.Popen(["sleep", "30"])
    try:
        ident = backend.task_id(p.pid)
        before = _open_fds()
        with pytest.raises(ProcessGone, match="now names another process"):
            backend.pin(type(ident)(ident.pid, ident.start_time - 1))
        assert _open_fds() == before
        p.kill()
        p.wait()
        with pytest.raises(ProcessGone):
            backend.pin(ident)
        assert _open_fds() == before
    finally:
        p.kill()
        p.wait()


def test_pin_refuses_a_zombie(backend: LinuxBackend) -> None:
    p = subprocess.Popen(["sleep", "30"])
    ident = backend.task_id(p.pid)
    p.kill()
    deadline = time.monotonic() + 3
    while procfs.read_stat(p.pid).state != "Z" and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        with pytest.raises(ProcessGone):
            backend.pin(ident)
    finally:
        p.wait()


def test_pin_a_thread(backend: LinuxBackend) -> None:
    ev = threading.Event()
    t = threading.Thread(target=ev.wait)
    t.start()
    try:
        assert t.native_id is not None
        pin = backend.pin(backend.task_id(os.getpid(), t.native_id))
    finally:
        ev.set()
    t.join()
    if pin is None:
        pytest.skip("this kernel cannot pin a thread (PIDFD_THREAD came with 6.9)")
    try:
        deadline = time.monotonic() + 3
        while backend.pinned_alive(pin) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not backend.pinned_alive(pin)
    finally:
        backend.unpin(pin)


def test_pin_without_pidfds_falls_back(backend: LinuxBackend,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    def enosys(pid: int, flags: int = 0) -> int:
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(os, "pidfd_open", enosys)
    assert backend.pin(backend.task_id(os.getpid())) is None


# --- a daemon without root ---

_PROBE = ("import json; from ainative.platform import get_platform; "
          "print(json.dumps({m.name: [m.available, m.detail] for m in get_platform().probe()}))")


@pytest.mark.skipif(not ROOT or shutil.which("setpriv") is None,
                    reason="dropping to another uid needs root and util-linux setpriv")
def test_an_unprivileged_probe_says_what_it_cannot_use(checkout_reachable: str | None
                                                        ) -> None:
    if checkout_reachable:
        pytest.skip(checkout_reachable)
    r = subprocess.run(["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups",
                        sys.executable, "-c", _PROBE], capture_output=True, text=True,
                       timeout=60, stdin=subprocess.DEVNULL, cwd="/")
    assert r.returncode == 0, r.stderr
    mechs = json.loads(r.stdout)
    ok, detail = mechs["raise_priority"]
    assert not ok
    assert detail.startswith("raising priority (negative nice, realtime): unavailable: "
                             "needs CAP_SYS_NICE (running as uid 65534)")
    ok, detail = mechs["cgroups"]
    cpu_mount = next((h.mount for h in _cpu_hierarchies()), None)
    if cpu_mount is not None:
        assert not ok
        assert f"{cpu_mount} " in detail and "not writable by uid 65534" in detail
        assert detail.startswith("unavailable: ")
    # As root the same probe has both.
    mine = {m.name: m for m in get_platform().probe()}
    assert mine["raise_priority"].available
    assert mine["raise_priority"].detail.endswith("CAP_SYS_NICE held")
    assert "not writable" not in mine["cgroups"].detail


def _cpu_hierarchies() -> list[object]:
    from ainative.platform.linux.cgroups import discover

    return [h for h in discover() if "cpu" in h.controllers]


def test_every_knob_the_core_knows_has_a_getter_and_a_setter_here() -> None:
    from ainative.core.knobs import knobs_for
    from ainative.platform import get_platform

    backend = get_platform(cgroup_root="ainative-knobtable").backend
    table = backend.knob_table()  # type: ignore[attr-defined]
    assert set(table) == knobs_for("linux")
    assert all(callable(get) and callable(put) for get, put in table.values())
    # And the table is what get_knob reads through: the nice of this very process.
    assert backend.get_knob(os.getpid(), "nice") == os.getpriority(os.PRIO_PROCESS, 0)
