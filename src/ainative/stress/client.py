"""The stress workload's load client: open-loop requests to the model server over its
Unix socket, measured from each request's scheduled time to its reply.

This is the load generator a user would point at a model server. Its loop is the run's
mode's (modes.py): open loop (below), closed loop or one frame at a time. It sends every request
with its input tensors (the synthetic batch the server describes in HELLO), over one
persistent connection per load worker, at the times OpenLoop (loadgen.py) schedules
whatever happened to earlier requests, so queueing anywhere (here, in the socket, in the
server) counts as latency. It imports no AI runtime, NumPy only: a daemon must never take
it for the model server.

    python -m ainative.stress.client --config JSON --socket PATH --result PATH [--ticks S]

stdout: ``ready`` once connected and warmed up; then it waits for ``go`` on stdin (any
other line, or EOF, gives up), runs, asks the server for its figures and writes the
run's result (results.workload_result) to --result; an error there instead when it could
not. With --ticks, a ``tick {json}`` progress line (loadgen.Progress) every S seconds.
The first SIGINT ends the run early and the result still comes.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable
from dataclasses import asdict
from types import FrameType
from typing import Any

from ainative.stress import modes, wire
from ainative.stress.batch import synthesise
from ainative.stress.config import WorkloadConfig
from ainative.stress.loadgen import Progress
from ainative.stress.metrics import sched_state
from ainative.stress.results import ClientFigures, ServerReport, workload_result, write_result
from ainative.stress.wire import Kind

WARMUP_REQUESTS = 3  # per connection: the server's thread for it runs, a broken model shows


def connect(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        raise
    return sock


class Connection:
    """One persistent connection, one request at a time, the request's bytes made once."""

    def __init__(self, path: str, payload: bytes) -> None:
        self.sock = connect(path)
        self.request = wire.HEADER.pack(Kind.INFER, len(payload)) + payload
        self.head = bytearray(wire.HEADER.size)
        self.reply = bytearray(1 << 16)

    def infer(self) -> None:
        self.sock.sendall(self.request)
        kind, length = wire.read_header(self.sock, self.head)
        if length > len(self.reply):
            self.reply = bytearray(length)
        wire.recv_exact(self.sock, memoryview(self.reply)[:length])
        if kind == Kind.ERROR:
            raise wire.ServerError(bytes(self.reply[:length]).decode(errors="replace"))
        if kind != Kind.RESULT:
            raise wire.ProtocolError(f"a reply of kind {kind} to a request")

    def close(self) -> None:
        self.sock.close()


class PerWorker:
    """The request OpenLoop calls: each load worker thread takes a connection of its own
    on its first request and keeps it, so requests never wait for each other here."""

    def __init__(self, conns: list[Connection]) -> None:
        self._free = list(conns)
        self._lock = threading.Lock()
        self._local = threading.local()

    def __call__(self) -> None:
        conn: Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            with self._lock:
                conn = self._free.pop()
            self._local.conn = conn
        conn.infer()


def run_client(cfg: WorkloadConfig, path: str, before_start: Callable[[], None],
               on_tick: Callable[[Progress], None] | None = None, tick_s: float = 1.0
               ) -> dict[str, Any]:
    ctl = connect(path)  # control messages (HELLO, START, STOP) on a connection of their own
    conns: list[Connection] = []
    try:
        hello: wire.Hello = wire.call(ctl, Kind.HELLO)
        feeds = synthesise(hello["inputs"])
        payload = b"".join(feeds[s["name"]].tobytes() for s in hello["inputs"])
        workers = modes.workers(cfg, hello["service_s"])
        conns = [Connection(path, payload) for _ in range(workers)]
        for c in conns:
            for _ in range(WARMUP_REQUESTS):
                c.infer()
        before_start()
        if cfg.load_warmup_s > 0:  # at the full rate, unmeasured: see WorkloadConfig
            modes.make_loop(cfg, workers, cfg.load_warmup_s, PerWorker(conns)).run(None, 1.0)
        cpu0 = os.times()
        sched = sched_state()
        wire.call(ctl, Kind.START)
        # As in the server: what lives for the whole run leaves the cyclic collector.
        gc.collect()
        gc.freeze()
        loop = modes.make_loop(cfg, workers, cfg.duration, PerWorker(conns))
        res = loop.run(on_tick, tick_s)
        res.extra.update(modes.counts(cfg, res))
        # The first Ctrl-C ended the loop; one arriving now must not lose the result.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        server: ServerReport = wire.call(ctl, Kind.STOP)
        cpu1 = os.times()
    finally:
        for c in conns:
            c.close()
        ctl.close()
    client = ClientFigures(pid=os.getpid(), cpu_user_s=round(cpu1[0] - cpu0[0], 3),
                           cpu_system_s=round(cpu1[1] - cpu0[1], 3),
                           run_queue_wait_s=round(res.run_queue_wait_s, 4), sched=sched)
    return workload_result(cfg, res, workers, server, client)


def ask_short_slice() -> None:
    """A load generator measures the server, not its own wakeups: on Linux 6.12+ the
    client asks the kernel for the shortest EEVDF slice (0.1 ms; any user may, for their
    own threads), so a send that is due preempts a CPU hog instead of waiting out the
    hog's slice (1.4 ms here). It gets no more CPU share for it, and it is the same client
    in every scenario of a comparison. Under chrt (a realtime policy) there is no slice."""
    from ainative.core.knobs import SLICE_MIN_NS
    from ainative.platform import ask_own_slice

    ask_own_slice(SLICE_MIN_NS)


def _interrupt_once(signum: int, frame: FrameType | None) -> None:
    # The first Ctrl-C ends the run (the loop still writes its result); more of them,
    # e.g. one from the terminal and one forwarded by the leader, must not cut that short.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def _print_tick(p: Progress) -> None:
    print("tick " + json.dumps(asdict(p)), flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ainative.stress.client")
    ap.add_argument("--config", required=True, help="WorkloadConfig as JSON")
    ap.add_argument("--socket", required=True, help="the model server's socket")
    ap.add_argument("--result", required=True, help="where to write the result JSON")
    ap.add_argument("--ticks", type=float, default=0.0,
                    help="seconds between progress lines on stdout (0: none)")
    args = ap.parse_args(argv)
    cfg = WorkloadConfig(**json.loads(args.config))
    signal.signal(signal.SIGINT, _interrupt_once)
    ask_short_slice()  # before its threads start: they inherit it

    def wait_go() -> None:
        print("ready", flush=True)
        if sys.stdin.readline().strip() != "go":
            raise SystemExit(3)  # the caller gave up on this run

    try:
        out = run_client(cfg, args.socket, wait_go, _print_tick if args.ticks > 0 else None,
                         args.ticks or 1.0)
    except wire.ServerError as e:
        out = {"error": f"the model server failed a request: {e}"}
    except OSError as e:  # ProtocolError included: the server went away
        why = e.strerror if e.strerror else str(e)
        out = {"error": f"the model server at {args.socket}: {why}"}
    except KeyboardInterrupt:
        out = {"error": "interrupted before the measurement began"}
    return write_result(args.result, out)


if __name__ == "__main__":
    sys.exit(main())
