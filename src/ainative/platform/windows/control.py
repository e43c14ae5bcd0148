"""The daemon's control channel on Windows: a named pipe carrying the same JSON requests
and replies as the Unix socket on Linux (ipc/protocol.py), with the caller identified by
the kernel rather than by what it claims.

Why a named pipe and not the Unix-socket transport: Windows 10+ has AF_UNIX in Winsock,
but CPython's Windows build exposes neither socket.AF_UNIX nor its addresses (and Wine
answers WSAEAFNOSUPPORT), and Windows has no SO_PEERCRED. A named pipe gives the
client's pid (GetNamedPipeClientProcessId) and, through its token, whether it runs
elevated. That becomes the protocol's Peer: an elevated caller is uid 0 (what root is
on Linux), anyone else the stable per-account number procs.uid_of gives.

multiprocessing.connection supplies the pipe (CreateNamedPipe/ConnectNamedPipe with
message framing). Its default security descriptor lets only administrators, SYSTEM and
the creator write, so other users cannot yet send requests (reads need a write too): a
DACL for them is future work.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from multiprocessing.connection import Client, Connection, Listener
from typing import Any

import psutil

from ainative.ipc.protocol import (
    MAX_REQUEST,
    Peer,
    RequestError,
    parse_request,
    reply_error,
)
from ainative.platform.windows.procs import uid_of
from ainative.platform.windows.win32 import Win32

PIPE = r"\\.\pipe\ainative"

Handler = Callable[[Peer, dict[str, Any]], bytes]


def identify(api: Win32, pipe_handle: int) -> Peer:
    """The caller at the other end of the pipe, as the privilege model sees it."""
    pid = api.pipe_client_pid(pipe_handle)
    try:
        user: str | None = psutil.Process(pid).username()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        user = None
    admin = api.process_elevated(pid)
    return Peer(pid=pid, uid=0 if admin else uid_of(user), gid=-1)


class ControlPipe:
    """Serves one request per connection, like the Unix socket."""

    def __init__(self, api: Win32, address: str = PIPE) -> None:
        self.api = api
        self.address = address
        self.listener = Listener(address, family="AF_PIPE")

    def serve_one(self, handle: Handler) -> Peer:
        """Accept one connection, identify the caller, answer its request; the caller."""
        conn: Connection = self.listener.accept()
        try:
            peer = identify(self.api, int(conn.fileno()))
            try:
                data = conn.recv_bytes(MAX_REQUEST)
                reply = handle(peer, parse_request(data))
            except RequestError as e:
                reply = reply_error(str(e))
            except OSError as e:
                reply = reply_error(f"request too large or cut off ({e})")
            conn.send_bytes(reply)
            return peer
        finally:
            conn.close()

    def close(self) -> None:
        self.listener.close()


def request(req: dict[str, Any], address: str = PIPE) -> dict[str, Any]:
    """Send one request to the daemon's pipe and return its reply."""
    with Client(address, family="AF_PIPE") as conn:
        conn.send_bytes(json.dumps(req).encode())
        reply = json.loads(conn.recv_bytes(MAX_REQUEST))
    if not isinstance(reply, dict):
        raise ValueError(f"the daemon answered {type(reply).__name__}, not an object")
    return reply
