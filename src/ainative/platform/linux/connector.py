"""Process events from the kernel's netlink process connector (fork, exec, exit),
with a polling fallback where the connector is unavailable (no root, no CONFIG_PROC_EVENTS)
or silent (a non-initial PID or user namespace, where the kernel ignores the request to
listen and so delivers nothing, though every call succeeds).

The connector has no maintained Python binding (pyroute2 does not cover it), so the few
structs it needs are packed here by hand, as linux/connector.h and linux/cn_proc.h lay
them out.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass

from ainative import log
from ainative.platform.base import EventKind, ProcessGone, ProcEvent
from ainative.platform.linux import procfs

__all__ = ["EventKind", "NetlinkSource", "PollSource", "ProcEvent", "ProcessEventSource",
           "open_event_source", "parse_messages"]

NETLINK_CONNECTOR = 11
CN_IDX_PROC = 1
CN_VAL_PROC = 1
PROC_CN_MCAST_LISTEN = 1
PROC_CN_MCAST_IGNORE = 2
NLMSG_DONE = 3
NLMSG_ERROR = 2
NLMSG_OVERRUN = 4

PROC_EVENT_FORK = 0x00000001
PROC_EVENT_EXEC = 0x00000002
PROC_EVENT_COMM = 0x00000200
PROC_EVENT_EXIT = 0x80000000

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_CN_MSG = struct.Struct("=IIIIHH")  # idx, val, seq, ack, len, flags
_EVENT_HDR = struct.Struct("=IIQ")  # what, cpu, timestamp_ns
_PAIR = struct.Struct("=ii")  # pid, tgid
_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
_RCVBUF = 4 << 20
_SELF_TEST_S = 0.2  # how long an opened connector has to report a thread of ours


class ProcessEventSource:
    """Base of the sources here (an EventSource): fileno() for select(), read() returns
    the events available now."""

    name: str = "base"
    fallback_reason: str | None = None
    overruns: int = 0

    def fileno(self) -> int:
        raise NotImplementedError

    def read(self) -> list[ProcEvent]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


def parse_messages(data: bytes) -> list[ProcEvent]:
    """Events in one datagram (which may hold several netlink messages)."""
    out: list[ProcEvent] = []
    off = 0
    while off + _NLMSGHDR.size <= len(data):
        length, mtype, _flags, _seq, _pid = _NLMSGHDR.unpack_from(data, off)
        if length < _NLMSGHDR.size:
            break
        if mtype == NLMSG_OVERRUN:
            out.append(ProcEvent("scan", 0, 0))
        elif mtype not in (NLMSG_ERROR,):
            ev = _parse_cn(data[off + _NLMSGHDR.size: off + length])
            if ev is not None:
                out.append(ev)
        off += (length + 3) & ~3
    return out


def _parse_cn(body: bytes) -> ProcEvent | None:
    if len(body) < _CN_MSG.size + _EVENT_HDR.size:
        return None
    idx, val, _seq, _ack, _ln, _fl = _CN_MSG.unpack_from(body, 0)
    if (idx, val) != (CN_IDX_PROC, CN_VAL_PROC):
        return None
    base = _CN_MSG.size
    what, _cpu, ts = _EVENT_HDR.unpack_from(body, base)
    d = base + _EVENT_HDR.size
    if what == PROC_EVENT_FORK and len(body) >= d + 2 * _PAIR.size:
        _ppid, ptgid = _PAIR.unpack_from(body, d)
        cpid, ctgid = _PAIR.unpack_from(body, d + _PAIR.size)
        return ProcEvent("fork", ctgid, cpid, ptgid, ts)
    if what in (PROC_EVENT_EXEC, PROC_EVENT_COMM, PROC_EVENT_EXIT) and len(body) >= d + 8:
        pid, tgid = _PAIR.unpack_from(body, d)
        kind: EventKind = ("exec" if what == PROC_EVENT_EXEC
                           else "comm" if what == PROC_EVENT_COMM else "exit")
        return ProcEvent(kind, tgid, pid, 0, ts)
    return None


def _control_message(op: int) -> bytes:
    payload = struct.pack("=I", op)
    cn = _CN_MSG.pack(CN_IDX_PROC, CN_VAL_PROC, 0, 0, len(payload), 0) + payload
    hdr = _NLMSGHDR.pack(_NLMSGHDR.size + len(cn), NLMSG_DONE, 0, 0, os.getpid())
    return hdr + cn


class NetlinkSource(ProcessEventSource):
    name = "netlink"

    def __init__(self) -> None:
        self.overruns = 0
        self._pending: list[ProcEvent] = []
        self._lost = False
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
        try:
            self._grow_buffer()
            self.sock.bind((0, CN_IDX_PROC))
            self.sock.send(_control_message(PROC_CN_MCAST_LISTEN))
            self.sock.setblocking(False)
        except OSError:
            self.sock.close()
            raise

    def _grow_buffer(self) -> None:
        # A bigger receive buffer makes overruns rarer on fork storms. SO_RCVBUFFORCE
        # (CAP_NET_ADMIN) passes net.core.rmem_max; without it the kernel caps SO_RCVBUF.
        for opt in (_SO_RCVBUFFORCE, socket.SO_RCVBUF):
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, opt, _RCVBUF)
                return
            except OSError:
                continue

    def fileno(self) -> int:
        return self.sock.fileno()

    def _overrun(self) -> None:
        self.overruns += 1
        log.warn("event_overrun", count=self.overruns)

    def _drain(self) -> tuple[list[ProcEvent], bool]:
        """The events queued now, and whether the kernel dropped any."""
        out: list[ProcEvent] = []
        lost = False
        for _ in range(4096):  # bounded: never starve the rest of the daemon's loop
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno == errno.ENOBUFS:
                    # The kernel dropped events; what follows is still good.
                    lost = True
                    self._overrun()
                    continue
                raise
            for ev in parse_messages(data):
                if ev.kind == "scan":
                    lost = True
                    self._overrun()
                else:
                    out.append(ev)
        return out, lost

    def read(self) -> list[ProcEvent]:
        out, lost = self._drain()
        if self._pending or self._lost:
            out, lost = self._pending + out, lost or self._lost
            self._pending, self._lost = [], False
        if lost:
            # Only a rescan can tell what was missed; one is enough, and it goes last so
            # that it sees the effect of the events that did arrive.
            out.append(ProcEvent("scan", 0, 0, 0, time.monotonic_ns()))
        return out

    def self_test(self, timeout: float = _SELF_TEST_S) -> bool:
        """Start (and join) a thread of our own and wait up to ``timeout`` for the kernel to
        report it: a connector that accepts every call yet delivers nothing (a namespace
        the checks did not recognise, a filter) shows here. The event is in the socket by
        the time the thread has started, so a working connector answers at once. Other
        events read meanwhile are kept for the next read(); an overrun counts as proof."""
        t = threading.Thread(target=lambda: None, name="ainative-connector-test")
        t.start()
        t.join()
        me, tid = os.getpid(), t.native_id
        deadline = time.monotonic() + timeout
        while True:
            evs, lost = self._drain()
            seen = any(e.pid == me and e.tid == tid for e in evs)
            self._pending += [e for e in evs if not (e.pid == me and e.tid == tid)]
            self._lost = self._lost or lost
            if seen or lost:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            select.select([self.sock], [], [], left)

    def close(self) -> None:
        try:
            self.sock.send(_control_message(PROC_CN_MCAST_IGNORE))
        except OSError:
            pass
        self.sock.close()


@dataclass(frozen=True)
class _Seen:
    start: int  # start time in clock ticks: tells a reused pid from the old process
    ppid: int
    comm: str
    exe: str | None  # None where it cannot be read (kernel threads, other users' processes)


def _proc_snapshot() -> dict[int, _Seen]:
    """Every process now, by pid."""
    out: dict[int, _Seen] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        pid = int(name)
        try:
            stat = procfs.read_stat(pid)
        except (ProcessGone, OSError):
            continue
        try:
            exe: str | None = os.readlink(f"/proc/{pid}/exe")
        except OSError:
            exe = None
        out[pid] = _Seen(stat.start_time, stat.ppid, stat.comm, exe)
    return out


class PollSource(ProcessEventSource):
    """Compares /proc snapshots every poll_interval. A thread does the waiting and wakes
    select() through a pipe; read() does the work on the daemon's own thread."""

    name = "poll"

    def __init__(self, poll_interval: float = 0.5, reason: str | None = None) -> None:
        self.interval = poll_interval
        self.fallback_reason = reason
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        # Non-blocking both ways: a daemon that stops reading must not wedge the ticker.
        os.set_blocking(self._w, False)
        self._stop = threading.Event()
        self._prev = _proc_snapshot()
        self._thread = threading.Thread(target=self._tick, name="ainative-poll", daemon=True)
        self._thread.start()

    def _tick(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                os.write(self._w, b".")
            except BlockingIOError:
                pass  # a wake-up is already pending
            except OSError:
                return

    def fileno(self) -> int:
        return self._r

    def read(self) -> list[ProcEvent]:
        try:
            while os.read(self._r, 4096):
                pass
        except BlockingIOError:
            pass
        now = _proc_snapshot()
        ts = time.monotonic_ns()
        out: list[ProcEvent] = []
        for pid, was in self._prev.items():
            still = now.get(pid)
            if still is None or still.start != was.start:
                out.append(ProcEvent("exit", pid, pid, 0, ts))
        for pid, cur in now.items():
            old = self._prev.get(pid)
            if old is None or old.start != cur.start:
                out.append(ProcEvent("fork", pid, pid, cur.ppid, ts))
                out.append(ProcEvent("exec", pid, pid, 0, ts))
            elif old.comm != cur.comm or (old.exe != cur.exe and None not in (old.exe, cur.exe)):
                # A changed name or binary is the only trace of an exec a poller can see
                # (an exec of the same binary between two polls goes unnoticed).
                out.append(ProcEvent("exec", pid, pid, 0, ts))
        self._prev = now
        return out

    def close(self) -> None:
        self._stop.set()
        # Joined before the fds close, or a late tick could write into a reused fd number.
        self._thread.join()
        for fd in (self._r, self._w):
            try:
                os.close(fd)
            except OSError:
                pass


def _polling(interval: float) -> str:
    return f"polling /proc every {interval:g} s"


def connector_problem() -> str | None:
    """Why the connector would deliver nothing here though it can be opened (a non-initial
    PID or user namespace: the kernel ignores a listen request from there), else None."""
    nested = procfs.nested_namespace()
    if nested is not None:
        return f"in a non-initial {nested} namespace the process connector delivers no events"
    return None


def open_error_reason(e: OSError) -> str:
    """A refusal to open the connector, in words."""
    if e.errno in (errno.EPERM, errno.EACCES):
        why = "not permitted (kernels before 6.6 need root / CAP_NET_ADMIN)"
    elif e.errno == errno.EPROTONOSUPPORT:
        why = ("kernel built without CONFIG_CONNECTOR / CONFIG_PROC_EVENTS, or not in the "
               "initial network namespace")
    else:
        why = str(e)
    return f"netlink process connector unavailable: {why}"


def open_event_source(poll_interval: float = 0.5, *,
                      self_test: bool = True) -> ProcessEventSource:
    """The netlink connector when it works, else a poller; the chosen one's ``name`` says
    which ('netlink' or 'poll') and ``fallback_reason`` why.

    The connector is not even tried in a non-initial PID or user namespace (it would
    accept everything and deliver nothing). Opened, it must report a thread of our own
    within 200 ms (``self_test``) or the poller takes over. Either way the caller sees
    one clear sentence in ``fallback_reason``."""
    problem = connector_problem()
    if problem is not None:
        return PollSource(poll_interval, f"{problem}; {_polling(poll_interval)}")
    try:
        src = NetlinkSource()
    except OSError as e:
        return PollSource(poll_interval, f"{open_error_reason(e)}; {_polling(poll_interval)}")
    try:
        ok = not self_test or src.self_test()
    except OSError as e:
        src.close()
        return PollSource(poll_interval, f"netlink process connector failed its self-test: "
                          f"{e}; {_polling(poll_interval)}")
    if not ok:
        src.close()
        return PollSource(poll_interval, "the netlink process connector reported no event "
                          f"for a thread of ours within {_SELF_TEST_S * 1000:.0f} ms; "
                          + _polling(poll_interval))
    return src
