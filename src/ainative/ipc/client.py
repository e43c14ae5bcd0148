"""Python client for the daemon's control socket (newline-delimited JSON over a Unix socket).

The client checks who serves the socket before it sends anything: SO_PEERCRED on the
connected socket gives the server's uid, which must be root or the caller's own. A socket
path that another user could replace (a directory they own or can write) then leads to
a clear refusal instead of a fake daemon's answers ("0 undone" while nothing was).
"""

from __future__ import annotations

import json
import os
import pwd
import socket
import struct
from typing import Any

DEFAULT_SOCKET = "/run/ainative/ainative.sock"
# Where in-process spans send their events (datagrams; ainative.telemetry.collector binds
# it): beside the control socket, overridden by AINATIVE_EVENTS in the traced process.
DEFAULT_EVENTS_SOCKET = "/run/ainative/events.sock"
MAX_MESSAGE = 1 << 20


def default_socket_path() -> str:
    return os.environ.get("AINATIVE_SOCKET", DEFAULT_SOCKET)


def default_events_path() -> str:
    """The events socket a traced process sends its spans to."""
    return os.environ.get("AINATIVE_EVENTS") or DEFAULT_EVENTS_SOCKET


class DaemonError(Exception):
    """The daemon answered with an error, or could not be reached."""


class Client:
    def __init__(self, path: str | None = None, timeout: float = 5.0) -> None:
        self.path = path or default_socket_path()
        self.timeout = timeout

    def request(self, op: str, **args: Any) -> dict[str, Any]:
        msg = json.dumps({"op": op, **args}).encode() + b"\n"
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(self.timeout)
                s.connect(self.path)
                self._check_server(s)
                s.sendall(msg)
                buf = bytearray()
                while not buf.endswith(b"\n"):
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    buf += chunk
                    if len(buf) > 64 * MAX_MESSAGE:
                        raise DaemonError("reply too large")
        except OSError as e:
            raise DaemonError(f"cannot reach the ainative daemon at {self.path}: {e}") from e
        try:
            reply: dict[str, Any] = json.loads(buf)
        except ValueError as e:
            raise DaemonError(f"unreadable reply from daemon: {e}") from e
        if not reply.get("ok", False):
            raise DaemonError(str(reply.get("error", "unknown error")))
        return reply

    def _check_server(self, s: socket.socket) -> None:
        creds = s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, uid, _gid = struct.unpack("3i", creds)
        if uid not in (0, os.geteuid()):
            try:
                who = f"{uid} ({pwd.getpwuid(uid).pw_name})"
            except KeyError:
                who = str(uid)
            raise DaemonError(
                f"refusing to talk to {self.path}: it is served by uid {who} (pid {pid}), not "
                "by root or you; someone may have replaced the daemon's socket")

    def status(self) -> dict[str, Any]:
        return self.request("status")

    def explain(self, pid: int) -> dict[str, Any]:
        return self.request("explain", pid=pid)

    def latency(self) -> dict[str, Any]:
        """Per managed process: inference and run-queue latency (counts, approximate
        p50/p99, log2 buckets) from the daemon's metrics."""
        return self.request("latency")

    def register(self, pid: int, cls: str) -> dict[str, Any]:
        return self.request("register", pid=pid, **{"class": cls})

    def restore(self) -> dict[str, Any]:
        return self.request("restore")


def report_pool(stats: dict[str, Any], path: str | None = None) -> bool:
    """Tell the daemon (if one runs) about this process's pinned pool, for `ainative status`.

    Never raises: a pool must work the same with or without a daemon.
    """
    try:
        Client(path, timeout=0.5).request("report_pool", pid=os.getpid(), pool=stats)
        return True
    except DaemonError:
        return False
