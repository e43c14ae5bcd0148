"""Process events: the netlink connector (as root) and the /proc poller, on processes this
test starts."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest

from ainative.platform.linux import connector
from ainative.platform.linux.connector import (
    NetlinkSource,
    PollSource,
    ProcessEventSource,
    ProcEvent,
    open_event_source,
    parse_messages,
)


def collect(src: ProcessEventSource, pred: object, seconds: float = 3.0) -> list[ProcEvent]:
    got: list[ProcEvent] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        got += [e for e in src.read() if pred(e)]  # type: ignore[operator]
        if any(e.kind == "exit" and e.tid == e.pid for e in got):
            break
        time.sleep(0.02)
    return got


@pytest.mark.skipif(os.geteuid() != 0, reason="the process connector needs CAP_NET_ADMIN")
def test_netlink_sees_fork_exec_exit_in_order() -> None:
    src = open_event_source()
    try:
        assert src.name == "netlink" and src.fallback_reason is None
        p = subprocess.Popen(["/bin/sleep", "0.1"])
        p.wait()
        evs = collect(src, lambda e: e.pid == p.pid)
        kinds = [e.kind for e in evs]
        assert kinds[:2] == ["fork", "exec"] and kinds[-1] == "exit", kinds
        fork = evs[0]
        assert fork.parent_pid == os.getpid() and fork.tid == p.pid
        assert all(e.timestamp_ns > 0 for e in evs)
        assert [e.timestamp_ns for e in evs] == sorted(e.timestamp_ns for e in evs)
    finally:
        src.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="the process connector needs CAP_NET_ADMIN")
def test_netlink_reports_threads_with_their_process() -> None:
    src = NetlinkSource()
    try:
        code = "import threading; t = threading.Thread(target=lambda: None); t.start(); t.join()"
        p = subprocess.Popen(["python3", "-c", code])
        p.wait()
        evs = collect(src, lambda e: e.pid == p.pid)
        thread_forks = [e for e in evs if e.kind == "fork" and e.tid != e.pid]
        assert thread_forks, evs
        # A thread's event names its process (pid) and itself (tid); the kernel reports
        # the process's parent as "parent", so threads are told apart by tid != pid.
        assert all(e.pid == p.pid and e.tid not in (0, p.pid) for e in thread_forks)
    finally:
        src.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="the process connector needs CAP_NET_ADMIN")
def test_netlink_overrun_asks_for_one_rescan_and_is_counted() -> None:
    src = NetlinkSource()
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("ainative")  # its own handler: log.setup() stops propagation
    logger.addHandler(handler)
    try:
        assert src.overruns == 0
        # The smallest buffer the kernel allows, then a burst nobody reads: the kernel
        # drops events and says so with ENOBUFS on the next recv.
        src.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)
        procs = [subprocess.Popen(["/bin/true"]) for _ in range(60)]
        for p in procs:
            p.wait()
        evs = src.read()
        scans = [e for e in evs if e.kind == "scan"]
        assert len(scans) == 1 and evs[-1].kind == "scan", [e.kind for e in evs]
        first = src.overruns
        assert first >= 1
        counts = [getattr(r, "fields", {}).get("count") for r in records
                  if r.getMessage() == "event_overrun" and r.levelno == logging.WARNING]
        assert counts == list(range(1, first + 1))
        # A second burst overruns again: the count grows.
        procs = [subprocess.Popen(["/bin/true"]) for _ in range(60)]
        for p in procs:
            p.wait()
        assert [e.kind for e in src.read() if e.kind == "scan"] == ["scan"]
        assert src.overruns > first
        # Once drained, the next burst arrives whole and needs no rescan.
        src.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        counted = src.overruns
        p = subprocess.Popen(["/bin/true"])
        p.wait()
        evs = collect(src, lambda e: e.pid == p.pid or e.kind == "scan")
        assert [e.kind for e in evs] == ["fork", "exec", "exit"]
        assert src.overruns == counted
    finally:
        logger.removeHandler(handler)
        src.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="the process connector needs CAP_NET_ADMIN")
def test_self_test_keeps_the_events_it_read_and_hides_its_own() -> None:
    src = NetlinkSource()
    try:
        p = subprocess.Popen(["/bin/true"])
        p.wait()
        t0 = time.monotonic()
        assert src.self_test()
        assert time.monotonic() - t0 < 0.2
        evs = src.read()
        assert [e.kind for e in evs if e.pid == p.pid] == ["fork", "exec", "exit"]
        # The test thread's own fork/exit are not passed on.
        assert not [e for e in evs if e.pid == os.getpid() and e.tid != os.getpid()]
    finally:
        src.close()


def test_a_silent_connector_falls_back_with_a_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    # What a connector that accepts the listen request yet delivers nothing looks like.
    class Silent(NetlinkSource):
        def _drain(self) -> tuple[list[ProcEvent], bool]:
            return [], False

    monkeypatch.setattr(connector, "NetlinkSource", Silent)
    monkeypatch.setattr(connector, "connector_problem", lambda: None)
    try:
        src = open_event_source(0.05)
    except OSError:
        pytest.skip("the connector cannot be opened here at all")
    try:
        assert src.name == "poll" and src.overruns == 0
        assert src.fallback_reason == ("the netlink process connector reported no event for "
                                       "a thread of ours within 200 ms; polling /proc every "
                                       "0.05 s")
    finally:
        src.close()


def test_falls_back_to_polling_with_a_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    # Root on a 6.x kernel always gets the connector; the refusal an older kernel or an
    # unprivileged user meets is simulated here.
    def refuse() -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(connector, "NetlinkSource", refuse)
    monkeypatch.setattr(connector, "connector_problem", lambda: None)
    src = open_event_source(0.05)
    try:
        assert src.name == "poll" and isinstance(src, PollSource)
        assert src.fallback_reason and "root" in src.fallback_reason
        assert src.fallback_reason.endswith("; polling /proc every 0.05 s")
    finally:
        src.close()
    assert not src._thread.is_alive()


def _exec_seen_by_poller(argv: list[str]) -> list[ProcEvent]:
    """Start argv (which waits for a line, then execs), let it exec, and return what the
    poller saw of that pid after its first sighting."""
    src = PollSource(0.05, reason="test")
    try:
        p = subprocess.Popen(argv, stdin=subprocess.PIPE)
        assert {e.kind for e in src.read() if e.pid == p.pid} == {"fork", "exec"}
        assert not [e for e in src.read() if e.pid == p.pid]  # still waiting in `read`
        assert p.stdin is not None
        p.stdin.write(b"go\n")
        p.stdin.flush()
        deadline = time.monotonic() + 3.0
        evs: list[ProcEvent] = []
        while not evs and time.monotonic() < deadline:
            time.sleep(0.02)
            evs = [e for e in src.read() if e.pid == p.pid]
        p.kill()
        p.wait()
        return evs
    finally:
        src.close()


def test_poller_notices_an_exec_by_its_new_name() -> None:
    evs = _exec_seen_by_poller(["/bin/sh", "-c", "read x; exec /bin/sleep 5"])
    assert [e.kind for e in evs] == ["exec"]


def test_poller_notices_an_exec_of_another_binary_with_the_same_name(tmp_path: Path) -> None:
    # A copy of the shell under the same name: comm stays "sh", only /proc/PID/exe moves.
    twin = tmp_path / "sh"
    shutil.copy2(os.path.realpath("/bin/sh"), twin)
    evs = _exec_seen_by_poller(["/bin/sh", "-c", f"read x; exec {twin} -c 'read y'"])
    assert [e.kind for e in evs] == ["exec"]


def test_poller_sees_new_and_exited_processes() -> None:
    src = PollSource(0.05, reason="test")
    try:
        p = subprocess.Popen(["/bin/sleep", "0.3"])
        time.sleep(0.15)
        first = [e for e in src.read() if e.pid == p.pid]
        assert {e.kind for e in first} == {"fork", "exec"}
        assert next(e for e in first if e.kind == "fork").parent_pid == os.getpid()
        p.wait()
        evs = collect(src, lambda e: e.pid == p.pid)
        assert [e.kind for e in evs] == ["exit"]
        # The fd becomes readable on each tick, so select() wakes the daemon.
        import select
        r, _, _ = select.select([src], [], [], 1.0)
        assert r == [src]
    finally:
        src.close()


def _datagram(what: int, *payload: int) -> bytes:
    body = struct.pack("=IIQ", what, 0, 123) + struct.pack(f"={len(payload)}i", *payload)
    cn = struct.pack("=IIIIHH", 1, 1, 0, 0, len(body), 0) + body
    return struct.pack("=IHHII", 16 + len(cn), 3, 0, 0, 0) + cn


def test_parser_on_synthetic_messages_and_overrun() -> None:
    data = (_datagram(connector.PROC_EVENT_FORK, 10, 10, 11, 11)
            + _datagram(connector.PROC_EVENT_EXEC, 11, 11)
            + _datagram(connector.PROC_EVENT_EXIT, 12, 11, 0, 0))
    evs = parse_messages(data)
    assert evs == [ProcEvent("fork", 11, 11, 10, 123), ProcEvent("exec", 11, 11, 0, 123),
                   ProcEvent("exit", 11, 12, 0, 123)]
    overrun = struct.pack("=IHHII", 16, connector.NLMSG_OVERRUN, 0, 0, 0)
    assert [e.kind for e in parse_messages(overrun)] == ["scan"]
    # Truncated or foreign messages are dropped, never an exception.
    assert parse_messages(data[:20]) == []
    foreign = _datagram(0x4, 1, 1)  # a UID event: ignored
    assert parse_messages(foreign) == []
