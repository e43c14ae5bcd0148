"""Python client for the daemon's control socket (newline-delimited JSON over a Unix socket)."""

from __future__ import annotations

import json
import os
import socket
from typing import Any

DEFAULT_SOCKET = "/run/ainative/ainative.sock"
MAX_MESSAGE = 1 << 20


def default_socket_path() -> str:
    return os.environ.get("AINATIVE_SOCKET", DEFAULT_SOCKET)


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

    def status(self) -> dict[str, Any]:
        return self.request("status")

    def explain(self, pid: int) -> dict[str, Any]:
        return self.request("explain", pid=pid)

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
