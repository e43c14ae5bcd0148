"""Launch a private `ainative daemon` scoped to one process's descendants.

The demo, the stress comparison, the benchmarks and the tests all need the same thing:
a daemon of their own (own state dir, socket and cgroup root, so a system-wide ainative
is never disturbed), managing only what they start, ready before they measure, and
stopped with SIGTERM so that everything it changed is undone. This is the one place
that knows how.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from types import TracebackType

from ainative.ipc.client import Client, DaemonError

_SUN_PATH_MAX = 100  # sockaddr_un holds 108 bytes; leave room


class LaunchError(Exception):
    """The daemon exited or did not answer; the message quotes its last log line."""


def last_line(path: str) -> str:
    try:
        with open(path, errors="replace") as fh:
            lines = [ln for ln in fh.read().splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1][-400:] if lines else ""


class ScopedDaemon:
    def __init__(self, workdir: str, *, scope_pid: int | None, cgroup_root: str,
                 rules_text: str | None = None, extra_args: tuple[str, ...] = (),
                 rules_file: str | None = None, state_dir: str | None = None,
                 socket_path: str | None = None, log_path: str | None = None,
                 log_format: str = "json", shared_socket: bool = False,
                 metrics_address: str = "off", events_socket: str | None = None,
                 runqueue: str = "off") -> None:
        """``scope_pid`` None manages the whole machine (benchmarks of the daemon's own
        cost, always with --dry-run there). ``shared_socket``: make the socket's directory
        reachable by other users (mode 0755), for tests and benchmarks that act as an
        unprivileged user. ``metrics_address``: the Prometheus endpoint; off by default,
        so a private daemon never takes the system daemon's port ("127.0.0.1:0": a free
        port, see metrics_url()). ``events_socket``: where it receives spans (the traced
        processes' AINATIVE_EVENTS); default beside its own control socket, never the
        system daemon's; "off" for none. ``runqueue``: --runqueue, off by default so a
        private daemon attaches no scheduler tracepoints unless a test asks."""
        self.workdir = workdir
        self._own_sockdir: str | None = None
        self._own_dirs: list[str] = []
        if socket_path is None:
            sockdir = os.path.join(workdir, "run")
            if len(os.path.join(sockdir, "ainative.sock")) > _SUN_PATH_MAX:
                sockdir = self._own_sockdir = tempfile.mkdtemp(prefix="ainative-", dir="/tmp")
            os.makedirs(sockdir, mode=0o700, exist_ok=True)
            if shared_socket:
                os.chmod(sockdir, 0o755)
            socket_path = os.path.join(sockdir, "ainative.sock")
        self.sock = socket_path
        if events_socket is None:
            d, base = os.path.split(os.path.abspath(socket_path))
            events_socket = os.path.join(d, f"{base.removesuffix('.sock')}.events.sock")
            if len(events_socket) > _SUN_PATH_MAX:
                d = tempfile.mkdtemp(prefix="ainative-", dir="/tmp")
                self._own_dirs.append(d)
                events_socket = os.path.join(d, "events.sock")
        self.events_socket = events_socket
        self.state_dir = state_dir or os.path.join(workdir, "state")
        self.log_path = log_path or os.path.join(workdir, f"daemon-{id(self):x}.log")
        self.cgroup_root = cgroup_root
        scope = ["--scope-descendants", str(scope_pid)] if scope_pid is not None else []
        self.argv = [sys.executable, "-m", "ainative", "daemon", *scope,
                     "--state-dir", self.state_dir, "--socket", self.sock,
                     "--rules-dir", "", "--log-format", log_format,
                     "--cgroup-root", cgroup_root, "--metrics-address", metrics_address,
                     "--events-socket", events_socket, "--runqueue", runqueue,
                     *extra_args]
        if rules_text is not None:
            rules = rules_file or os.path.join(workdir, f"rules-{id(self):x}.toml")
            with open(rules, "w") as fh:
                fh.write(rules_text)
            self.argv += ["--rules", rules]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def client(self) -> Client:
        return Client(self.sock, timeout=5)

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def start(self, wait: bool = True, timeout: float = 20.0) -> ScopedDaemon:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Until it answers ping; it finds the scope's processes started before that."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise LaunchError(f"ainative daemon exited at start (code "
                                  f"{self.proc.returncode}): {last_line(self.log_path)}")
            try:
                self.client.request("ping")
                return
            except DaemonError:
                if time.monotonic() > deadline:
                    raise LaunchError(f"ainative daemon did not answer within {timeout:.0f} s;"
                                      f" see {self.log_path}") from None
                time.sleep(0.05)

    def metrics_url(self) -> str | None:
        """The daemon's /metrics URL as bound (None when off)."""
        url: str | None = self.client.request("status")["daemon"]["metrics"]["url"]
        return url

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int | None:
        """SIGTERM by default: the daemon undoes everything it changed and exits."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def close(self) -> None:
        self.stop()
        import shutil

        for d in [self._own_sockdir, *self._own_dirs]:
            if d:
                shutil.rmtree(d, ignore_errors=True)

    def __enter__(self) -> ScopedDaemon:
        return self.start() if self.proc is None else self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
