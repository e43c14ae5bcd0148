"""The control socket's transport: the listening socket, per-connection framing, limits
and timeouts. What a request means is api.py's job; this module only makes sure that no
client, or group of clients of one user, can take the daemon's memory or lock others out.

- Framing: newline-delimited requests of at most MAX_REQUEST bytes.
- Backpressure: a client that does not read its replies stops being read once
  MAX_PENDING_REPLY bytes are waiting for it, so pipelined requests cannot pile replies
  up in the daemon; it then expires like an idle one.
- Quotas: at most PER_UID connections per non-root user and MAX_CLIENTS non-root in all;
  root has its own reserve, so other users cannot lock root out. A client over a limit
  gets a one-line error reply, never a bare reset.
- Timeouts: a connection that has made no progress (no complete request read, no reply
  bytes sent) for IDLE_TIMEOUT seconds is closed.
"""

from __future__ import annotations

import errno
import os
import selectors
import socket
import stat
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ainative import log
from ainative.ipc.protocol import MAX_REQUEST, Peer, reply_error


@dataclass(frozen=True)
class Limits:
    max_clients: int = 128  # non-root connections, all users together
    per_uid: int = 8  # connections of one non-root user
    root_reserve: int = 32  # root's own connections, on top of max_clients
    idle_timeout: float = 10.0
    max_pending_reply: int = 256 * 1024
    backlog: int = 128


class TransportError(Exception):
    """The socket cannot be set up; the message names the path, the problem and the fix."""


@dataclass
class _Conn:
    sock: socket.socket
    peer: Peer
    deadline: float
    buf: bytearray = field(default_factory=bytearray)
    out: bytearray = field(default_factory=bytearray)
    closing: bool = False  # the peer finished sending, or we refused: close once flushed


Handler = Callable[[bytes, Peer], bytes]


class Transport:
    def __init__(self, sel: selectors.BaseSelector, handler: Handler,
                 limits: Limits = Limits(),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.sel = sel
        self.handler = handler
        self.limits = limits
        self.clock = clock
        self.listener: socket.socket | None = None
        self.path: str | None = None
        self.conns: dict[int, _Conn] = {}
        self.refused = 0  # connections turned away at a limit
        self.expired = 0  # connections closed for making no progress

    # --- the listening socket ---

    def listen(self, path: str, *, mode: int = 0o666, gid: int | None = None) -> None:
        """Bind path (its directory must already be trusted: see statedir.secure_dir)."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            pass
        else:
            if not stat.S_ISSOCK(st.st_mode) or st.st_uid != os.geteuid():
                raise TransportError(
                    f"{path} exists and is not a socket of uid {os.geteuid()}; remove it or "
                    "choose another --socket")
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            probe.settimeout(1.0)
            try:
                probe.connect(path)
            except OSError:
                os.unlink(path)  # stale socket of a dead daemon
            else:
                raise TransportError(f"a daemon is already listening on {path}")
            finally:
                probe.close()
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # Bind with a private mode, then open it up: no window where the socket exists
            # with the process umask's permissions.
            old = os.umask(0o177)
            try:
                s.bind(path)
            finally:
                os.umask(old)
            if gid is not None:
                os.chown(path, -1, gid)
            os.chmod(path, mode)
        except OSError as e:
            s.close()
            raise TransportError(f"cannot create the control socket {path}: "
                                 f"{e.strerror or e}; choose another --socket") from e
        s.listen(self.limits.backlog)
        s.setblocking(False)
        self.listener = s
        self.path = path
        self.sel.register(s, selectors.EVENT_READ, "listen")

    def close(self) -> None:
        for fd in list(self.conns):
            self._drop(fd)
        if self.listener is not None:
            try:
                self.sel.unregister(self.listener)
            except (KeyError, ValueError):
                pass
            self.listener.close()
            self.listener = None
            if self.path:
                try:
                    os.unlink(self.path)
                except OSError as e:
                    if e.errno != errno.ENOENT:
                        log.warn("socket_unlink_failed", path=self.path, error=str(e))

    # --- accepting ---

    def _over_limit(self, peer: Peer) -> str | None:
        mine = sum(1 for c in self.conns.values() if c.peer.uid == peer.uid)
        if peer.is_root:
            if mine >= self.limits.root_reserve:
                return f"too many connections from root (limit {self.limits.root_reserve})"
            return None
        if mine >= self.limits.per_uid:
            return (f"too many connections from uid {peer.uid} (limit {self.limits.per_uid} "
                    "per user); close some and retry")
        others = sum(1 for c in self.conns.values() if not c.peer.is_root)
        if others >= self.limits.max_clients:
            return f"the daemon is serving its limit of {self.limits.max_clients} clients; retry"
        return None

    def accept(self) -> None:
        assert self.listener is not None
        for _ in range(256):  # bounded: the loop's other work must not starve
            try:
                s, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # EMFILE and friends: keep serving those we have
                log.warn("accept_failed", error=str(e))
                return
            creds = s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            peer = Peer(*struct.unpack("3i", creds))
            s.setblocking(False)
            why = self._over_limit(peer)
            if why is not None:
                self.refused += 1
                try:
                    s.send(reply_error(why))  # a fresh socket's buffer takes one line
                except OSError:
                    pass
                s.close()
                continue
            self.conns[s.fileno()] = _Conn(s, peer, self.clock() + self.limits.idle_timeout)
            self.sel.register(s, selectors.EVENT_READ, s.fileno())

    # --- timeouts ---

    def next_deadline(self) -> float | None:
        return min((c.deadline for c in self.conns.values()), default=None)

    def expire(self) -> None:
        now = self.clock()
        for fd, c in list(self.conns.items()):
            if now >= c.deadline:
                self.expired += 1
                self._drop(fd)

    def _drop(self, fd: int) -> None:
        c = self.conns.pop(fd, None)
        if c is None:
            return
        try:
            self.sel.unregister(c.sock)
        except (KeyError, ValueError):
            pass
        c.sock.close()

    # --- one client's I/O ---

    def on_client(self, fd: int, events: int) -> None:
        c = self.conns.get(fd)
        if c is None:
            return
        if events & selectors.EVENT_READ and not c.closing and self._wants_input(c):
            try:
                data = c.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError:
                self._drop(fd)
                return
            if data == b"":
                c.closing = True  # the peer finished sending: answer what is whole, close
                if c.buf.strip() and len(c.buf) <= MAX_REQUEST:
                    c.buf += b"\n"  # a last unterminated request still gets its answer
            elif data:
                c.buf += data
        self._serve(c)
        if c.out:
            try:
                n = c.sock.send(c.out)
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError:
                self._drop(fd)
                return
            if n:
                del c.out[:n]
                c.deadline = self.clock() + self.limits.idle_timeout
            self._serve(c)  # room freed: lines held back by backpressure may go now
        if c.closing and not c.out and (not c.buf or len(c.buf) > MAX_REQUEST
                                        or b"\n" not in c.buf):
            self._drop(fd)
            return
        want = (selectors.EVENT_READ if self._wants_input(c) and not c.closing else 0) | (
            selectors.EVENT_WRITE if c.out else 0)
        if want == 0:
            if c.closing:
                self._drop(fd)
                return
            want = selectors.EVENT_READ  # nothing to send and buffer full cannot both hold
        self.sel.modify(c.sock, want, fd)

    def _wants_input(self, c: _Conn) -> bool:
        return len(c.out) < self.limits.max_pending_reply and len(c.buf) <= MAX_REQUEST

    def _serve(self, c: _Conn) -> None:
        """Answer whole lines while the reply buffer has room."""
        while len(c.out) < self.limits.max_pending_reply:
            nl = c.buf.find(b"\n")
            if nl < 0:
                if len(c.buf) > MAX_REQUEST:
                    c.out += reply_error(f"request larger than {MAX_REQUEST} bytes; closing")
                    c.buf.clear()
                    c.closing = True
                return
            line = bytes(c.buf[:nl])
            del c.buf[:nl + 1]
            if len(line) > MAX_REQUEST:
                c.out += reply_error(f"request larger than {MAX_REQUEST} bytes")
                continue
            if line.strip():
                c.out += self.handler(line, c.peer)
                c.deadline = self.clock() + self.limits.idle_timeout
