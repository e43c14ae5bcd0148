"""The daemon's control channel on Windows: a named pipe carrying the same JSON requests
and replies as the Unix socket on Linux (ipc/protocol.py), with the caller identified by
the kernel rather than by what it claims.

Why a named pipe and not the Unix-socket transport: Windows 10+ has AF_UNIX in Winsock,
but CPython's Windows build exposes neither socket.AF_UNIX nor its addresses (and Wine
answers WSAEAFNOSUPPORT), and Windows has no SO_PEERCRED. A named pipe gives the
client's pid (GetNamedPipeClientProcessId) and, through its token, whether it runs
elevated. That becomes the protocol's Peer: an elevated caller is uid 0 (what root is
on Linux), anyone else the stable per-account number procs.uid_of gives.

Who may open the pipe: like the Unix socket on Linux, any local user. The pipe carries
an explicit DACL (``pipe_sddl``): full access for SYSTEM, Administrators and the
daemon's own account; for Authenticated Users only read, write and the attributes a
client needs (0x12018B), deliberately without FILE_APPEND_DATA, which on a pipe is
FILE_CREATE_PIPE_INSTANCE: no one else can add an instance of the same name and take
over clients. Network logons are denied, and PIPE_REJECT_REMOTE_CLIENTS keeps it local.
Clients therefore open it with exactly that access (``CLIENT_ACCESS``), not
GENERIC_WRITE (which includes FILE_APPEND_DATA and would be refused).

A squatter (another process that created ``\\\\.\\pipe\\ainative`` first) would receive
every client's requests. Three checks, each ending the start with ``PipeSquatted`` (a
one-line reason): the name must not exist yet (WaitNamedPipe); the first instance is
created with FILE_FLAG_FIRST_PIPE_INSTANCE (Windows refuses with access denied when the
name exists: this closes the race the first check leaves); and the DACL is read back
from the pipe and compared with the one asked for (Wine ignores the flag, but its read
back shows a squatter's DACL).

multiprocessing.connection supplies the message framing and the overlapped accept
(PipeListener, PipeConnection); this module only gives it the security attributes.
"""

from __future__ import annotations

import importlib
import json
import re
import time
from collections.abc import Callable
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
from ainative.platform.windows.win32 import ERROR_ACCESS_DENIED, Kernel32, Win32

PIPE = r"\\.\pipe\ainative"

# FILE_GENERIC_READ (0x120089) | FILE_WRITE_DATA (0x2) | FILE_WRITE_ATTRIBUTES (0x100,
# for PIPE_READMODE_MESSAGE): what a client needs, and no FILE_APPEND_DATA (0x4), which
# on a pipe means FILE_CREATE_PIPE_INSTANCE.
CLIENT_ACCESS = 0x12018B
PIPE_REJECT_REMOTE_CLIENTS = 0x8
ERROR_PIPE_BUSY = 231
ERROR_SEM_TIMEOUT = 121
ERROR_FILE_NOT_FOUND = 2
CONNECT_TIMEOUT_S = 20.0

Handler = Callable[[Peer, dict[str, Any]], bytes]


class PipeSquatted(OSError):
    """Another process owns the pipe's name; the daemon must not start."""


def pipe_sddl(owner_sid: str) -> str:
    """The pipe's DACL: protected (no inherited ACEs), network logons denied, full
    access for SYSTEM, Administrators and the daemon's account, client access for every
    authenticated local user."""
    return (f"D:P(D;;GA;;;NU)(A;;GA;;;SY)(A;;GA;;;BA)(A;;GA;;;{owner_sid})"
            f"(A;;0x{CLIENT_ACCESS:x};;;AU)")


_ACE = re.compile(r"\(([A-Z]+);[^;]*;[^;]*;[^;]*;[^;]*;([^)]*)\)")


def trustees(sddl: str) -> set[tuple[str, str]]:
    """The (ACE type, trustee) pairs of an SDDL DACL: what must read back. Masks are left
    out because Windows maps generic rights (GA) to the pipe's specific ones on
    creation, so they read back differently from what was asked."""
    return {(t, sid.upper()) for t, sid in _ACE.findall(sddl)}


def squatted_message(address: str, detail: str) -> str:
    return (f"the pipe {address} already exists and is not this daemon's ({detail}): "
            "another ainative daemon, or another program holding the name, runs; stop it "
            "(or pass --pipe NAME) and start again")


def check_readback(address: str, asked: str, got: str) -> None:
    """Raise PipeSquatted when the pipe's DACL is not the one asked for: the name was
    taken before this daemon created it, and its instance joined the squatter's pipe."""
    if trustees(got) != trustees(asked):
        raise PipeSquatted(squatted_message(address, f"its DACL reads {got}"))


def first_instance_error(address: str, e: OSError) -> OSError:
    """What a refused first CreateNamedPipe means: with FILE_FLAG_FIRST_PIPE_INSTANCE,
    access denied (or busy) is Windows saying the name is taken."""
    code = getattr(e, "winerror", None)
    if code in (ERROR_ACCESS_DENIED, ERROR_PIPE_BUSY):
        return PipeSquatted(squatted_message(address, f"CreateNamedPipe: Win32 error {code}"))
    return e


def name_taken(address: str) -> bool:
    """Whether a pipe of that name exists now (WaitNamedPipe answers anything but
    ERROR_FILE_NOT_FOUND). A courtesy check for the clear message, and the one that
    shows under Wine; FILE_FLAG_FIRST_PIPE_INSTANCE is what closes the race on Windows."""
    _winapi = _windows_module("_winapi")
    try:
        _winapi.WaitNamedPipe(address, 1)  # 1 ms: 0 would mean the server's default wait
    except OSError as e:
        return getattr(e, "winerror", None) != ERROR_FILE_NOT_FOUND
    return True


def _username(pid: int) -> str | None:
    try:
        return str(psutil.Process(pid).username())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def identify(api: Win32, pipe_handle: int,
             username: Callable[[int], str | None] = _username) -> Peer:
    """The caller at the other end of the pipe, as the privilege model sees it: elevated
    is uid 0; a non-elevated caller, an administrator's filtered token included, is an
    ordinary user (its account's number, -1 when the account cannot be read)."""
    pid = api.pipe_client_pid(pipe_handle)
    admin = api.process_elevated(pid)
    return Peer(pid=pid, uid=0 if admin else uid_of(username(pid)), gid=-1)


def _windows_module(name: str) -> Any:
    """A module (or members of one) that exist only in Windows builds of Python."""
    return importlib.import_module(name)


def _listener_class() -> Any:
    """multiprocessing's PipeListener with the DACL and PIPE_REJECT_REMOTE_CLIENTS. The
    class exists only in Windows builds of Python, hence built on demand."""
    _winapi = _windows_module("_winapi")
    base: Any = _windows_module("multiprocessing.connection").PipeListener

    class SecurePipeListener(base):  # type: ignore[misc,valid-type,unused-ignore]
        def __init__(self, address: str, security: int) -> None:
            self._security = security
            self.first_handle = 0
            super().__init__(address)

        def _new_handle(self, first: bool = False) -> int:
            flags = _winapi.PIPE_ACCESS_DUPLEX | _winapi.FILE_FLAG_OVERLAPPED
            if first:
                flags |= _winapi.FILE_FLAG_FIRST_PIPE_INSTANCE
            handle = int(_winapi.CreateNamedPipe(
                self._address, flags,
                _winapi.PIPE_TYPE_MESSAGE | _winapi.PIPE_READMODE_MESSAGE
                | _winapi.PIPE_WAIT | PIPE_REJECT_REMOTE_CLIENTS,
                _winapi.PIPE_UNLIMITED_INSTANCES, MAX_REQUEST, MAX_REQUEST,
                _winapi.NMPWAIT_WAIT_FOREVER, self._security))
            if first:
                self.first_handle = handle
            return handle

    return SecurePipeListener


class ControlPipe:
    """Serves one request per connection, like the Unix socket."""

    def __init__(self, api: Kernel32, address: str = PIPE) -> None:
        self.api = api
        self.address = address
        if name_taken(address):
            raise PipeSquatted(squatted_message(address, "a pipe of that name is open"))
        self.sddl = pipe_sddl(api.user_sid())
        self._security = api.security_attributes(self.sddl)
        try:
            self.listener = _listener_class()(address, self._security.address)
        except OSError as e:
            self._security.free()
            raise first_instance_error(address, e) from e
        try:
            self.dacl = api.handle_dacl(self.listener.first_handle)
            check_readback(address, self.sddl, self.dacl)
        except OSError:
            self.close()
            raise

    def serve_one(self, handle: Handler) -> Peer:
        """Accept one connection, identify the caller, answer its request; the caller."""
        conn = self.listener.accept()
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
        self._security.free()


def connect(address: str = PIPE, timeout: float = CONNECT_TIMEOUT_S) -> Any:
    """A client connection with CLIENT_ACCESS (what the DACL grants ordinary users), in
    message read mode; multiprocessing's PipeClient asks GENERIC_WRITE, which the DACL
    refuses them."""
    _winapi = _windows_module("_winapi")
    deadline = time.monotonic() + timeout
    while True:
        try:
            _winapi.WaitNamedPipe(address, 1000)
            h = _winapi.CreateFile(address, CLIENT_ACCESS, 0, _winapi.NULL,
                                   _winapi.OPEN_EXISTING, _winapi.FILE_FLAG_OVERLAPPED,
                                   _winapi.NULL)
            break
        except OSError as e:
            if getattr(e, "winerror", None) not in (ERROR_SEM_TIMEOUT, ERROR_PIPE_BUSY) \
                    or time.monotonic() > deadline:
                raise
    _winapi.SetNamedPipeHandleState(h, _winapi.PIPE_READMODE_MESSAGE, None, None)
    return _windows_module("multiprocessing.connection").PipeConnection(h)


def request(req: dict[str, Any], address: str = PIPE) -> dict[str, Any]:
    """Send one request to the daemon's pipe and return its reply."""
    with connect(address) as conn:
        conn.send_bytes(json.dumps(req).encode())
        reply = json.loads(conn.recv_bytes(MAX_REQUEST))
    if not isinstance(reply, dict):
        raise ValueError(f"the daemon answered {type(reply).__name__}, not an object")
    return reply
