"""ainative trace record / report: the seed's logman/tracerpt pair.

``record`` binds a collector socket (its own, per run, unless ``--socket``), prints the
``AINATIVE_EVENTS=...`` line to start traced processes with, watches the run-queue wait of
the traced processes (the pids given, or those that send spans, as they appear) with the
best source the host allows, and writes everything into one trace file (an event store:
ainative.telemetry.store) until Ctrl-C, SIGTERM, ``--duration``, or the exit of every
``--pid``. ``report`` reads a trace file: histograms, percentiles, counts, the slowest
requests with their run-queue cause (ainative.telemetry.report).

A file that is not a whole trace gives one line on stderr and exit status 2, never a
traceback.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any, NoReturn

import click

from ainative.platform import pid_alive
from ainative.telemetry.events import Event, RunqueueLatency
from ainative.units import UnitError, parse_duration

FLUSH_EVERY_S = 0.2
RUNQUEUE_REFRESH_S = 0.1  # how soon a process that sends its first span is watched


def _duration(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return parse_duration(text, "--duration")
    except UnitError as e:
        raise click.BadParameter(e.reason, param_hint=e.option) from None


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as f:
            return f.read(64).strip()
    except OSError:
        return ""


def _fail(msg: str) -> NoReturn:
    click.echo(f"error: {msg}", err=True)
    sys.exit(2)


@click.group()
def trace() -> None:
    """Record spans, run-queue waits and policy events into a file, and report on it."""


class _Recorder:
    """The state shared by the receiver's thread, the run-queue source's thread and the
    main loop: events land in ``inbox`` (deque appends are atomic), the main thread alone
    writes the store."""

    def __init__(self, pids: frozenset[int]) -> None:
        self.fixed_pids = pids
        self.seen: dict[int, str] = {}  # pid -> comm, as each first appears
        self.inbox: collections.deque[Event] = collections.deque()
        self.not_traced = 0

    def watched(self) -> set[int]:
        return set(self.fixed_pids) if self.fixed_pids else set(self.seen)

    def _note(self, pid: int) -> None:
        if pid not in self.seen:
            self.seen[pid] = _comm(pid)

    def on_span(self, ev: Event) -> None:
        if self.fixed_pids and ev.pid not in self.fixed_pids:
            self.not_traced += 1
            return
        self._note(ev.pid)
        self.inbox.append(ev)

    def on_runqueue(self, ev: RunqueueLatency) -> None:
        self._note(ev.pid)
        self.inbox.append(ev)

    def drain(self) -> list[Event]:
        out = []
        while self.inbox:
            out.append(self.inbox.popleft())
        return out


def _open_runqueue(mode: str, pids: Callable[[], set[int]],
                   on_event: Callable[[RunqueueLatency], None]) -> tuple[Any, str, str]:
    """(source or None, kind, why) for ``--runqueue mode``."""
    if mode == "off":
        return None, "none", "--runqueue off"
    try:
        from ainative.telemetry.runqueue import open_runqueue_source
    except ImportError as e:
        return None, "none", f"the run-queue module cannot be loaded here ({e})"
    try:
        # A process is watched from the first refresh after its first span: refresh often,
        # since a traced process may live only a second.
        src = open_runqueue_source(pids, on_event,
                                   prefer="schedstat" if mode == "schedstat" else "ebpf",
                                   refresh_s=RUNQUEUE_REFRESH_S, interval_s=RUNQUEUE_REFRESH_S)
    except Exception as e:  # a source that cannot start costs the attribution, not the trace
        return None, "none", f"the run-queue source failed to start: {str(e)[:200]}"
    return src, str(src.kind), str(src.why)


@trace.command("record")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="The trace file to write (an SQLite file).")
@click.option("--duration", default=None, help="Stop after this long (30s, 5m); default: "
              "until Ctrl-C or SIGTERM, or until every --pid has exited.")
@click.option("--pid", "pids", multiple=True, type=click.IntRange(min=1),
              help="Trace only this process (repeatable). Default: every process that "
                   "sends spans.")
@click.option("--socket", "socket_path", default=None, type=click.Path(dir_okay=False),
              help="Receive spans on this socket path (default: a new one for this run).")
@click.option("--runqueue", type=click.Choice(["auto", "schedstat", "off"]), default="auto",
              show_default=True, help="Run-queue source: eBPF where the host allows, else "
                                      "schedstat (auto); schedstat only; none.")
@click.option("--force", is_flag=True, help="Overwrite the output file if it exists.")
def record(output: str, duration: str | None, pids: tuple[int, ...], socket_path: str | None,
           runqueue: str, force: bool) -> None:
    """Record spans and run-queue waits of traced processes into a trace file."""
    from ainative import log
    from ainative.telemetry.collector import CollectorError, EventReceiver
    from ainative.telemetry.store import EventStore, TraceFileError, TraceMeta

    seconds = _duration(duration)
    for pid in pids:
        if not pid_alive(pid):
            _fail(f"--pid {pid}: no such process")
    if os.path.lexists(output):
        if not force:
            _fail(f"{output} exists; remove it, choose another -o, or add --force")
        try:
            os.unlink(output)
        except OSError as e:
            _fail(f"cannot replace {output}: {e.strerror}")
    log.setup("text", "error")  # the sources' warnings are said here, in the summary

    tmpdir = None
    if socket_path is None:
        tmpdir = tempfile.mkdtemp(prefix="ainative-trace-")
        os.chmod(tmpdir, 0o711)  # other users' processes may send their own spans
        socket_path = os.path.join(tmpdir, "events.sock")
    rec = _Recorder(frozenset(pids))

    def abandon(msg: str) -> NoReturn:
        """Undo the set-up (no half-made trace file left behind) and exit."""
        for path, remove in ((output, os.unlink), (tmpdir, os.rmdir)):
            try:
                if path:
                    remove(path)
            except OSError:
                pass
        _fail(msg)

    try:
        store = EventStore(output, retention_s=None, max_rows=None)
    except TraceFileError as e:
        abandon(str(e))
    try:
        receiver = EventReceiver(socket_path, rec.on_span)
    except CollectorError as e:
        store.close()
        abandon(str(e))
    started = time.time_ns()
    try:
        # Loading eBPF takes seconds (bcc compiles the program): Ctrl-C may land here.
        source, kind, why = _open_runqueue(runqueue, rec.watched, rec.on_runqueue)
        meta = TraceMeta(host=socket.gethostname(), kernel=os.uname().release,
                         started_ns=started, runqueue_source=kind, runqueue_why=why,
                         extra={"socket": socket_path,
                                "pids": ",".join(map(str, pids)) if pids else "spans"})
        store.write_trace_meta(meta)
    except (KeyboardInterrupt, TraceFileError) as e:
        receiver.close()
        store.close()
        abandon(str(e) if isinstance(e, TraceFileError) else
                "interrupted before the recording started; nothing was written")

    click.echo(f"recording to {output}; start the processes to trace with:")
    click.echo(f"AINATIVE_EVENTS={socket_path}")
    click.echo(f"run-queue source: {kind}" + (f" ({why})" if why else ""))
    ends = [f"after {seconds:g} s" if seconds else "", "when every --pid has exited" if pids
            else "", "on Ctrl-C or SIGTERM"]
    click.echo("recording; it stops " + ", ".join(e for e in ends if e))

    stop = threading.Event()
    # Ctrl-C and SIGTERM end the recording the same way (also where a shell started us in
    # the background with SIGINT ignored).
    old_term = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    old_int = signal.signal(signal.SIGINT, lambda *_: stop.set())
    rx = threading.Thread(target=receiver.run, args=(stop,), name="trace-receiver",
                          daemon=True)
    rx.start()
    if source is not None:
        source.start()
    deadline = time.monotonic() + seconds if seconds else None
    written = 0
    error = ""
    try:
        while not stop.is_set():
            stop.wait(FLUSH_EVERY_S)
            written += store.add(rec.drain())
            if deadline is not None and time.monotonic() >= deadline:
                break
            if pids and not any(pid_alive(p) for p in pids):
                break
    except KeyboardInterrupt:
        pass
    except TraceFileError as e:
        error = str(e)
    finally:
        stop.set()
        signal.signal(signal.SIGTERM, old_term)
        if source is not None:
            try:
                source.stop()
            except Exception as e:
                error = error or f"the run-queue source failed to stop cleanly: {e}"
        rx.join(2.0)
        receiver.handle_readable()  # what arrived in the last moment
        rstats = receiver.stats()
        receiver.close()
        if tmpdir is not None:
            try:
                os.rmdir(tmpdir)
            except OSError:
                pass
        ended = time.time_ns()
        try:
            written += store.add(rec.drain())
            extra = dict(meta.extra)
            extra.update({"received": str(rstats.received), "rejected": json.dumps(
                rstats.rejected_by_reason), "not_traced": str(rec.not_traced)})
            store.write_trace_meta(TraceMeta(
                host=meta.host, kernel=meta.kernel, started_ns=started, ended_ns=ended,
                runqueue_source=kind, runqueue_why=why, processes=dict(rec.seen),
                extra=extra))
            counts = store.counts()
        except TraceFileError as e:
            error, counts = error or str(e), {}
        store.close()
    signal.signal(signal.SIGINT, old_int)
    if error:
        _fail(error)
    kinds = ", ".join(f"{n} {t}" for t, n in counts.items()) or "nothing"
    rejected = (f"; {rstats.rejected} datagrams rejected ("
                + ", ".join(f"{k} {v}" for k, v in sorted(rstats.rejected_by_reason.items()))
                + ")") if rstats.rejected else ""
    click.echo(f"recorded {written} events ({kinds}) from {len(rec.seen)} process(es) in "
               f"{(ended - started) / 1e9:.1f} s into {output}{rejected}")


@trace.command("report")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (stable keys).")
@click.option("--plot", "plot_path", default=None, type=click.Path(dir_okay=False),
              help="Also draw the spans into this PNG.")
@click.option("--top", default=10, show_default=True, type=click.IntRange(min=0, max=10000),
              help="How many of the slowest requests to list.")
def report(file: str, as_json: bool, plot_path: str | None, top: int) -> None:
    """Histograms, percentiles, counts and the slowest requests of a trace file."""
    from ainative.telemetry import report as tr
    from ainative.telemetry.store import EventStore, TraceFileError

    try:
        with EventStore(file, readonly=True) as store:
            rep = tr.build_report(store, top)
    except TraceFileError as e:
        _fail(str(e))
    if as_json:
        click.echo(json.dumps(tr.report_json(rep), indent=2))
    else:
        click.echo(tr.render_text(rep))
    if plot_path:
        try:
            tr.plot(rep, plot_path)
        except OSError as e:
            _fail(f"cannot write {plot_path}: {e.strerror or e}")
        if not as_json:
            click.echo(f"plot: {plot_path}")
