"""One stress workload as a user would run it: a model server (server.py) and the load
client that drives it (client.py), two processes.

Two, because that is what a real service looks like, and what ainative has to find on
its own: the process holding the model and a listening socket and using CPU is the one to
protect; the load generator is an ordinary client, never mistaken for it. A remedy given
as a command prefix (``nice -n -10``, ``chrt -f 10``) starts both, as a user would start
a whole service under it.

Workload starts the pair and runs their handshake, one line at a time on stdout/stdin:

    server -> us   ready {json}      listening and warmed up (or: error MESSAGE)
    client -> us   ready             connected and warmed up (started only then)
    us -> client   go                the measurement begins
    client -> us   tick {json}       progress, when asked for
    (client exits, its result file written; the server's stdin is closed to stop it)

Used by ``ainative stress`` itself (run_workload) and by each ``--compare`` scenario's
leader (leader.py). The server and client get process groups of their own, so a Ctrl-C
on the terminal reaches them only through us, once, and they die with whoever started
them.
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from types import TracebackType
from typing import Any

from ainative.ipc.launcher import last_line
from ainative.stress.config import WorkloadConfig
from ainative.stress.loadgen import Progress


class WorkloadError(Exception):
    """The workload could not run; the message says why in one line."""


class NotReady(WorkloadError):
    """A process exited or timed out before its ready line."""


def _die_with_parent() -> None:
    # A server or client must not outlive a run that was killed outright.
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


def wait_line(proc: subprocess.Popen[str], want: str, timeout: float) -> str:
    """The rest of the first line from proc's stdout that starts with want. A line
    ``error MESSAGE`` is raised as WorkloadError(MESSAGE); an exit or a timeout first, as
    NotReady."""
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not sel.select(timeout=0.2):
                if proc.poll() is not None:
                    break
                continue
            line = proc.stdout.readline()
            if not line:
                break
            if line.startswith(want):
                return line[len(want):].strip()
            if line.startswith("error "):
                raise WorkloadError(line[len("error "):].strip())
    finally:
        sel.close()
    code = proc.poll()
    if code is None and time.monotonic() < deadline:  # its stdout closed: it is exiting
        try:
            code = proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            pass
    raise NotReady(f"did not get ready within {timeout:.0f} s" if code is None
                   else f"exited with code {code} before it was ready")


def error_in(path: str) -> str | None:
    """The error a result file holds, if it holds one."""
    try:
        with open(path) as fh:
            err = json.load(fh).get("error")
    except (OSError, ValueError, AttributeError):
        return None
    return str(err) if err else None


class Workload:
    def __init__(self, cfg: WorkloadConfig, workdir: str, prefix: Sequence[str] = (),
                 ticks_s: float | None = None) -> None:
        self.cfg = cfg
        self.prefix = list(prefix)
        self.ticks_s = ticks_s
        # The socket lives in a private directory (mode 0700) of its own under /tmp: a
        # short path (sockaddr_un holds 108 bytes) that nobody else can connect to.
        self.sockdir = tempfile.mkdtemp(prefix="ainative-serve-", dir="/tmp")
        self.socket = os.path.join(self.sockdir, "model.sock")
        self.result_path = os.path.join(workdir, "client.json")
        self.server_log = os.path.join(workdir, "server.err")
        self.client_log = os.path.join(workdir, "client.err")
        self.server: subprocess.Popen[str] | None = None
        self.client: subprocess.Popen[str] | None = None
        self._interrupted = False

    @property
    def server_pid(self) -> int:
        assert self.server is not None, "not started"
        return self.server.pid

    @property
    def client_pid(self) -> int:
        assert self.client is not None, "not started"
        return self.client.pid

    def _spawn(self, module: str, args: list[str], log: str) -> subprocess.Popen[str]:
        with open(log, "w") as err:
            return subprocess.Popen(
                [*self.prefix, sys.executable, "-m", module,
                 "--config", json.dumps(asdict(self.cfg)), *args],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True,
                process_group=0, preexec_fn=_die_with_parent)

    def spawn_server(self) -> None:
        """Start the model server; it loads, listens and warms up while the caller goes
        on (see wait_ready)."""
        self.server = self._spawn("ainative.stress.server", ["--socket", self.socket],
                                  self.server_log)

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Until the server is warmed up, then the client started and warmed up."""
        if self.server is None:
            self.spawn_server()
        assert self.server is not None
        try:
            wait_line(self.server, "ready", timeout)
        except NotReady as e:
            raise WorkloadError(f"the model server {e}: {last_line(self.server_log)}"
                                ) from None
        ticks = ["--ticks", str(self.ticks_s)] if self.ticks_s else []
        self.client = self._spawn("ainative.stress.client", [
            "--socket", self.socket, "--result", self.result_path, *ticks], self.client_log)
        try:
            wait_line(self.client, "ready", timeout)
        except NotReady as e:
            try:
                self.client.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.client.kill()
                self.client.wait()
            # Its reason (a server that failed a request) is in its result; a crash, on
            # stderr.
            raise WorkloadError(error_in(self.result_path) or
                                f"the load client {e}: {last_line(self.client_log)}"
                                ) from None

    def go(self) -> None:
        assert self.client is not None and self.client.stdin is not None
        self.client.stdin.write("go\n")
        self.client.stdin.flush()

    def interrupt(self) -> None:
        """End the measurement early (once); the result still comes."""
        if self.client is not None and self.client.poll() is None and not self._interrupted:
            self._interrupted = True
            self.client.send_signal(signal.SIGINT)

    def wait(self, on_tick: Callable[[Progress], None] | None = None) -> dict[str, Any]:
        """Until the client has finished; its result (an error in it, if it failed). Ctrl-C
        here ends the measurement early rather than abandoning it."""
        assert self.client is not None and self.client.stdout is not None
        while True:
            try:
                line = self.client.stdout.readline()
                if not line:
                    break
                if on_tick is not None and line.startswith("tick "):
                    on_tick(Progress(**json.loads(line[len("tick "):])))
            except KeyboardInterrupt:
                self.interrupt()
        while True:
            try:
                self.client.wait()
                break
            except KeyboardInterrupt:
                self.interrupt()
        self._stop_server()
        if not os.path.exists(self.result_path):
            return {"error": f"the load client wrote no result (exit code "
                             f"{self.client.returncode}): {last_line(self.client_log)}"}
        with open(self.result_path) as fh:
            out: dict[str, Any] = json.load(fh)
        return out

    def _stop_server(self) -> None:
        if self.server is None or self.server.poll() is not None:
            return
        try:
            if self.server.stdin is not None:
                self.server.stdin.close()  # EOF: the server stops serving and exits
            self.server.wait(timeout=10)
        except (BrokenPipeError, subprocess.TimeoutExpired):
            self.server.kill()
            self.server.wait()

    def close(self) -> None:
        for p in (self.client, self.server):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
        shutil.rmtree(self.sockdir, ignore_errors=True)

    def __enter__(self) -> Workload:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def run_workload(cfg: WorkloadConfig, on_tick: Callable[[Progress], None] | None = None,
                 tick_s: float = 1.0, before_start: Callable[[], None] | None = None,
                 workdir: str | None = None) -> dict[str, Any]:
    """One whole run: start the pair, warm up, call before_start, measure, and return the
    result (results.py); WorkloadError when it could not run."""
    tmp = workdir or tempfile.mkdtemp(prefix="ainative-run-")
    try:
        with Workload(cfg, tmp, ticks_s=tick_s if on_tick is not None else None) as w:
            w.wait_ready()
            if before_start is not None:
                before_start()
            w.go()
            out = w.wait(on_tick)
    finally:
        if workdir is None:
            shutil.rmtree(tmp, ignore_errors=True)
    if "error" in out:
        raise WorkloadError(out["error"])
    return out
