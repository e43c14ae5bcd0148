"""The event collector: the receiving end of the in-process spans' datagrams.

``EventReceiver`` binds an AF_UNIX SOCK_DGRAM socket (the daemon's
``/run/ainative/events.sock``, or ``trace record``'s own), decodes each datagram with
``events.decode`` and hands the valid events to ``on_event``. It runs either inside a
select loop (``fileno()`` + ``handle_readable()``, the daemon) or on its own thread
(``run(stop)``, ``trace record``).

Who may send what. The socket is writable by every local user (mode 0o666 by default):
any process may report its own spans. Nothing in a datagram is trusted:

- SO_PASSCRED makes the kernel attach the sender's pid, uid and gid to every datagram
  (SCM_CREDENTIALS; a process can assert another pid only with CAP_SYS_ADMIN). A span
  whose ``pid`` is not the sender's is rejected: a process reports its own spans, never
  another's. (A sender in another pid namespace sees other pid numbers than we do, so its
  spans are rejected too.)
- Only ``inference_latency`` is accepted from anyone. The daemon's event types (policy
  actions, registrations, run-queue and GPU samples) are accepted only from root or from
  our own uid: another user must not be able to write "ainative changed X" into a trace.
- A span carries no attribution fields (runqueue_wait_ns, ran_instead): those come from
  the run-queue source and are joined at report time; a span that sets them is rejected,
  so no one can blame another process for their latency.
- Bad datagrams (not JSON, unknown type or key, oversized, truncated) are counted per
  reason (``stats()``) and dropped; nothing a sender does raises out of this module.

Bounded work: ``handle_readable`` reads at most ``max_batch`` datagrams per call, so a
flood cannot starve the rest of a select loop; what it leaves stays queued in the kernel
(net.unix.max_dgram_qlen datagrams), and senders drop and count beyond that.
"""

from __future__ import annotations

import os
import select
import socket
import stat
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from ainative.telemetry import events
from ainative.telemetry.events import Event, EventError, InferenceLatency

_CREDS = struct.Struct("3i")  # struct ucred: pid, uid, gid
_ANC_SIZE = socket.CMSG_SPACE(_CREDS.size)
SPAN_TYPES = frozenset({InferenceLatency.TYPE})
RCVBUF = 4 << 20  # room for bursts: ~20k span datagrams of the kernel's accounting


class CollectorError(Exception):
    """The collector socket cannot be set up; one line naming the path and the fix."""


@dataclass(frozen=True)
class Sender:
    """Who sent a datagram, as the kernel says (SCM_CREDENTIALS)."""

    pid: int
    uid: int
    gid: int


@dataclass(frozen=True)
class ReceiverStats:
    """What the receiver did with the datagrams it read."""

    received: int
    accepted: int
    rejected: int
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    last_rejection: str = ""  # the last reason in words, with the sender's pid


class EventReceiver:
    """Receive events on an AF_UNIX datagram socket at ``path``.

    ``on_event(event)`` is called for each accepted event, on the thread that calls
    ``handle_readable`` (or ``run``). ``trusted_uids`` may send every event type
    (default: root and our euid); everyone else only spans. The socket is created with
    ``mode``; its directory must already exist (and be trusted by the caller).
    """

    def __init__(self, path: str, on_event: Callable[[Event], None], *,
                 mode: int = 0o666, max_batch: int = 512,
                 trusted_uids: frozenset[int] | None = None) -> None:
        self.path = path
        self.on_event = on_event
        self.max_batch = max_batch
        self.trusted_uids = (trusted_uids if trusted_uids is not None
                             else frozenset({0, os.geteuid()}))
        self._received = 0
        self._accepted = 0
        self._rejected: dict[str, int] = {}
        self._last_rejection = ""
        self._lock = threading.Lock()  # stats() may be read from another thread
        self._sock = self._bind(path, mode)
        self._ino = os.stat(path).st_ino

    # --- the socket ---

    @staticmethod
    def _bind(path: str, mode: int) -> socket.socket:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise CollectorError(f"cannot use the events socket {path}: {e.strerror}; "
                                 "choose another path") from None
        else:
            if not stat.S_ISSOCK(st.st_mode) or st.st_uid != os.geteuid():
                what = "a symlink" if stat.S_ISLNK(st.st_mode) else (
                    "not a socket" if not stat.S_ISSOCK(st.st_mode)
                    else f"a socket of uid {st.st_uid}")
                raise CollectorError(
                    f"the events socket {path} exists and is {what}, not a socket of uid "
                    f"{os.geteuid()}; remove it or choose another path")
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            try:
                probe.connect(path)
            except OSError:
                os.unlink(path)  # ours, and nobody is bound to it: a stale socket
            else:
                raise CollectorError(f"a collector is already receiving on {path}; stop it "
                                     "or choose another path")
            finally:
                probe.close()
        s = socket.socket(socket.AF_UNIX,
                          socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            except OSError:
                pass  # the kernel's default is a smaller buffer, not a failure
            # Bind with a private mode, then open it up: no moment with the umask's mode.
            old = os.umask(0o177)
            try:
                s.bind(path)
            finally:
                os.umask(old)
            os.chmod(path, mode)
        except OSError as e:
            s.close()
            raise CollectorError(f"cannot create the events socket {path}: "
                                 f"{e.strerror or e}; choose another path") from None
        return s

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        """Close the socket and remove it, if it is still the one we bound."""
        if self._sock.fileno() < 0:
            return
        self._sock.close()
        try:
            st = os.lstat(self.path)
            if stat.S_ISSOCK(st.st_mode) and st.st_ino == self._ino:
                os.unlink(self.path)
        except OSError:
            pass  # already gone, or the directory is not reachable: nothing to clean

    def __enter__(self) -> EventReceiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- receiving ---

    def _reject(self, reason: str, sender: Sender | None, detail: str = "") -> None:
        with self._lock:
            self._rejected[reason] = self._rejected.get(reason, 0) + 1
            who = f"pid {sender.pid} uid {sender.uid}" if sender else "unknown sender"
            self._last_rejection = f"{reason} from {who}" + (f": {detail}" if detail else "")

    @staticmethod
    def _sender(ancdata: list[tuple[int, int, bytes]]) -> Sender | None:
        for level, kind, data in ancdata:
            if (level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS
                    and len(data) >= _CREDS.size):
                return Sender(*_CREDS.unpack_from(data))
        return None

    def _check(self, ev: Event, sender: Sender) -> tuple[str, str] | None:
        """None when the sender may report ``ev``; else (reason, detail)."""
        if ev.TYPE not in SPAN_TYPES:
            if sender.uid not in self.trusted_uids:
                return ("type_not_allowed", f"{ev.TYPE} events are accepted only from root "
                        f"or uid {os.geteuid()}")
            return None  # the daemon's events are about other processes: pid is theirs
        if ev.pid != sender.pid:
            return ("pid_mismatch", f"event for pid {ev.pid} sent by pid {sender.pid}")
        if isinstance(ev, InferenceLatency) and (ev.runqueue_wait_ns is not None
                                                 or ev.ran_instead):
            return ("attribution_from_sender",
                    "a span must not carry runqueue_wait_ns or ran_instead")
        return None

    def handle_readable(self) -> int:
        """Read what is queued, at most ``max_batch`` datagrams; returns how many."""
        n = 0
        while n < self.max_batch:
            try:
                data, anc, flags, _ = self._sock.recvmsg(events.MAX_EVENT_BYTES + 1,
                                                         _ANC_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:  # ENOMEM and friends: try again on the next wakeup
                self._reject("receive_error", None, str(e))
                break
            n += 1
            with self._lock:
                self._received += 1
            sender = self._sender(anc)
            if sender is None or flags & socket.MSG_CTRUNC:
                self._reject("no_credentials", sender)
                continue
            if flags & socket.MSG_TRUNC or len(data) > events.MAX_EVENT_BYTES:
                self._reject("oversized", sender,
                             f"over the {events.MAX_EVENT_BYTES}-byte limit")
                continue
            try:
                ev = events.decode(data)
            except EventError as e:
                self._reject("invalid", sender, str(e))
                continue
            why = self._check(ev, sender)
            if why is not None:
                self._reject(why[0], sender, why[1])
                continue
            with self._lock:
                self._accepted += 1
            try:
                self.on_event(ev)
            except Exception as e:  # the consumer's bug must not kill the collector
                self._reject("handler_error", sender, f"{type(e).__name__}: {e}"[:200])
        return n

    def run(self, stop: threading.Event, poll_s: float = 0.1) -> None:
        """Receive until ``stop`` is set (a thread's target); returns within ``poll_s``."""
        while not stop.is_set():
            try:
                ready, _, _ = select.select([self._sock], [], [], poll_s)
            except (OSError, ValueError):  # closed under us
                return
            if ready:
                self.handle_readable()

    def stats(self) -> ReceiverStats:
        with self._lock:
            return ReceiverStats(received=self._received, accepted=self._accepted,
                                 rejected=sum(self._rejected.values()),
                                 rejected_by_reason=dict(self._rejected),
                                 last_rejection=self._last_rejection)
