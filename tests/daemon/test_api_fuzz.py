"""Fuzz the control socket end to end in-process: the real Transport on a real selector and
a real Unix socket, the real Api, a real Supervisor over the in-memory fake backend and
the built-in rules. The test steps the selector loop itself between client sends.

Properties, whatever clients send (arbitrary bytes with and without newlines, JSON of
every type for op/pid/class/pool, lines over 64 KiB, hundreds of pipelined requests,
half-closes, several clients at once):

- every complete non-blank line gets exactly one reply line, valid JSON with a boolean
  "ok" (a line over MAX_REQUEST gets a "larger than" error; if its newline had not yet
  arrived when the buffer passed the limit, that error says "closing" and nothing more
  comes on that connection);
- the handler never raises, and never answers "internal error" (deep nesting once did:
  RecursionError, fixed in ipc/protocol.py);
- per connection, len(out) + len(buf) never exceeds
  max_pending_reply + 64 KiB + MAX_REQUEST + the largest reply;
- the transport's conns dict is empty again once the clients close, and a fresh ping
  answers after every example.
"""

from __future__ import annotations

import json
import os
import selectors
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.core.fake_backend import FakeBackend

from ainative.core.journal import Journal, make_validator
from ainative.core.rules import load_rules
from ainative.core.supervisor import Supervisor, SupervisorConfig
from ainative.daemon.api import Api, DaemonView
from ainative.daemon.pools import PoolRegistry
from ainative.daemon.telemetry import events_socket_view, no_store_view
from ainative.daemon.transport import Limits, Transport
from ainative.ipc.protocol import ALL_OPS, MAX_REQUEST, Peer

ORT = "/usr/lib/python3/dist-packages/onnxruntime/capi/libonnxruntime.so.1.17"
RECV_CHUNK = 64 * 1024  # what Transport.on_client reads at once
# Small, so that pipelined requests run into backpressure within an example.
LIMITS = Limits(max_pending_reply=8 * 1024, idle_timeout=30.0)


def fuzz(n: int) -> settings:
    return settings(max_examples=n, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.large_base_example])


class Host:
    """The daemon around the API, as little of it as the API needs."""

    def __init__(self, sup: Supervisor) -> None:
        self.supervisor = sup
        self.pools = PoolRegistry()
        self.reloads = 0

    def daemon_view(self) -> DaemonView:
        return {"pid": os.getpid(), "started": 0.0, "uptime_s": 0.0, "dry_run": False,
                "paused": self.supervisor.engine.paused, "scope_pid": None,
                "events": "fuzz", "event_overruns": 0, "rules": self.supervisor.rules.sources,
                "last_reload_error": None, "recovered": None, "journal_unusable": 0,
                "clients": 0, "clients_refused": 0, "clients_expired": 0,
                "metrics": {"address": None, "url": None, "loopback": None, "refused": 0},
                "event_sink_failures": 0,
                "telemetry": {"events_socket": events_socket_view(None),
                              "store": no_store_view(),
                              "runqueue": {"mode": "off", "kind": "off", "why": "fuzz",
                                           "watched": 0, "events": 0, "dropped": 0}}}

    def mechanisms(self) -> list[dict[str, Any]]:
        return [{"name": "fake", "available": True, "detail": "in-memory backend"}]

    def gpu_view(self) -> dict[str, Any]:
        return {"available": False, "reason": "no GPU in the fuzz", "gpus": []}

    def reload(self) -> str | None:
        self.reloads += 1
        self.supervisor.swap_rules(load_rules(rules_dir=None))
        return None


class Server:
    def __init__(self, tmp: Path) -> None:
        self.backend = FakeBackend()
        self.pids = [self.backend.spawn("server", threads=3, maps=[ORT]).pid,
                     self.backend.spawn("python3", threads=2).pid,
                     self.backend.spawn("stress-ng", uid=4242).pid,
                     self.backend.spawn("worker", uid=4242, env={"AINATIVE_CLASS":
                                                                 "background"}).pid]
        journal = Journal(str(tmp / "state"), validate=make_validator("ainative"))
        self.sup = Supervisor(self.backend, load_rules(rules_dir=None), journal,
                              SupervisorConfig(self_pid=1))
        self.sup.full_scan()
        self.host = Host(self.sup)
        self.api = Api(self.host)
        self.sel = selectors.DefaultSelector()
        self.transport = Transport(self.sel, self.handle, LIMITS)
        self.path = str(tmp / "f.sock")
        self.transport.listen(self.path)
        self.max_reply = 0
        self.raised: list[BaseException] = []
        self.max_held = 0

    def handle(self, line: bytes, peer: Peer) -> bytes:
        try:
            out = self.api.handle(line, peer)
        except BaseException as e:  # the property: never
            self.raised.append(e)
            raise
        self.max_reply = max(self.max_reply, len(out))
        return out

    def bound(self) -> int:
        return LIMITS.max_pending_reply + RECV_CHUNK + MAX_REQUEST + self.max_reply

    def step(self, timeout: float = 0.0) -> None:
        for key, events in self.sel.select(timeout):
            if key.data == "listen":
                self.transport.accept()
            elif isinstance(key.data, int):
                self.transport.on_client(key.data, events)
            for c in self.transport.conns.values():
                held = len(c.out) + len(c.buf)
                self.max_held = max(self.max_held, held)
                assert held <= self.bound(), (
                    f"a connection holds {held} bytes (out {len(c.out)}, buf {len(c.buf)}),"
                    f" over the bound {self.bound()}")
        self.transport.expire()

    def settle(self, timeout: float = 5.0) -> None:
        """Step until every connection is gone (the clients have closed)."""
        end = time.monotonic() + timeout
        while self.transport.conns and time.monotonic() < end:
            self.step(0.005)
        assert not self.transport.conns, (
            f"{len(self.transport.conns)} connection(s) left after the clients closed: "
            + repr([(len(c.buf), len(c.out), c.closing) for c in self.transport.conns.values()]))

    def close(self) -> None:
        self.transport.close()
        self.sel.close()


@dataclass
class Expect:
    kind: str  # "line" (an answer of any kind) or "big" (a 'larger than' error)
    request: bytes


def expected(payload: bytes, half_close: bool) -> list[Expect]:
    """What the transport owes a client that sent payload (then half-closed, or not)."""
    *lines, tail = payload.split(b"\n")
    out = []
    for ln in lines:
        if len(ln) > MAX_REQUEST:
            out.append(Expect("big", ln[:80]))
        elif ln.strip():
            out.append(Expect("line", ln[:200]))
    if len(tail) > MAX_REQUEST:
        out.append(Expect("big", tail[:80]))
    elif tail.strip() and half_close:
        out.append(Expect("line", tail[:200]))
    return out


@dataclass
class FuzzClient:
    path: str
    payload: bytes
    half_close: bool
    lazy: bool = False  # read only once everything is sent, or sending has stalled
    sock: socket.socket = field(init=False)
    sent: int = 0
    shut: bool = False
    eof: bool = False
    inbuf: bytearray = field(default_factory=bytearray)
    stalls: int = 0

    def __post_init__(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)
        self.sock.setblocking(False)
        self.want = expected(self.payload, self.half_close)

    def pump(self) -> None:
        if self.sent < len(self.payload):
            try:
                self.sent += self.sock.send(self.payload[self.sent:self.sent + RECV_CHUNK])
                self.stalls = 0
            except BlockingIOError:
                self.stalls += 1
            except (BrokenPipeError, ConnectionResetError):
                self.sent = len(self.payload)  # the server closed (after a 'closing' error)
        elif self.half_close and not self.shut:
            self.sock.shutdown(socket.SHUT_WR)
            self.shut = True
        if self.lazy and self.sent < len(self.payload) and self.stalls < 20:
            return  # a slow reader: the server's backpressure must bound what it holds
        while not self.eof:
            try:
                data = self.sock.recv(RECV_CHUNK)
            except BlockingIOError:
                break
            except ConnectionResetError:
                self.eof = True
                break
            if not data:
                self.eof = True
            self.inbuf += data

    def replies(self) -> list[bytes]:
        return bytes(self.inbuf).split(b"\n")[:-1]

    def done(self) -> bool:
        if self.eof:
            return True
        if self.half_close:
            return False  # the server closes once it has answered everything
        return self.sent == len(self.payload) and len(self.replies()) >= len(self.want)

    def check(self) -> None:
        reps = self.replies()
        assert self.inbuf.endswith(b"\n") or not self.inbuf, "a reply cut short"
        n = 0
        for want, raw in zip(self.want, reps, strict=False):
            n += 1
            rep = json.loads(raw)
            assert isinstance(rep, dict) and isinstance(rep.get("ok"), bool), raw[:200]
            err = str(rep.get("error", ""))
            assert "internal error" not in err, (
                f"{want.request!r} -> {err}")
            if want.kind == "big":
                assert rep["ok"] is False and "larger than" in err, raw[:200]
                if "closing" in err:
                    assert len(reps) == n, "replies after a 'closing' error"
                    assert self.eof, "the server must close after a 'closing' error"
                    return
            else:
                assert "larger than" not in err, (want.request, err)
        assert len(reps) == len(self.want), (
            f"{len(reps)} replies for {len(self.want)} requests: "
            f"{[w.request[:60] for w in self.want][:8]} -> {[r[:80] for r in reps][:8]}")

    def close(self) -> None:
        self.sock.close()


def exchange(srv: Server, payloads: list[tuple[bytes, bool]], timeout: float = 8.0,
             lazy: bool = False) -> None:
    clients = [FuzzClient(srv.path, p, h, lazy) for p, h in payloads]
    try:
        end = time.monotonic() + timeout
        while not all(c.done() for c in clients):
            assert time.monotonic() < end, (
                "no progress: " + repr([(c.sent, len(c.payload), len(c.replies()),
                                         len(c.want), c.eof) for c in clients]))
            for c in clients:
                c.pump()
            srv.step(0.001)
        for c in clients:
            c.check()
    finally:
        for c in clients:
            c.close()
    srv.settle()
    assert not srv.raised, srv.raised
    ping(srv)


def ping(srv: Server) -> None:
    c = FuzzClient(srv.path, b'{"op":"ping"}\n', True)
    try:
        end = time.monotonic() + 5
        while not c.eof and time.monotonic() < end:
            c.pump()
            srv.step(0.001)
        reps = c.replies()
        assert len(reps) == 1 and json.loads(reps[0])["pong"] is True, reps
    finally:
        c.close()
    srv.settle()


# --- strategies ---

TEXT = st.text(st.characters(codec="utf-8"), max_size=24) | st.text(max_size=8)
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(),
                    st.integers(min_value=-(2**70), max_value=2**70),
                    st.floats(allow_nan=False, allow_infinity=False), TEXT)
JSON_VALUES = st.recursive(
    SCALARS, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(TEXT, kids, max_size=4),
    max_leaves=8)
OPS = st.sampled_from(sorted(ALL_OPS)) | JSON_VALUES
CLASSES = st.sampled_from(["inference", "training", "background", "nosuch"])


@st.composite
def requests(draw: st.DrawFn, srv_pids: list[int]) -> bytes:
    req: dict[str, Any] = {"op": draw(OPS)}
    if draw(st.booleans()):
        req["pid"] = draw(st.sampled_from([*srv_pids, 1, os.getpid(), 4_000_000]) | JSON_VALUES)
    if draw(st.booleans()):
        req["class"] = draw(CLASSES | JSON_VALUES)
    if draw(st.booleans()):
        req["pool"] = draw(st.dictionaries(TEXT, SCALARS, max_size=6) | JSON_VALUES)
    return json.dumps(req, ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass")


def big_line(n: int, kind: int) -> bytes:
    if kind == 0:
        return b"x" * n
    if kind == 1:
        return b'{"op": "status"' + b" " * n + b"}"
    return b'{"op": "ping", "pad": "' + b"a" * n + b'"}'


BIG = st.builds(big_line, st.integers(MAX_REQUEST - 16, MAX_REQUEST + 3 * RECV_CHUNK),
                st.integers(0, 2))
RAW = st.binary(max_size=300)
TERMINATOR = st.sampled_from([b"\n", b"\n", b"\r\n", b"", b"\n\n"])


def segments(pids: list[int]) -> st.SearchStrategy[bytes]:
    seg = st.one_of(requests(pids), RAW, st.just(b""), st.just(b'{"op":"ping"}'),
                    st.sampled_from([b" ", b"\t", b"\x00", b"\xff\xfe", b"[" * 2000]))
    return st.tuples(seg, TERMINATOR).map(lambda t: t[0] + t[1])


# --- tests ---

def test_ping_status_and_a_closed_client(tmp_path: Path) -> None:
    srv = Server(tmp_path)
    try:
        exchange(srv, [(b'{"op":"ping"}\n{"op":"status"}\n', False),
                       (b'{"op":"status"}', True), (b"", True), (b"", False)])
        assert srv.max_reply > 100
    finally:
        srv.close()


def test_random_segments_with_and_without_half_close(tmp_path: Path) -> None:
    srv = Server(tmp_path)

    @fuzz(400)
    @given(st.lists(segments(srv.pids), max_size=12), st.booleans())
    def run(segs: list[bytes], half_close: bool) -> None:
        exchange(srv, [(b"".join(segs), half_close)])

    try:
        run()
    finally:
        srv.close()


def test_oversized_lines_among_requests(tmp_path: Path) -> None:
    srv = Server(tmp_path)

    @fuzz(60)
    @given(st.lists(st.one_of(BIG.map(lambda b: b + b"\n"), segments(srv.pids)),
                    min_size=1, max_size=5),
           st.one_of(st.just(b""), BIG), st.booleans())
    def run(segs: list[bytes], tail: bytes, half_close: bool) -> None:
        exchange(srv, [(b"".join(segs) + tail, half_close)])

    try:
        run()
    finally:
        srv.close()


def test_many_pipelined_requests_meet_backpressure(tmp_path: Path) -> None:
    srv = Server(tmp_path)
    status = b'{"op":"status"}\n'

    @fuzz(15)
    @given(st.lists(st.one_of(st.just(status), st.just(b'{"op":"ping"}\n'),
                              requests(srv.pids).map(lambda b: b + b"\n")),
                    min_size=100, max_size=400),
           st.booleans(), st.booleans())
    def run(reqs: list[bytes], half_close: bool, lazy: bool) -> None:
        exchange(srv, [(status * 200 + b"".join(reqs), half_close)], lazy=lazy)

    try:
        run()
        # The replies waiting for one client went past max_pending_reply: backpressure ran.
        assert srv.max_held > LIMITS.max_pending_reply
    finally:
        srv.close()


def test_several_clients_at_once(tmp_path: Path) -> None:
    srv = Server(tmp_path)

    @fuzz(60)
    @given(st.lists(st.tuples(st.lists(segments(srv.pids), max_size=6).map(b"".join),
                              st.booleans()), min_size=2, max_size=5))
    def run(payloads: list[tuple[bytes, bool]]) -> None:
        exchange(srv, payloads)

    try:
        run()
    finally:
        srv.close()


def test_clients_that_vanish_mid_request(tmp_path: Path) -> None:
    """Closed without reading, mid-line, with replies still owed: nothing is left behind."""
    srv = Server(tmp_path)

    @fuzz(60)
    @given(st.lists(segments(srv.pids), max_size=8).map(b"".join),
           st.integers(0, 3), st.booleans())
    def run(payload: bytes, steps: int, big: bool) -> None:
        if big:
            payload += b'{"op":"status"}\n' * 300 + b'{"op": "pi'
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(srv.path)
        s.setblocking(False)
        try:
            sent = 0
            for _ in range(steps + 1):
                try:
                    sent += s.send(payload[sent:sent + RECV_CHUNK])
                except BlockingIOError:
                    pass
                srv.step(0.001)
        finally:
            s.close()
        srv.settle()
        assert not srv.raised
        ping(srv)

    try:
        run()
    finally:
        srv.close()


def test_handler_never_raises_for_any_peer(tmp_path: Path) -> None:
    """The Api's handle() directly, with callers root and not: one reply line, valid JSON
    with a boolean ok; no internal error; a non-root caller changes only its own
    processes."""
    srv = Server(tmp_path)

    @fuzz(800)
    @given(st.binary(max_size=200) | requests(srv.pids),
           st.sampled_from([0, 4242, 65534]), st.integers(1, 1 << 22))
    def run(line: bytes, uid: int, pid: int) -> None:
        writes = len(srv.backend.writes)
        out = srv.api.handle(line, Peer(pid, uid, uid))
        assert out.endswith(b"\n") and out.count(b"\n") == 1
        rep = json.loads(out)
        assert isinstance(rep, dict) and isinstance(rep["ok"], bool)
        assert "internal error" not in str(rep.get("error", "")), (line, rep)
        if uid != 0:
            for tid, _knob, _v in srv.backend.writes[writes:]:
                owner = next(p for p in srv.backend.procs.values() if tid in p.threads)
                assert owner.uid == uid, (line, uid, srv.backend.writes[writes:])

    try:
        run()
    finally:
        srv.close()
