"""The daemon's telemetry plumbing: the events socket, the event store, the run-queue source.

Three pieces join the telemetry modules to the daemon's one loop (server.py), and all three
keep the rule that every sink runs on the loop's thread:

- ``open_events_socket``: the EventReceiver that in-process spans send to
  (``--events-socket``), after its directory passed the same checks as the control
  socket's (statedir.secure_dir: no symlinks, owned by root, writable by no one else).
  The loop registers its fd and calls ``handle_readable``, so ``on_event`` runs on the
  loop. It accepts spans only: the daemon's own event types (policy actions,
  registrations) are the daemon's to emit, and no other process, root's included, may
  write "ainative changed X" into its store or its metrics.
- ``StoreBuffer``: the event store (SQLite, ``<state-dir>/events.db``) behind a buffer.
  ``emit`` appends to a list; the loop flushes it in one transaction about every second
  and at shutdown, so SQLite never runs per event. The buffer is bounded: beyond it events
  are dropped and counted, and a failing write (a full disk) is logged once and counted;
  telemetry never stops the daemon. ``open_event_store`` opens the file with the state
  dir's rules (O_NOFOLLOW, our own regular file with one link), since the daemon runs as
  root in a directory an attacker may have prepared.
- ``RunqueueFeed``: the run-queue source (eBPF, else /proc schedstat), opened on a helper
  thread after the start-up scan (bcc may compile for seconds: the loop must not wait),
  watching the processes ``runqueue_pids`` picks. Its events arrive on its own thread and
  reach the loop through a ``LoopQueue``: a bounded deque and a wakeup socket that is
  written only when the queue goes from empty to not empty, so a burst costs one wakeup.
"""

from __future__ import annotations

import collections
import os
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, TypedDict

from ainative import log
from ainative.core.engine import Managed
from ainative.daemon import statedir
from ainative.telemetry.collector import CollectorError, EventReceiver
from ainative.telemetry.events import Event, RunqueueLatency
from ainative.telemetry.store import (
    DEFAULT_MAX_ROWS,
    DEFAULT_RETENTION_S,
    DEFAULT_STORE_NAME,
    EventStore,
    TraceFileError,
)

if TYPE_CHECKING:
    from ainative.telemetry.runqueue import RunqueueSource

FLUSH_EVERY_S = 1.0  # the store gets one transaction per this long, not one per event
MAX_BUFFERED = 50_000  # events waiting for the next flush; beyond: dropped and counted
MAX_QUEUED = 50_000  # run-queue events waiting for the loop; beyond: dropped and counted
MAX_RUNQUEUE_PIDS = 64  # processes the run-queue source watches at most
RUNQUEUE_INTERVAL_S = 1.0  # the schedstat fallback's sampling interval (eBPF: per wakeup)

RunqueueMode = Literal["auto", "schedstat", "off"]
RUNQUEUE_MODES: tuple[RunqueueMode, ...] = ("auto", "schedstat", "off")


class TelemetryError(Exception):
    """A telemetry piece cannot start; one line naming the option or file and the fix."""


# --- the events socket ---


class EventsSocketView(TypedDict):
    """The events socket in status: None/0 with --events-socket off."""

    path: str | None
    received: int
    accepted: int
    rejected: int
    rejected_by_reason: dict[str, int]
    last_rejection: str


def open_events_socket(path: str, on_event: Callable[[Event], None]) -> EventReceiver:
    """Bind the events socket at ``path`` (mode 0666: any local user's spans arrive) after
    checking its directory like the control socket's; raises TelemetryError."""
    path = os.path.abspath(path)
    try:
        dfd = statedir.secure_dir(os.path.dirname(path), mode=0o755,
                                  what="events socket directory", option="--events-socket")
    except statedir.StateDirError as e:
        msg = str(e)
        if "--events-socket" not in msg:
            msg = f"--events-socket {path}: {msg} (or choose another path)"
        raise TelemetryError(msg) from None
    try:
        searchable = bool(os.fstat(dfd).st_mode & stat.S_IXOTH)
    finally:
        os.close(dfd)
    try:
        # Spans only (trusted_uids empty): the daemon's own event types come from it alone.
        rx = EventReceiver(path, on_event, mode=0o666, trusted_uids=frozenset())
    except CollectorError as e:
        raise TelemetryError(f"--events-socket: {e} (or --events-socket off)") from None
    if not searchable:
        log.warn("events_socket_private", path=path,
                 detail="its directory is not searchable by other users: only its owner's "
                        "processes can send spans; chmod o+x the directory to take everyone's")
    return rx


def events_socket_view(rx: EventReceiver | None) -> EventsSocketView:
    if rx is None:
        return {"path": None, "received": 0, "accepted": 0, "rejected": 0,
                "rejected_by_reason": {}, "last_rejection": ""}
    s = rx.stats()
    return {"path": rx.path, "received": s.received, "accepted": s.accepted,
            "rejected": s.rejected, "rejected_by_reason": dict(s.rejected_by_reason),
            "last_rejection": s.last_rejection}


# --- the event store ---


class StoreView(TypedDict):
    """The event store in status."""

    path: str | None
    stored: int  # events written
    buffered: int  # waiting for the next flush
    dropped: int  # the buffer was full
    failed: int  # lost to a failed write
    retention_s: float | None
    last_error: str


def open_event_store(dir_fd: int, state_dir: str,
                     retention_s: float | None = DEFAULT_RETENTION_S) -> EventStore:
    """The store at ``<state_dir>/events.db``: a file of ours (created 0600 when absent),
    never a symlink, another user's file or a hard link; raises TelemetryError."""
    path = os.path.join(os.path.abspath(state_dir), DEFAULT_STORE_NAME)
    try:
        # The state dir is ours and writable by no one else, so the file checked here
        # through the directory's fd is the one SQLite opens by name just after.
        fd = statedir.open_in(dir_fd, DEFAULT_STORE_NAME, os.O_RDWR | os.O_CREAT)
    except statedir.StateDirError as e:
        raise TelemetryError(f"event store: {e}") from None
    os.close(fd)
    try:
        return EventStore(path, retention_s=retention_s, max_rows=DEFAULT_MAX_ROWS)
    except TraceFileError as e:
        why = str(e).split("; give a file written by", 1)[0]  # advice for trace files
        raise TelemetryError(f"event store: {why}; move it away (the daemon starts a new "
                             "one)") from None


@dataclass
class StoreBuffer:
    """An EventSink in front of an EventStore: appends on ``emit``, writes on ``flush``."""

    store: EventStore
    max_buffered: int = MAX_BUFFERED
    flush_every_s: float = FLUSH_EVERY_S
    stored: int = 0
    dropped: int = 0
    failed: int = 0
    last_error: str = ""
    _buf: list[Event] = field(default_factory=list)
    _last_flush: float = field(default_factory=time.monotonic)

    def emit(self, ev: Event, /) -> None:
        if len(self._buf) >= self.max_buffered:
            self.dropped += 1
            if self.dropped == 1:
                log.warn("event_store_buffer_full", limit=self.max_buffered,
                         action="events beyond it are dropped until the next flush "
                                "(count in status)")
            return
        self._buf.append(ev)

    def next_flush(self) -> float | None:
        """When the loop should wake to flush (monotonic), None while nothing waits."""
        return self._last_flush + self.flush_every_s if self._buf else None

    def maybe_flush(self) -> None:
        if self._buf and time.monotonic() - self._last_flush >= self.flush_every_s:
            self.flush()

    def flush(self) -> int:
        """Write what is buffered in one transaction; never raises. Returns how many."""
        self._last_flush = time.monotonic()
        batch, self._buf = self._buf, []
        if not batch:
            return 0
        try:
            n = self.store.add(batch)
        except TraceFileError as e:
            self.failed += len(batch)
            if not self.last_error:
                log.error("event_store_write_failed", error=str(e),
                          action="these events are lost; the daemon goes on (count in "
                                 "status)")
            self.last_error = str(e)[:200]
            return 0
        self.stored += n
        return n

    def close(self) -> None:
        self.flush()
        self.store.close()

    def view(self) -> StoreView:
        return {"path": self.store.path, "stored": self.stored, "buffered": len(self._buf),
                "dropped": self.dropped, "failed": self.failed,
                "retention_s": self.store.retention_s, "last_error": self.last_error}


def no_store_view() -> StoreView:
    return {"path": None, "stored": 0, "buffered": 0, "dropped": 0, "failed": 0,
            "retention_s": None, "last_error": ""}


# --- from another thread to the loop ---


class LoopQueue:
    """Events from any thread, handed to the loop: ``put`` anywhere, ``drain`` in the loop
    when ``fileno()`` is readable."""

    def __init__(self, max_queued: int = MAX_QUEUED) -> None:
        self.max_queued = max_queued
        self.dropped = 0
        self._q: collections.deque[Event] = collections.deque()
        self._lock = threading.Lock()
        self._signalled = False
        self._r, self._w = socket.socketpair()
        self._r.setblocking(False)
        self._w.setblocking(False)

    def fileno(self) -> int:
        return self._r.fileno()

    def put(self, ev: Event) -> None:
        with self._lock:
            if len(self._q) >= self.max_queued:
                self.dropped += 1
                return
            self._q.append(ev)
            if self._signalled:
                return
            self._signalled = True
        try:
            self._w.send(b"\0")
        except OSError:
            pass  # closed (shutdown) or full: the loop drains on its next pass anyway

    def drain(self) -> list[Event]:
        try:
            while self._r.recv(4096):
                pass
        except OSError:
            pass  # BlockingIOError: nothing more to read
        with self._lock:
            out = list(self._q)
            self._q.clear()
            self._signalled = False
        return out

    def close(self) -> None:
        self._r.close()
        self._w.close()


# --- the run-queue source ---


class RunqueueView(TypedDict):
    """The run-queue source in status."""

    mode: str  # --runqueue
    kind: str  # "ebpf", "schedstat", "starting", "none" or "off"
    why: str  # why it is not eBPF ("" when it is)
    watched: int  # processes handed to it
    events: int
    dropped: int  # lost in the kernel's ring buffer or on the way to the loop


def _ai_evidence(m: Managed) -> bool:
    return any(s.name in ("library", "gpu") for s in m.decision.matched_signals)


def runqueue_pids(managed: Iterable[Managed], serving_classes: frozenset[str],
                  limit: int = MAX_RUNQUEUE_PIDS) -> frozenset[int]:
    """Whom the run-queue source watches: the serving processes first, then the other
    processes with AI evidence (an AI runtime mapped, a GPU context), at most ``limit``.
    Background and training work without AI evidence is what they wait behind, not what
    is measured."""
    serving: list[int] = []
    other: list[int] = []
    for m in managed:
        if m.cls in serving_classes:
            serving.append(m.ident.pid)
        elif _ai_evidence(m):
            other.append(m.ident.pid)
    return frozenset((sorted(serving) + sorted(other))[:limit])


class RunqueueFeed:
    """The run-queue source for the daemon: opened on a helper thread (``open``), fed the
    pids the loop picks (``set_pids``), its events put on a LoopQueue."""

    def __init__(self, mode: RunqueueMode, queue: LoopQueue) -> None:
        self.mode = mode
        self.queue = queue
        self.source: RunqueueSource | None = None
        self.kind = "off" if mode == "off" else "starting"
        self.why = "--runqueue off" if mode == "off" else ""
        self._pids: frozenset[int] = frozenset()
        self._lock = threading.Lock()
        self._closed = False
        self._opener: threading.Thread | None = None

    def set_pids(self, pids: frozenset[int]) -> None:
        self._pids = pids  # one reference swap: the source's thread reads it

    def pids(self) -> set[int]:
        return set(self._pids)

    def _on_event(self, ev: RunqueueLatency) -> None:
        self.queue.put(ev)

    def open(self) -> None:
        """Open and start the source on a helper thread (no-op with --runqueue off)."""
        if self.mode == "off" or self._opener is not None:
            return
        self._opener = threading.Thread(target=self._open, name="runqueue-open", daemon=True)
        self._opener.start()

    def _open(self) -> None:
        try:
            from ainative.telemetry.runqueue import open_runqueue_source

            src = open_runqueue_source(self.pids, self._on_event,
                                       prefer="schedstat" if self.mode == "schedstat"
                                       else "ebpf", interval_s=RUNQUEUE_INTERVAL_S)
        except Exception as e:  # a source that cannot start costs run-queue data only
            self.kind, self.why = "none", f"the run-queue source failed to start: {e}"[:240]
            log.warn("runqueue_unavailable", why=self.why)
            return
        with self._lock:
            if self._closed:  # the daemon stopped while bcc compiled
                src.stop()
                return
            self.source = src
            src.start()
            self.kind, self.why = str(src.kind), str(src.why)
        log.event("runqueue_source", kind=self.kind, why=self.why or None,
                  watched=len(self._pids))

    def stop(self) -> None:
        """Stop the source (joining its thread, and the opener's if it is still opening)."""
        with self._lock:
            self._closed = True
        if self._opener is not None:
            self._opener.join()
        src = self.source
        if src is not None:
            try:
                src.stop()
            except Exception as e:
                log.warn("runqueue_stop_failed", error=str(e)[:200])

    def view(self) -> RunqueueView:
        src = self.source
        events = src.events if src is not None else 0
        dropped = (src.dropped if src is not None else 0) + self.queue.dropped
        return {"mode": self.mode, "kind": self.kind, "why": self.why,
                "watched": len(self._pids), "events": events, "dropped": dropped}


class TelemetryView(TypedDict):
    """The daemon's telemetry in status: the events socket, the store, the run-queue."""

    events_socket: EventsSocketView
    store: StoreView
    runqueue: RunqueueView
