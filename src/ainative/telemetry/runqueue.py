"""Run-queue latency of AI processes' threads: per wakeup from eBPF, else per interval from
/proc schedstat.

A thread that became runnable and waited for a CPU adds exactly that wait to its request's
latency; this source measures it for the threads of the processes ainative watches (the
caller's ``pids()``), and, with eBPF, says who had the CPU instead.

eBPF (``kind == "ebpf"``), in the manner of bcc's runqlat but per thread and filtered:

* ``sched:sched_wakeup`` / ``sched:sched_wakeup_new`` stamp the enqueue time of a watched
  thread; ``sched:sched_switch`` stamps a watched thread switched out while still runnable
  (preempted: its state is "R" or "R+"), and at switch-in of a stamped thread computes the
  wait and puts one event in a BPF ring buffer, which this side empties every
  ``batch_s`` (20 ms: waking the reader at each event would cost a context switch per
  event and take CPU from the very threads measured). A full buffer drops the event and
  counts it (``dropped``): the scheduler is never slowed down by a slow reader.
* Which threads are watched: the tracepoints carry thread ids only, no process id
  (tgid), and reading ``task_struct`` is not layout-safe with headers of another kernel.
  So the kernel side keeps two maps that this side writes: ``watched`` (tgids, from
  ``pids()``) and ``tids`` (tid -> tgid, listed from /proc for those processes every
  ``refresh_s``). At ``sched_switch`` the current task *is* the previous one, so
  ``bpf_get_current_pid_tgid()`` gives its true tgid: a watched process's thread that
  /proc had not listed yet is learnt the first time it is switched out. A brand-new task
  whose creator is watched is stamped at ``sched_wakeup_new`` as "new": it may be a
  thread (same tgid) or a forked child, so this side checks /proc before reporting it.
* Who ran instead: every CPU keeps its last 16 run slices (process id, comm, start,
  end; the tgid again from ``bpf_get_current_pid_tgid()`` at switch-out). At switch-in
  of a waiting thread the slices that overlap its wait on that CPU are summed per process
  into at most 4 entries (a 5th process replaces the smallest when it ran longer), so the
  event names what had the CPU, at least the task it took the CPU from: ``pid`` is that
  task's process id, ``comm`` its thread's name. Idle time (pid 0) is not a task and is
  left out. A wait longer than 16 slices is counted
  ("truncated") and its ran_instead covers the last 16.
* Time: ``bpf_ktime_get_ns()`` is CLOCK_MONOTONIC; events carry CLOCK_REALTIME
  (``ts_ns``), converted with an offset measured at start and again at every refresh
  (so a clock step or NTP slew is followed within ``refresh_s``).

schedstat (``kind == "schedstat"``): every ``interval_s`` each watched thread's
``/proc/PID/task/TID/schedstat`` run-queue field gives the wait it accumulated since the
last sample; a positive delta above ``min_wait_ns`` is one event (``ts_ns`` = sample time,
``ran_instead`` empty). It needs no privileges and catches every wait, but cannot say
which wakeup waited nor who ran.

:func:`open_runqueue_source` never raises for a missing eBPF prerequisite: it returns the
schedstat source with ``why`` saying what is missing and how to fix it.
"""

from __future__ import annotations

import contextlib
import ctypes as ct
import functools
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from ainative import log
from ainative.platform import get_platform
from ainative.platform.backend import Backend
from ainative.platform.base import ProcessGone
from ainative.telemetry import bpf_setup
from ainative.telemetry.events import RanInstead, RunqueueLatency

__all__ = ["RunqueueSource", "ebpf_preflight", "open_runqueue_source",
           "realtime_offset_ns"]

PidsFn = Callable[[], set[int]]
OnEvent = Callable[[RunqueueLatency], None]

NRAN = 4  # ran_instead entries per event
NHIST = 16  # run slices remembered per CPU
MAX_PROCS = 4096
MAX_THREADS = 65536
RINGBUF_PAGES = 64  # 256 KiB: about 1,500 events in flight

F_NEW = 2  # stamped at sched_wakeup_new from a watched creator: check it is a thread
F_TRUNCATED = 4

STAT_EMITTED, STAT_DROPPED, STAT_TRUNCATED = 0, 1, 2

# sched_switch's prev_state: the task-state bits (TASK_REPORT, 0x7f) and TASK_REPORT_IDLE
# (0x80) are all clear for a runnable task; TASK_REPORT_MAX (0x100) marks a preemption
# ("R+"). The same mask the tracepoint's own print format applies.
TASK_REPORT_MASK = 0xFF
BPF_RB_NO_WAKEUP = 1

BPF_TEXT = r"""
#define NHIST __NHIST__
#define NRAN __NRAN__
#define F_NEW 2
#define F_TRUNCATED 4

struct slice_t { u32 pid; u32 _pad; u64 start; u64 end; char comm[16]; };
struct cpu_t { u64 last; u64 head; struct slice_t s[NHIST]; };
struct start_t { u64 ts; u32 tgid; u32 flags; };
struct ran_t { u32 pid; u32 _pad; u64 ns; char comm[16]; };
struct event_t { u64 ts; u64 wait; u32 tgid; u32 tid; u32 cpu; u32 flags;
                 struct ran_t ran[NRAN]; };

BPF_HASH(watched, u32, u8, __MAX_PROCS__);
BPF_HASH(tids, u32, u32, __MAX_THREADS__);
BPF_TABLE("lru_hash", u32, struct start_t, start, __MAX_THREADS__);
BPF_PERCPU_ARRAY(cpuhist, struct cpu_t, 1);
BPF_PERCPU_ARRAY(stats, u64, 4);
BPF_RINGBUF_OUTPUT(events, __RINGBUF_PAGES__);

static __always_inline void bump(int i) {
    u64 *v = stats.lookup(&i);
    if (v) (*v)++;
}

static __always_inline void stamp(u32 tid, u64 ts, u32 tgid, u32 flags) {
    struct start_t s = {};
    s.ts = ts; s.tgid = tgid; s.flags = flags;
    start.update(&tid, &s);
}

TRACEPOINT_PROBE(sched, sched_wakeup) {
    u32 tid = args->pid;
    u32 *tgid = tids.lookup(&tid);
    if (tgid)
        stamp(tid, bpf_ktime_get_ns(), *tgid, 0);
    return 0;
}

TRACEPOINT_PROBE(sched, sched_wakeup_new) {
    u32 tid = args->pid;
    u32 *tgid = tids.lookup(&tid);
    if (tgid) {
        stamp(tid, bpf_ktime_get_ns(), *tgid, 0);
        return 0;
    }
    u32 creator = bpf_get_current_pid_tgid() >> 32;
    if (watched.lookup(&creator))
        stamp(tid, bpf_ktime_get_ns(), creator, F_NEW);
    return 0;
}

TRACEPOINT_PROBE(sched, sched_switch) {
    u64 now = bpf_ktime_get_ns();
    u32 prev = args->prev_pid;
    u32 next = args->next_pid;
    int zero = 0;
    struct cpu_t *c = cpuhist.lookup(&zero);
    if (!c)
        return 0;
    if (prev != 0) {
        /* current is still prev here: its tgid is the true one */
        u64 id = bpf_get_current_pid_tgid();
        u32 tgid = (u32)id == prev ? id >> 32 : prev;
        struct slice_t *sl = &c->s[c->head & (NHIST - 1)];
        sl->pid = tgid;
        sl->start = c->last;
        sl->end = now;
        bpf_probe_read_kernel(sl->comm, sizeof(sl->comm), args->prev_comm);
        c->head++;
        if (watched.lookup(&tgid)) {
            if (!tids.lookup(&prev))
                tids.update(&prev, &tgid);
            if ((args->prev_state & __TASK_REPORT_MASK__) == 0)
                stamp(prev, now, tgid, 0);
        }
    }
    c->last = now;

    struct start_t *s = start.lookup(&next);
    if (!s)
        return 0;
    u64 ts = s->ts;
    u32 tgid = s->tgid;
    u32 flags = s->flags;
    start.delete(&next);
    if (now <= ts || now - ts <= __MIN_WAIT_NS__)
        return 0;
    struct event_t *e = events.ringbuf_reserve(sizeof(struct event_t));
    if (!e) {
        bump(1);
        return 0;
    }
    __builtin_memset(e, 0, sizeof(*e));
    e->ts = now;
    e->wait = now - ts;
    e->tgid = tgid;
    e->tid = next;
    e->cpu = bpf_get_smp_processor_id();
    u64 head = c->head;
    for (int i = 1; i <= NHIST; i++) {
        struct slice_t *sl = &c->s[(head - i) & (NHIST - 1)];
        if (sl->end <= ts)
            break;
        if (i == NHIST && sl->start > ts)
            flags |= F_TRUNCATED;
        if (sl->pid == 0 || sl->pid == tgid)
            continue;
        u64 ns = sl->end - (sl->start > ts ? sl->start : ts);
        int hit = -1, low = 0;
        u64 lowns = (u64)-1;
        for (int j = 0; j < NRAN; j++) {
            if (e->ran[j].ns && e->ran[j].pid == sl->pid) {
                hit = j;
                break;
            }
            if (e->ran[j].ns < lowns) {
                lowns = e->ran[j].ns;
                low = j;
            }
        }
        if (hit >= 0 && hit < NRAN) {
            e->ran[hit].ns += ns;
        } else if (ns > lowns && low >= 0 && low < NRAN) {
            e->ran[low].pid = sl->pid;
            e->ran[low].ns = ns;
            bpf_probe_read_kernel(e->ran[low].comm, sizeof(e->ran[low].comm), sl->comm);
        }
    }
    e->flags = flags;
    events.ringbuf_submit(e, __SUBMIT_FLAGS__);
    bump(0);
    if (flags & F_TRUNCATED)
        bump(2);
    return 0;
}
"""


class _Ran(ct.Structure):
    _fields_ = [("pid", ct.c_uint32), ("_pad", ct.c_uint32), ("ns", ct.c_uint64),
                ("comm", ct.c_char * 16)]


class _Event(ct.Structure):
    _fields_ = [("ts", ct.c_uint64), ("wait", ct.c_uint64), ("tgid", ct.c_uint32),
                ("tid", ct.c_uint32), ("cpu", ct.c_uint32), ("flags", ct.c_uint32),
                ("ran", _Ran * NRAN)]


def bpf_program(min_wait_ns: int = 0, *, wakeup: bool = False) -> str:
    """The BPF C text with its constants filled in. ``wakeup``: wake the reader at every
    event (else it collects them on its own schedule)."""
    text = BPF_TEXT
    for k, v in (("__SUBMIT_FLAGS__", 0 if wakeup else BPF_RB_NO_WAKEUP),
                 ("__NHIST__", NHIST), ("__NRAN__", NRAN), ("__MAX_PROCS__", MAX_PROCS),
                 ("__MAX_THREADS__", MAX_THREADS), ("__RINGBUF_PAGES__", RINGBUF_PAGES),
                 ("__TASK_REPORT_MASK__", TASK_REPORT_MASK),
                 ("__MIN_WAIT_NS__", f"{max(0, int(min_wait_ns))}ULL")):
        text = text.replace(k, str(v))
    return text


# --- clocks ---


def realtime_offset_ns(samples: int = 5) -> int:
    """CLOCK_REALTIME minus CLOCK_MONOTONIC, in ns: add it to a ``bpf_ktime_get_ns()``
    stamp to get wall-clock time. The realtime read is bracketed by two monotonic reads
    and the tightest of ``samples`` brackets is used (its error is half its width)."""
    best: tuple[int, int] | None = None
    for _ in range(max(1, samples)):
        m1 = time.monotonic_ns()
        r = time.time_ns()
        m2 = time.monotonic_ns()
        if best is None or m2 - m1 < best[0]:
            best = (m2 - m1, r - (m1 + m2) // 2)
    assert best is not None
    return best[1]


# --- preflight ---


def _first_error(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in lines:
        if "error" in ln.lower():
            return ln[:160]
    return lines[-1][:160] if lines else ""


@contextlib.contextmanager
def _captured_stderr() -> Iterator[list[str]]:
    """libbcc and clang write diagnostics straight to fd 2; keep them out of the user's
    terminal and hand them back (the list gets the text when the block ends)."""
    out: list[str] = []
    with tempfile.TemporaryFile() as tmp:
        saved = os.dup(2)
        os.dup2(tmp.fileno(), 2)
        try:
            yield out
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            out.append(tmp.read(65536).decode(errors="replace"))


def _compile(text: str) -> Any:
    """A loaded, attached bcc BPF object; raises RuntimeError with a one-line reason."""
    bcc = bpf_setup.import_bcc()
    err: list[str] = []
    try:
        with _captured_stderr() as err:
            return bcc.BPF(text=text.encode())
    except Exception as e:  # bcc raises bare Exception for compile, load and attach
        detail = _first_error(err[0] if err else "") or str(e).splitlines()[0][:160]
        if "Operation not permitted" in detail or "EPERM" in detail:
            raise RuntimeError("the kernel refused to load the eBPF program (permission "
                               "denied): run as root or with CAP_BPF and CAP_PERFMON"
                               ) from None
        raise RuntimeError(f"the eBPF program did not compile or load: {detail}") from None


_PROBE_TEXT = r"""
TRACEPOINT_PROBE(sched, sched_switch) { return args->next_pid == 0; }
"""


def ebpf_preflight() -> str:
    """"" when the eBPF run-queue source can run here, else one line saying what is
    missing and how to fix it: privileges, tracefs, bcc, kernel headers, then a real
    compile, load and attach of a one-line sched_switch program."""
    try:
        why = bpf_setup.first_problem()
        if why:
            return why
        b = _compile(_PROBE_TEXT)
        b.cleanup()
    except (RuntimeError, bpf_setup.BpfSetupError, OSError) as e:
        return str(e)
    return ""


# --- the sources ---


@functools.cache
def _backend() -> Backend:
    return get_platform().backend


class RunqueueSource:
    """A running source of RunqueueLatency events for the threads of ``pids()``.

    ``start()`` runs it on its own thread (``on_event`` is called there); ``poll()``
    instead drives it from the caller's thread. ``stop()`` is idempotent and joins."""

    kind = ""

    def __init__(self, pids: PidsFn, on_event: OnEvent, *, why: str, min_wait_ns: int,
                 refresh_s: float) -> None:
        self.why = why
        self.events = 0  # delivered to on_event
        self.dropped = 0  # lost because the reader lagged (eBPF ring buffer full)
        self.errors = 0  # on_event raised
        self._pids = pids
        self._on_event = on_event
        self._min_wait_ns = max(0, int(min_wait_ns))
        self._refresh_s = refresh_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._watched: set[int] = set()
        self._pids_failed = False

    # -- caller side --

    def start(self) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("this run-queue source was stopped; open a new one")
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, name=f"runqueue-{self.kind}",
                                            daemon=True)
            self._thread.start()

    def stop(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._stop.set()
            t = self._thread
        if t is not None:
            t.join()
        self._close()

    def poll(self, timeout_s: float) -> int:
        """Handle what arrives within ``timeout_s`` in the caller's thread (for callers
        that do not ``start()`` the source). Returns the number of events delivered."""
        if self._thread is not None:
            raise RuntimeError("this run-queue source runs its own thread: do not poll it")
        if self._closed:
            return 0
        before = self.events
        self._step(timeout_s)
        return self.events - before

    def __enter__(self) -> RunqueueSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- shared machinery --

    def _current_pids(self) -> set[int]:
        try:
            got = {int(p) for p in self._pids()}
            self._pids_failed = False
            return got
        except Exception as e:  # the caller's function: keep the last good set
            if not self._pids_failed:
                log.warn("runqueue_pids_failed", error=str(e)[:200])
            self._pids_failed = True
            return set(self._watched)

    def _deliver(self, ev: RunqueueLatency) -> None:
        try:
            self._on_event(ev)
            self.events += 1
        except Exception as e:  # never let the consumer kill the source
            self.errors += 1
            if self.errors == 1:
                log.warn("runqueue_on_event_failed", error=str(e)[:200])

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                self._step(0.1)
            except Exception as e:  # a bug or a bcc hiccup: say so once, keep going
                failures += 1
                if failures == 1:
                    log.error("runqueue_source_failed", kind=self.kind, error=str(e)[:200])
                self._stop.wait(1.0)

    def _step(self, timeout_s: float) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        pass


class EbpfRunqueueSource(RunqueueSource):
    kind = "ebpf"

    def __init__(self, pids: PidsFn, on_event: OnEvent, *, min_wait_ns: int = 0,
                 refresh_s: float = 0.5, batch_s: float = 0.02) -> None:
        super().__init__(pids, on_event, why="", min_wait_ns=min_wait_ns,
                         refresh_s=refresh_s)
        self._batch_s = max(0.0, batch_s)
        self._bpf = _compile(bpf_program(self._min_wait_ns, wakeup=self._batch_s == 0))
        self._next_batch = 0.0
        try:
            self._watched_map = self._bpf[b"watched"]
            self._tids = self._bpf[b"tids"]
            self._stats = self._bpf[b"stats"]
            self._bpf[b"events"].open_ring_buffer(self._on_ring)
        except Exception:
            self._bpf.cleanup()
            raise
        self._offset = realtime_offset_ns()
        self._next_refresh = 0.0
        self._map_full = False
        self.truncated = 0

    def _on_ring(self, ctx: Any, data: Any, size: int) -> int:
        # Called by libbcc through ctypes: an exception here would only print a traceback.
        try:
            self._handle(data, size)
        except Exception as e:
            self.errors += 1
            if self.errors == 1:
                log.warn("runqueue_event_failed", error=str(e)[:200])
        return 0

    def _handle(self, data: Any, size: int) -> None:
        if size < ct.sizeof(_Event):
            return
        e = ct.cast(data, ct.POINTER(_Event)).contents
        tgid, tid = int(e.tgid), int(e.tid)
        if e.flags & F_NEW and not self._is_thread_of(tgid, tid):
            return
        ran = sorted((RanInstead(int(r.pid), r.comm.decode(errors="replace"), int(r.ns))
                      for r in e.ran if r.ns), key=lambda r: -r.ns)
        self._deliver(RunqueueLatency(ts_ns=int(e.ts) + self._offset, pid=tgid, tid=tid,
                                      wait_ns=int(e.wait), cpu=int(e.cpu), source="ebpf",
                                      ran_instead=tuple(ran)))

    def _is_thread_of(self, tgid: int, tid: int) -> bool:
        """Whether a task its watched creator made is a thread of it (not a forked
        child, which is another process and is watched only if ``pids()`` names it)."""
        try:
            return tid in _backend().list_threads(tgid)
        except (ProcessGone, OSError):
            return False

    def _step(self, timeout_s: float) -> None:
        now = time.monotonic()
        if now >= self._next_refresh:
            self._refresh()
            self._next_refresh = now + self._refresh_s
        until = min(now + timeout_s, self._next_refresh)
        if self._batch_s == 0:  # woken by the kernel at every event
            self._bpf.ring_buffer_poll(int(max(0.0, until - time.monotonic()) * 1000))
            return
        # Collected every batch_s: the kernel never wakes this thread, which would
        # otherwise run (and take a CPU from the threads it measures) at every wakeup.
        if self._next_batch > until:
            self._stop.wait(max(0.0, until - time.monotonic()))
            return
        self._stop.wait(max(0.0, self._next_batch - time.monotonic()))
        self._next_batch = time.monotonic() + self._batch_s
        self._bpf.ring_buffer_consume()

    def _refresh(self) -> None:
        """Write the watched tgids and their threads into the kernel's maps, read the
        drop counters, and re-measure the clock offset."""
        self._offset = realtime_offset_ns()
        want = self._current_pids()
        c_u32, c_u8 = ct.c_uint32, ct.c_uint8
        kept = self._watched & want
        for tgid in self._watched - want:
            with contextlib.suppress(KeyError):
                del self._watched_map[c_u32(tgid)]
        added = sorted(want - kept)[:MAX_PROCS - len(kept)]
        if len(added) < len(want - kept):
            log.warn("runqueue_processes_not_watched", count=len(want - kept) - len(added),
                     why=f"more than {MAX_PROCS} processes to watch")
        for tgid in added:
            self._watched_map[c_u32(tgid)] = c_u8(1)
        self._watched = kept | set(added)
        desired: dict[int, int] = {}
        b = _backend()
        for tgid in self._watched:
            try:
                for tid in b.list_threads(tgid):
                    desired[tid] = tgid
            except (ProcessGone, OSError):
                continue
        in_map = {int(k.value): int(v.value) for k, v in self._tids.items()}
        for tid in in_map.keys() - desired.keys():
            with contextlib.suppress(KeyError):
                del self._tids[c_u32(tid)]
        full = 0
        for tid, tgid in desired.items():
            if in_map.get(tid) != tgid:
                try:
                    self._tids[c_u32(tid)] = c_u32(tgid)
                except Exception:  # bcc: "Could not update table" when the map is full
                    full += 1
        if full and not self._map_full:
            log.warn("runqueue_threads_not_watched", count=full,
                     why=f"more than {MAX_THREADS} threads to watch")
        self._map_full = bool(full)
        self._read_stats()

    def _read_stats(self) -> None:
        def total(i: int) -> int:
            return int(sum(self._stats[ct.c_int(i)]))

        dropped = total(STAT_DROPPED)
        if dropped > self.dropped:
            log.warn("runqueue_events_dropped", count=dropped - self.dropped,
                     why="the reader lagged and the ring buffer was full")
        self.dropped = dropped
        self.truncated = total(STAT_TRUNCATED)

    def _close(self) -> None:
        with contextlib.suppress(Exception):
            self._bpf.ring_buffer_consume()  # what ended before stop() still counts
            self._read_stats()
        try:
            self._bpf.cleanup()  # detaches the programs, frees the maps
        except Exception as e:
            log.warn("runqueue_cleanup_failed", error=str(e)[:200])


class SchedstatRunqueueSource(RunqueueSource):
    kind = "schedstat"

    def __init__(self, pids: PidsFn, on_event: OnEvent, *, why: str, min_wait_ns: int = 0,
                 interval_s: float = 0.1) -> None:
        super().__init__(pids, on_event, why=why, min_wait_ns=min_wait_ns,
                         refresh_s=interval_s)
        self._last: dict[tuple[int, int], int] = {}
        self._next = 0.0

    def _step(self, timeout_s: float) -> None:
        now = time.monotonic()
        if now < self._next:
            if self._stop.wait(min(timeout_s, self._next - now)):
                return
            if time.monotonic() < self._next:
                return
        self._next = time.monotonic() + self._refresh_s
        self.sample()

    def sample(self) -> None:
        """Read every watched thread's run-queue wait now and emit the deltas."""
        want = self._current_pids()
        b = _backend()
        ts = time.time_ns()
        seen: dict[tuple[int, int], int] = {}
        for pid in want:
            new_pid = pid not in self._watched
            try:
                tids = b.list_threads(pid)
            except (ProcessGone, OSError):
                continue
            for tid in tids:
                try:
                    total = b.run_queue_wait_ns(pid, tid)
                except (ProcessGone, OSError):
                    continue
                key = (pid, tid)
                seen[key] = total
                # A thread of a newly watched process is a baseline; a thread born since
                # the last sample waited all its life within this interval.
                before = self._last.get(key, total if new_pid else 0)
                delta = total - before
                if delta > self._min_wait_ns:
                    self._deliver(RunqueueLatency(ts_ns=ts, pid=pid, tid=tid, wait_ns=delta,
                                                  source="schedstat"))
        self._last = seen
        self._watched = want


def open_runqueue_source(pids: PidsFn, on_event: OnEvent, *, prefer: str = "ebpf",
                         min_wait_ns: int = 0, interval_s: float = 0.1,
                         refresh_s: float = 0.5, batch_s: float = 0.02) -> RunqueueSource:
    """The best run-queue source this host allows, not started yet.

    ``pids()`` is called every ``refresh_s`` (eBPF) or ``interval_s`` (schedstat) for the
    process ids to watch; ``on_event`` gets each RunqueueLatency on the source's thread,
    with eBPF in batches every ``batch_s`` (0: as each wait ends, at the cost of waking
    the reader at every event).
    With ``prefer="ebpf"`` a missing prerequisite never raises: the schedstat source comes
    back with ``why`` saying what is missing and how to fix it."""
    if prefer not in ("ebpf", "schedstat"):
        raise ValueError(f"prefer must be 'ebpf' or 'schedstat', not {prefer!r}")
    if prefer == "schedstat":
        why = "the schedstat source was asked for (prefer='schedstat')"
    else:
        try:
            why = bpf_setup.first_problem()
            if not why:
                return EbpfRunqueueSource(pids, on_event, min_wait_ns=min_wait_ns,
                                          refresh_s=refresh_s, batch_s=batch_s)
        except (RuntimeError, bpf_setup.BpfSetupError, OSError) as e:
            why = str(e)
        except Exception as e:  # bcc's own surprises: still fall back, still say why
            why = f"the eBPF source failed to start: {str(e).splitlines()[0][:160]}"
        log.event("runqueue_ebpf_unavailable", why=why)
    return SchedstatRunqueueSource(pids, on_event, why=why, min_wait_ns=min_wait_ns,
                                   interval_s=interval_s)
