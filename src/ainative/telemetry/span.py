"""In-process spans: time a request in user code and tell ainative, at a cost of about half
a microsecond (benchmarks/bench_span_cost.py), without ever blocking or failing the code
being timed.

Three ways in, all ending in the same few lines of hot path::

    with ainative.span("infer", request=req_id):   # a block
        ...

    @ainative.traced            # or @ainative.traced("infer"): a function (or coroutine)
    def predict(x): ...

    sess = traced_session(onnxruntime.InferenceSession(path))   # every sess.run(...)

How it stays cheap and harmless:

- On exit a span reads two clocks and appends one small tuple (end time, duration, thread
  id, name, request, sequence number) to a bounded ``collections.deque``: no lock, no
  syscall, no allocation beyond the tuple. When the ring is full the oldest entries fall
  out and are counted (their sequence numbers leave a gap).
- A daemon thread, started on first use, wakes every ``IDLE_SLEEP_S`` and drains the
  ring (``CHUNK`` spans at a time, yielding the GIL between chunks: a traced thread
  running Python never waits long for it), encodes each span as an
  ``inference_latency`` event (the bytes of ``events.encode``, without its asdict) and sends
  it as one datagram on a non-blocking AF_UNIX SOCK_DGRAM socket to the collector at
  ``$AINATIVE_EVENTS`` (default ``ainative.ipc.client.DEFAULT_EVENTS_SOCKET``;
  ``AINATIVE_EVENTS=off`` sends nothing). No listener, a full collector queue, a refused
  permission: the datagram is dropped and counted by reason, never raised. After a
  failed connect the thread tries again at most once per ``RETRY_AFTER_S``. A thread
  that ends spans faster than the collector takes them (a tight loop of empty spans;
  one datagram is a send(2)) overflows the ring: counted, never slowed down.
- The collector learns the sender's pid from the kernel (SCM_CREDENTIALS), so a process
  can only report its own spans; the pid in the event is ``os.getpid()``.
- Fork: the child starts with an empty ring, fresh counters and no sender thread (the
  parent's thread does not exist there); the first span in the child starts its own.
- At interpreter exit the ring is flushed for at most ``FLUSH_AT_EXIT_S``.

``stats()`` says what happened to the spans of this process (sent, dropped by reason,
pending); ``flush()`` sends what is queued now (tests, short scripts, benchmarks).
"""

from __future__ import annotations

import atexit
import collections
import errno
import functools
import inspect
import itertools
import json
import os
import select
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar, cast, overload

from ainative.telemetry.events import MAX_TEXT

RING_SIZE = 65536  # spans waiting to be sent; about 6 MB at the limit
CHUNK = 256  # spans sent before the sender thread gives the GIL up for a moment
IDLE_SLEEP_S = 0.02  # the sender wakes this often and sends what the ring holds then
RETRY_AFTER_S = 1.0  # after a failed connect, the next try is this much later
BUSY_WAIT_S = 0.01  # a full collector queue: wait this long for room, BUSY_TRIES times
BUSY_TRIES = 3  # then drop (the sender thread waits, the traced code never does)
BUSY_BUDGET_S = 0.05  # at most this much waiting per chunk: a stuck collector costs drops
FLUSH_AT_EXIT_S = 0.5

_perf_ns = time.perf_counter_ns
_wall_ns = time.time_ns

P = ParamSpec("P")
R = TypeVar("R")

# (end ts CLOCK_REALTIME ns, duration ns, tid, name, request, sequence number)
_Item = tuple[int, int, int, Any, Any, int]

# Everything the fork handler resets. Module globals rather than attributes of an object:
# the hot path reads each with one dictionary lookup.
_ring: collections.deque[_Item] = collections.deque(maxlen=RING_SIZE)
_seq = itertools.count()
_local = threading.local()
_pid = os.getpid()
_sender: _Sender | None = None
_start_lock = threading.Lock()


@dataclass(frozen=True)
class SpanStats:
    """What happened to this process's spans so far (since start, or since fork)."""

    recorded: int  # spans that ended
    sent: int  # datagrams the collector's socket took
    dropped: int  # all reasons together
    pending: int  # still in the ring
    dropped_by_reason: dict[str, int] = field(default_factory=dict)
    path: str | None = None  # the collector socket (None before the first span)


_REASONS = ("no_listener", "denied", "busy", "overflow", "disabled", "error")


class _Sender(threading.Thread):
    """Drains the ring into the collector socket. Only this thread (or flush(), under
    ``lock``) pops the ring and touches the socket and the counters."""

    def __init__(self, path: str) -> None:
        super().__init__(name="ainative-span-sender", daemon=True)
        self.path = path
        self.disabled = path.strip().lower() == "off"
        self.lock = threading.Lock()
        self.sock: socket.socket | None = None
        self.retry_at = 0.0
        self.wait_budget = BUSY_BUDGET_S
        self.sent = 0
        self.taken = 0  # items popped from the ring
        self.expected = 0  # the sequence number of the next span, to see overflow gaps
        self.dropped = dict.fromkeys(_REASONS, 0)
        self.pid = _pid
        self._names: dict[Any, str] = {}

    # --- the thread ---

    def run(self) -> None:
        # Wake every IDLE_SLEEP_S and send what is there then, CHUNK spans at a time with
        # the GIL given up between chunks: the traced threads' Python code never waits
        # long for this one, and between wakeups it costs nothing.
        while True:
            time.sleep(IDLE_SLEEP_S)
            try:
                todo = len(_ring)
                while todo > 0:
                    with self.lock:
                        done = self.drain(min(todo, CHUNK))
                    if not done:
                        break
                    todo -= done
                    time.sleep(0)
            except Exception:  # never die: a dead sender would silently fill the ring
                self.dropped["error"] += 1

    def drain(self, limit: int) -> int:
        """Send up to ``limit`` spans from the ring; the caller holds ``self.lock``."""
        n = 0
        ring = _ring
        self.wait_budget = BUSY_BUDGET_S
        while n < limit:
            try:
                item = ring.popleft()
            except IndexError:
                break
            n += 1
            self.taken += 1
            seq = item[5]
            if seq > self.expected:  # the ring was full: these fell out before we got them
                self.dropped["overflow"] += seq - self.expected
            self.expected = seq + 1
            if self.disabled:
                self.dropped["disabled"] += 1
                continue
            if self.sock is None and time.monotonic() < self.retry_at:
                self.dropped["no_listener"] += 1  # not even encoded: nobody would read it
                continue
            try:
                data = self._encode(item)
            except Exception:
                self.dropped["error"] += 1
                continue
            why = self._send(data)
            if why is None:
                self.sent += 1
            else:
                self.dropped[why] += 1
        return n

    # --- encoding: the bytes of events.encode(InferenceLatency(...)), without asdict ---

    def _text(self, v: Any) -> str:
        """A JSON string literal of a name or request id, truncated to the schema's limit
        (span names repeat, so their encodings are cached)."""
        s = self._names.get(v)
        if s is None:
            t = v if isinstance(v, str) else str(v)
            s = json.dumps(t[:MAX_TEXT])
            if len(self._names) >= 1024:
                self._names.clear()
            self._names[v] = s
        return s

    def _encode(self, item: _Item) -> bytes:
        ts, dur, tid, name, request, _ = item
        req = "null" if request is None else json.dumps(
            (request if isinstance(request, str) else str(request))[:MAX_TEXT])
        return (f'{{"ts_ns":{ts},"pid":{self.pid},"tid":{tid},"name":{self._text(name)},'
                f'"duration_ns":{max(dur, 0)},"request":{req},"runqueue_wait_ns":null,'
                f'"ran_instead":[],"type":"inference_latency"}}').encode()

    # --- the socket ---

    def _close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def _connect(self) -> str | None:
        now = time.monotonic()
        if now < self.retry_at:
            return "no_listener"
        self.retry_at = now + RETRY_AFTER_S
        s = socket.socket(socket.AF_UNIX,
                          socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        try:
            s.connect(self.path)
        except OSError as e:
            s.close()
            return "denied" if e.errno in (errno.EACCES, errno.EPERM) else "no_listener"
        self.sock = s
        return None

    def _send(self, data: bytes) -> str | None:
        """None when sent, else why it was dropped."""
        if self.sock is None:
            why = self._connect()
            if why is not None:
                return why
        assert self.sock is not None
        for attempt in range(BUSY_TRIES + 1):
            try:
                self.sock.send(data)
                return None
            except BlockingIOError:
                # The collector's queue is full (net.unix.max_dgram_qlen is small, 10 by
                # default): give it a moment, on this thread only, then drop.
                if attempt < BUSY_TRIES and self.wait_budget > 0:
                    t0 = time.monotonic()
                    select.select([], [self.sock], [], min(BUSY_WAIT_S, self.wait_budget))
                    self.wait_budget -= time.monotonic() - t0
                    continue
                return "busy"
            except OSError as e:
                self._close()
                if e.errno in (errno.ECONNREFUSED, errno.ENOENT, errno.ENOTCONN,
                               errno.ECONNRESET):
                    # The collector went away (or restarted: a new socket at the same path).
                    # Reconnect now; if nobody is there, the retry limit holds further tries.
                    self.retry_at = 0.0
                    why = self._connect()
                    if why is not None:
                        return why
                    continue
                return "denied" if e.errno in (errno.EACCES, errno.EPERM) else "error"
        return "busy"


def _start() -> None:
    """Start the sender thread. Never raises into the span: a thread that cannot start
    (interpreter shutdown, no resources) leaves the ring to fill and overflow, counted."""
    global _sender
    with _start_lock:
        if _sender is not None:
            return
        try:
            from ainative.ipc.client import default_events_path

            path = default_events_path()
        except Exception:
            path = "off"
        s = _Sender(path)
        try:
            s.start()
        except Exception:
            pass  # stats() still counts: the ring's overflow, what is pending
        _sender = s


def _record(t0: int, name: Any, request: Any) -> None:
    """The hot path: one tuple into the ring."""
    dur = _perf_ns() - t0
    loc = _local
    try:
        tid = loc.tid
    except AttributeError:
        tid = loc.tid = threading.get_native_id()
    _ring.append((_wall_ns(), dur, tid, name, request, next(_seq)))
    if _sender is None:
        _start()


class span:
    """Time a block: ``with span("infer", request=req_id): ...``.

    The span ends (and is recorded) even when the block raises; the exception goes on
    unchanged. ``request`` is the caller's request id (converted with str(), at most 128
    characters), shown by ``trace report`` beside the slowest requests.
    """

    __slots__ = ("_t0", "name", "request")

    def __init__(self, name: str = "infer", request: Any = None) -> None:
        self.name = name
        self.request = request
        self._t0 = 0

    def __enter__(self) -> span:
        self._t0 = _perf_ns()
        return self

    def __exit__(self, et: object, ev: object, tb: object) -> None:
        # _record, inlined: a function call is a fifth of a span's cost.
        dur = _perf_ns() - self._t0
        loc = _local
        try:
            tid = loc.tid
        except AttributeError:
            tid = loc.tid = threading.get_native_id()
        _ring.append((_wall_ns(), dur, tid, self.name, self.request, next(_seq)))
        if _sender is None:
            _start()


@overload
def traced(arg: Callable[P, R], /) -> Callable[P, R]: ...
@overload
def traced(arg: str | None = None, /) -> Callable[[Callable[P, R]], Callable[P, R]]: ...


def traced(arg: Callable[P, R] | str | None = None, /) -> Any:
    """Decorator: every call of the function is a span, named ``name`` or, bare
    (``@traced``), after the function's qualified name. Coroutine functions are timed
    from the first await to their result."""

    def wrap(fn: Callable[P, R], name: str) -> Callable[P, R]:
        if inspect.iscoroutinefunction(fn):
            afn = cast(Callable[P, Awaitable[Any]], fn)

            @functools.wraps(fn)
            async def awrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                t0 = _perf_ns()
                try:
                    return await afn(*args, **kwargs)
                finally:
                    _record(t0, name, None)

            return cast(Callable[P, R], awrapper)

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            t0 = _perf_ns()
            try:
                return fn(*args, **kwargs)
            finally:
                _record(t0, name, None)

        return wrapper

    if callable(arg):
        return wrap(arg, getattr(arg, "__qualname__", "traced"))

    def deco(fn: Callable[P, R]) -> Callable[P, R]:
        return wrap(fn, arg if arg is not None else getattr(fn, "__qualname__", "traced"))

    return deco


class TracedSession:
    """An onnxruntime InferenceSession whose ``run`` (and ``run_with_iobinding``,
    ``run_with_ort_values``) calls are spans; everything else is the session's own.

    ``run`` also takes an optional keyword ``request`` (the caller's request id), which
    onnxruntime never sees.
    """

    __slots__ = ("_name", "_session")

    def __init__(self, session: Any, name: str) -> None:
        self._session = session
        self._name = name

    @property
    def session(self) -> Any:
        """The wrapped InferenceSession."""
        return self._session

    def run(self, output_names: Any, input_feed: Any, run_options: Any = None, *,
            request: Any = None) -> Any:
        t0 = _perf_ns()
        try:
            return self._session.run(output_names, input_feed, run_options)
        finally:
            _record(t0, self._name, request)

    def run_with_iobinding(self, iobinding: Any, run_options: Any = None) -> Any:
        t0 = _perf_ns()
        try:
            return self._session.run_with_iobinding(iobinding, run_options)
        finally:
            _record(t0, self._name, None)

    def run_with_ort_values(self, output_names: Any, input_dict_ort_values: Any,
                            run_options: Any = None) -> Any:
        t0 = _perf_ns()
        try:
            return self._session.run_with_ort_values(output_names, input_dict_ort_values,
                                                     run_options)
        finally:
            _record(t0, self._name, None)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._session, attr)

    def __repr__(self) -> str:
        return f"TracedSession({self._session!r}, name={self._name!r})"


def traced_session(session: Any, name: str | None = None) -> TracedSession:
    """Wrap an onnxruntime InferenceSession so that each ``run`` is a span named ``name``,
    or after the model's graph name (``infer`` when it has none)."""
    if name is None:
        try:
            name = str(session.get_modelmeta().graph_name) or "infer"
        except Exception:
            name = "infer"
    return TracedSession(session, name)


def flush(timeout: float = 1.0) -> bool:
    """Send what is in the ring now, for at most ``timeout`` seconds. True when the ring
    was emptied (whether each span was sent or dropped: see stats())."""
    s = _sender
    if s is None:
        return not _ring
    deadline = time.monotonic() + timeout
    while _ring and time.monotonic() < deadline:
        if s.lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            try:
                s.drain(256)
            finally:
                s.lock.release()
    return not _ring


def stats() -> SpanStats:
    """Counts for this process's spans (since start, or since fork in a child)."""
    s = _sender
    pending = len(_ring)
    if s is None:
        return SpanStats(recorded=pending, sent=0, dropped=0, pending=pending)
    dropped = {k: v for k, v in s.dropped.items() if v}
    overflow_now = 0
    if _ring:  # spans that fell out of a full ring and that the sender has not seen yet
        overflow_now = max(0, _ring[0][5] - s.expected)
    if overflow_now:
        dropped["overflow"] = dropped.get("overflow", 0) + overflow_now
    total_dropped = sum(dropped.values())
    return SpanStats(recorded=s.sent + total_dropped + pending, sent=s.sent,
                     dropped=total_dropped, pending=pending, dropped_by_reason=dropped,
                     path=s.path)


def _after_fork_in_child() -> None:
    global _ring, _seq, _local, _pid, _sender, _start_lock
    _ring = collections.deque(maxlen=RING_SIZE)
    _seq = itertools.count()
    _local = threading.local()  # the parent's thread ids mean nothing here
    _pid = os.getpid()
    _sender = None  # the parent's thread does not exist in the child
    _start_lock = threading.Lock()


def _at_exit() -> None:
    if _sender is not None:
        flush(FLUSH_AT_EXIT_S)


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_at_exit)
