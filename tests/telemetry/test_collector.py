"""The collector trusts nothing a datagram says: real sockets, real sender processes.

A process cannot report another pid's span (the kernel's SCM_CREDENTIALS say who sent
it), another user may send spans but not the daemon's event types, a span may not carry
attribution, and garbage of every kind is counted by reason without stopping it."""

from __future__ import annotations

import json
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ainative.telemetry import events
from ainative.telemetry.collector import CollectorError, EventReceiver
from ainative.telemetry.events import Event, InferenceLatency, PolicyApplied

SEND = r"""
import json, socket, sys
path, payloads = sys.argv[1], json.loads(sys.argv[2])
import os
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
for p in payloads:
    s.sendto(p.replace("$PID", str(os.getpid())).encode(), path)
print(os.getpid())
"""


def span_json(pid: int | None = None, **extra: object) -> str:
    """A span datagram; pid None: the sending child's own (SEND fills it in)."""
    d = {"type": "inference_latency", "ts_ns": time.time_ns(), "pid": pid or 0, "tid": 1,
         "name": "infer", "duration_ns": 1000, **extra}
    text = json.dumps(d)
    return text if pid is not None else text.replace('"pid": 0', '"pid": $PID')


def send_from_child(path: str, payloads: list[str], *, user: int | None = None,
                    python: str = sys.executable) -> int:
    out = subprocess.run([python, "-c", SEND, path, json.dumps(payloads)], text=True,
                         capture_output=True, timeout=30, user=user)
    assert out.returncode == 0, out.stderr
    return int(out.stdout)


def drain(rx: EventReceiver, want: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while rx.stats().received < want and time.monotonic() < deadline:
        select.select([rx], [], [], 0.1)
        rx.handle_readable()


@pytest.fixture
def rx(tmp_path: Path) -> Iterator[tuple[EventReceiver, list[Event]]]:
    got: list[Event] = []
    r = EventReceiver(str(tmp_path / "ev.sock"), got.append)
    try:
        yield r, got
    finally:
        r.close()


def test_a_process_cannot_report_another_pids_span(
        rx: tuple[EventReceiver, list[Event]]) -> None:
    r, got = rx
    me = os.getpid()
    child = send_from_child(r.path, [span_json(), span_json(me), span_json(1)])
    drain(r, 3)
    st = r.stats()
    assert [e.pid for e in got] == [child]  # only its own span
    assert st.accepted == 1 and st.rejected == 2
    assert st.rejected_by_reason == {"pid_mismatch": 2}
    assert f"sent by pid {child}" in st.last_rejection


def test_garbage_is_counted_by_reason_and_never_raises(
        rx: tuple[EventReceiver, list[Event]]) -> None:
    r, got = rx
    bad = [
        "not json at all",
        '{"type": "no_such_type", "ts_ns": 1}',
        span_json(extra_key=1),
        span_json(runqueue_wait_ns=5),  # attribution is not the sender's to say
        span_json(ran_instead=[{"pid": 1, "comm": "init", "ns": 9}]),
        span_json(duration_ns=-1),
        span_json(name="x" * 5000),  # over MAX_EVENT_BYTES: truncated on receipt
        "[]",
    ]
    send_from_child(r.path, [*bad, span_json()])
    drain(r, len(bad) + 1)
    st = r.stats()
    assert st.accepted == 1 and len(got) == 1
    assert st.rejected_by_reason == {"invalid": 5, "attribution_from_sender": 2,
                                     "oversized": 1}
    r.handle_readable()  # nothing left, no error


def test_another_user_may_send_spans_but_not_the_daemons_events() -> None:
    if os.geteuid() != 0:
        pytest.skip("sending as another user needs root to switch to it")
    python = shutil.which("python3", path="/usr/bin:/bin")
    if python is None:
        pytest.skip("no system python3 for the unprivileged sender")
    d = tempfile.mkdtemp(prefix="ainative-collector-")
    try:
        os.chmod(d, 0o711)  # the other user can reach the socket by its name only
        got: list[Event] = []
        with EventReceiver(os.path.join(d, "ev.sock"), got.append) as r:
            policy = events.encode(PolicyApplied(ts_ns=1, pid=1, tid=1, knob="nice",
                                                 old="0", new="19")).decode()
            child = send_from_child(r.path, [span_json(), policy], user=65534,
                                    python=python)
            drain(r, 2)
            assert [type(e) for e in got] == [InferenceLatency]
            assert got[0].pid == child
            assert r.stats().rejected_by_reason == {"type_not_allowed": 1}
            # The same event from our own uid (trusted) is taken: the daemon's kind.
            s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            s.sendto(policy.encode(), r.path)
            s.close()
            drain(r, 3)
            assert [type(e) for e in got] == [InferenceLatency, PolicyApplied]
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_work_per_call_is_bounded_and_a_failing_handler_is_counted(tmp_path: Path) -> None:
    calls = []

    def on_event(ev: Event) -> None:
        calls.append(ev)
        if len(calls) % 2:
            raise RuntimeError("consumer bug")

    with EventReceiver(str(tmp_path / "b.sock"), on_event, max_batch=4) as r:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.connect(r.path)
        for _ in range(6):
            s.send(span_json(os.getpid()).encode())
        assert r.handle_readable() == 4
        assert r.handle_readable() == 2
        assert r.handle_readable() == 0
        st = r.stats()
        assert len(calls) == 6 and st.accepted == 6
        assert st.rejected_by_reason == {"handler_error": 3}
        assert "RuntimeError: consumer bug" in st.last_rejection
        s.close()


def test_the_socket_path_is_checked_before_binding(tmp_path: Path) -> None:
    p = tmp_path / "x.sock"
    # A stale socket of ours (nobody bound) is replaced.
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    stale.bind(str(p))
    stale.close()
    with EventReceiver(str(p), lambda ev: None) as r:
        assert p.is_socket() and oct(p.stat().st_mode & 0o777) == "0o666"
        # A live one is not taken over.
        with pytest.raises(CollectorError, match="already receiving"):
            EventReceiver(str(p), lambda ev: None)
        assert r.fileno() >= 0
    assert not p.exists()  # removed on close
    # A regular file or a symlink is never followed, replaced or removed.
    f = tmp_path / "file"
    f.write_text("data")
    with pytest.raises(CollectorError, match="not a socket"):
        EventReceiver(str(f), lambda ev: None)
    link = tmp_path / "link.sock"
    link.symlink_to(tmp_path / "elsewhere.sock")
    with pytest.raises(CollectorError, match="symlink"):
        EventReceiver(str(link), lambda ev: None)
    assert f.read_text() == "data" and link.is_symlink()
    with pytest.raises(CollectorError, match="cannot create"):
        EventReceiver(str(tmp_path / "no-such-dir" / "s.sock"), lambda ev: None)
