"""The stress workload's model server: ONNX Runtime behind a listening Unix socket.

A model server is what ainative has to find and protect, so the stress test runs one the
way a user would: this process loads the model, listens on a Unix stream socket (a path
in a private directory its caller chose, so the socket shows in /proc/net/unix as
listening and is held as one of this process's fds), warms up, and answers requests on
a thread per client connection. Nothing here tells a daemon what it is: it is found by
what it maps (an AI runtime), what it holds (a listening socket) and what it does (use
CPU). It listens BEFORE its warm-up, so all three are visible while it warms up.

    python -m ainative.stress.server --config JSON --socket PATH

stdout: ``ready {json}`` once warmed up, or ``error MESSAGE`` (exit 1) when the model
cannot be loaded, fed or run, or the socket cannot be made. It then serves until its
stdin closes: the caller's end of the run, or the caller's death. Its figures (run-queue
wait, CPU, RSS, scheduling) go to the load client over the socket (START / STOP in
wire.py), which puts them in the run's result. SIGINT is ignored: a Ctrl-C ends the run at
the client, which still asks this server for its figures.
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
import time
from types import FrameType
from typing import Any

import numpy as np

from ainative.stress import feeds, models, wire
from ainative.stress.batch import nbytes, synthesise
from ainative.stress.config import WorkloadConfig
from ainative.stress.metrics import ResourceSampler, gpu_snapshot, sched_state
from ainative.stress.results import ServerReport
from ainative.stress.wire import Kind

BACKLOG = 128


def _open_pool(size: str) -> Any:
    from ainative.mem import MemlockError, PinnedPool

    try:
        # "try": an unlocked pool that says so beats no run at all; the stats show which.
        return PinnedPool(size, lock="try", name="stress")
    except (MemlockError, ValueError, OSError) as e:
        raise models.ModelError(f"--pool {size}: {e}") from e


def listen(path: str) -> socket.socket:
    """A listening Unix stream socket at path (a filesystem path, never the abstract
    namespace: a socket file in a private directory is what a real server has, and what
    /proc/net/unix shows with its path)."""
    if not path or path.startswith("\0"):
        raise ValueError("the socket needs a filesystem path")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


def _discard(conn: socket.socket, n: int) -> None:
    scratch = memoryview(bytearray(min(n, 1 << 16)))
    while n > 0:
        k = min(n, len(scratch))
        wire.recv_exact(conn, scratch[:k])
        n -= k


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")


class ModelServer:
    def __init__(self, cfg: WorkloadConfig, path: str) -> None:
        self.cfg = cfg
        self.path = path
        self.session = models.open_session(cfg.model_path, cfg.threads, cfg.device)
        self.specs = cfg.inputs or models.input_specs(self.session, cfg.batch, cfg.model_name)
        self.feeds = synthesise(self.specs)
        self.sizes = [nbytes(s) for s in self.specs]
        self.expected = sum(self.sizes)
        self.pool = _open_pool(cfg.pool) if cfg.pool else None
        self.listener = listen(path)
        self.service_s = 0.0
        self.gpu: dict[str, Any] = {}
        self._lock = threading.Lock()
        self.served = self.failed = 0
        self._sampler: ResourceSampler | None = None
        self._sched: dict[str, Any] = {}

    # --- inference ---

    def _stage(self) -> tuple[list[Any], dict[str, np.ndarray]]:
        """Pinned buffers for one request's inputs, as arrays of the inputs' shapes: where a
        server puts what it receives, before a device would copy it from there."""
        assert self.pool is not None
        bufs: list[Any] = []
        staged: dict[str, np.ndarray] = {}
        try:
            for spec, size in zip(self.specs, self.sizes, strict=True):
                bufs.append(self.pool.alloc(size))
                staged[spec["name"]] = bufs[-1].array(spec["dtype"], tuple(spec["shape"]))
        except BaseException:
            self._unstage(bufs, staged)
            raise
        return bufs, staged

    @staticmethod
    def _unstage(bufs: list[Any], staged: dict[str, np.ndarray]) -> None:
        staged.clear()  # the views must die before free() takes the buffers back
        for b in bufs:
            b.free()

    def _infer_local(self) -> None:
        if self.pool is None:
            self.session.run(None, self.feeds)
            return
        bufs, staged = self._stage()
        try:
            for name in staged:  # (no loop variable: it would keep a view alive)
                staged[name][...] = self.feeds[name]
            self.session.run(None, staged)
        finally:
            self._unstage(bufs, staged)

    def warm_up(self) -> None:
        """First runs allocate and pick kernels; they also measure the service time."""
        t_end = time.monotonic() + self.cfg.warmup_s
        n, t0 = 0, time.perf_counter()
        try:
            while time.monotonic() < t_end or n < 5:
                self._infer_local()
                n += 1
        except Exception as e:
            raise models.ModelError(f"{self.cfg.model_name}: the model failed to run: "
                                    f"{_first_line(e)}{feeds.random_hint(self.specs)}"
                                    ) from e
        self.service_s = (time.perf_counter() - t0) / n
        # Before any request: a first NVML probe holds the GIL for tens of milliseconds.
        self.gpu = gpu_snapshot()

    # --- serving ---

    def serve_forever(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return  # the listener was closed: the server is stopping
            threading.Thread(target=self._serve, args=(conn,), daemon=True,
                             name="serve-conn").start()

    def _serve(self, conn: socket.socket) -> None:
        head = bytearray(wire.HEADER.size)
        # Without a pool, every request on this connection lands in one buffer, and the
        # model reads it in place through these views (a connection carries one request
        # at a time).
        rbuf = bytearray(self.expected if self.pool is None else 0)
        rview, views = memoryview(rbuf), self._views(rbuf) if self.pool is None else {}
        try:
            while True:
                kind, length = wire.read_header(conn, head)
                if kind == Kind.INFER:
                    if length != self.expected:
                        wire.send_frame(conn, Kind.ERROR, (
                            f"a request of {length} bytes; this model's inputs take "
                            f"{self.expected}").encode())
                        return
                    self._infer(conn, rview, views)
                    continue
                payload = wire.read_payload(conn, length)
                if payload:
                    wire.send_frame(conn, Kind.ERROR, b"control messages carry no payload")
                elif kind == Kind.HELLO:
                    wire.send_json(conn, Kind.HELLO, wire.Hello(
                        pid=os.getpid(), service_s=self.service_s, inputs=self.specs))
                elif kind == Kind.START:
                    wire.send_json(conn, Kind.START, {"sched": self.start()})
                elif kind == Kind.STOP:
                    report = self.stop()
                    if report is None:
                        wire.send_frame(conn, Kind.ERROR, b"STOP before START")
                    else:
                        wire.send_json(conn, Kind.STOP, report)
                else:
                    wire.send_frame(conn, Kind.ERROR, f"unknown message kind {kind}".encode())
                    return
        except (OSError, wire.ProtocolError):
            return  # the client went away; that ends this connection only
        finally:
            conn.close()

    def _views(self, rbuf: bytearray) -> dict[str, np.ndarray]:
        out, off = {}, 0
        for spec, size in zip(self.specs, self.sizes, strict=True):
            count = int(np.prod(spec["shape"]))
            out[spec["name"]] = np.frombuffer(rbuf, spec["dtype"], count, off).reshape(
                spec["shape"])
            off += size
        return out

    def _infer(self, conn: socket.socket, rbuf: memoryview, views: dict[str, np.ndarray]
               ) -> None:
        try:
            if self.pool is None:
                wire.recv_exact(conn, rbuf)
                outs = self.session.run(None, views)
            else:
                outs = self._infer_pinned(conn)
        except (OSError, wire.ProtocolError):
            raise
        except Exception as e:  # the model's failure goes back to the client, counted
            with self._lock:
                self.failed += 1
            wire.send_frame(conn, Kind.ERROR, _first_line(e).encode())
            return
        # Counted before the reply leaves: once the client has it, a STOP may follow at
        # once and must find it counted.
        with self._lock:
            self.served += 1
        wire.send_frame(conn, Kind.RESULT, *(np.ascontiguousarray(o) for o in outs))

    def _infer_pinned(self, conn: socket.socket) -> list[Any]:
        """The request's inputs received straight into pinned buffers, run from there."""
        try:
            bufs, staged = self._stage()
        except MemoryError:
            # The pool had no room: the payload is still unread, and must be read, or the
            # next header would be taken from the middle of it.
            _discard(conn, self.expected)
            raise
        try:
            for name in staged:  # (no loop variable: it would keep a view alive)
                wire.recv_exact(conn, staged[name].data.cast("B"))
            return list(self.session.run(None, staged))
        finally:
            self._unstage(bufs, staged)

    # --- measurement ---

    def start(self) -> dict[str, Any]:
        """The measurement begins: how the kernel schedules us now (a daemon or a remedy
        has acted by then), and the resource sampler from here."""
        self._sched = sched_state()
        # Everything allocated so far lives for the whole run: moving it out of the cyclic
        # collector's reach keeps full collections (pauses of milliseconds) off the hot path.
        gc.collect()
        gc.freeze()
        sample_gpu = self.cfg.device == "cuda" and bool(self.gpu.get("available"))
        with self._lock:
            self.served = self.failed = 0
            self._sampler = ResourceSampler(gpu_every=5 if sample_gpu else 0).__enter__()
        return self._sched

    def stop(self) -> ServerReport | None:
        with self._lock:
            sampler, self._sampler = self._sampler, None
            served, failed = self.served, self.failed
        if sampler is None:
            return None
        sampler.__exit__(None, None, None)
        gpu = self.gpu
        if sampler.gpu_every:
            gpu = dict(gpu, during_run=sampler.gpu_result())
        return ServerReport(pid=os.getpid(), service_time_ms=round(self.service_s * 1000, 4),
                            sched=self._sched, resources=sampler.result(), gpu=gpu,
                            pool=self.pool.stats() if self.pool is not None else None,
                            served=served, failed=failed)

    def close(self) -> None:
        self.listener.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass
        if self.pool is not None:
            self.pool.close()


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ainative.stress.server")
    ap.add_argument("--config", required=True, help="WorkloadConfig as JSON")
    ap.add_argument("--socket", required=True, help="where to listen (a filesystem path)")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _terminate)
    cfg = WorkloadConfig(**json.loads(args.config))
    server: ModelServer | None = None
    try:
        try:
            server = ModelServer(cfg, args.socket)
            server.warm_up()
        except models.ModelError as e:
            print(f"error {e}", flush=True)
            return 1
        except (OSError, ValueError) as e:
            why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            print(f"error cannot listen on {args.socket}: {why}", flush=True)
            return 1
        print("ready " + json.dumps({"pid": os.getpid(), "socket": args.socket,
                                     "service_s": server.service_s}), flush=True)
        threading.Thread(target=server.serve_forever, daemon=True, name="accept").start()
        for line in sys.stdin:
            if line.strip() == "stop":
                break
        return 0
    finally:
        if server is not None:
            server.close()


if __name__ == "__main__":
    sys.exit(main())
