"""The daemon: start-up, the loop, signals and shutdown.

One thread, one select loop: process events (netlink or poll), socket clients, signals
(through a wakeup fd), and timers (reconcile, library re-checks, client timeouts). A
single thread keeps every change ordered and the journal simple. What an event means is
the supervisor's job (core/supervisor.py), what a request means the API's (api.py), and
how clients are framed and limited the transport's (transport.py).

Helper threads never touch that state: the Prometheus endpoint (exporter.py) serves
scrapes from snapshots the loop publishes (metrics.py), the GPU sampler (gpusampler.py)
reads NVML away from the loop, and the run-queue source (telemetry.py) reads the kernel's
ring buffer. Telemetry events (the engine's policy actions, the sampler's GPU samples,
the spans that arrive on the events socket, the run-queue waits) reach their sinks from
the loop, through one Fanout: the metrics and the event store's buffer, which the loop
writes to SQLite about once a second.
"""

from __future__ import annotations

import grp
import json
import os
import selectors
import signal
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from ainative import __version__, log
from ainative.core.classes import ConfigError
from ainative.core.journal import Journal, JournalError, make_validator
from ainative.core.rules import DEFAULT_RULES_DIR, RuleSet, load_rules
from ainative.core.supervisor import Supervisor, SupervisorConfig
from ainative.daemon import statedir
from ainative.daemon.api import Api, DaemonView, MetricsView
from ainative.daemon.exporter import ExporterError, MetricsAddress, MetricsServer
from ainative.daemon.gpusampler import DEFAULT_INTERVAL_S, GpuSampler
from ainative.daemon.metrics import DaemonMetrics
from ainative.daemon.pools import MAX_POOLS, PoolRegistry
from ainative.daemon.telemetry import (
    LoopQueue,
    RunqueueFeed,
    RunqueueMode,
    StoreBuffer,
    TelemetryError,
    TelemetryView,
    events_socket_view,
    no_store_view,
    open_event_store,
    open_events_socket,
    runqueue_pids,
)
from ainative.daemon.transport import Limits, Transport, TransportError
from ainative.gpu import nvml
from ainative.gpu.metrics import GpuCollector
from ainative.platform import Platform, get_platform, pid_alive
from ainative.platform.base import EventSource, MechanismUnavailable, TaskId
from ainative.telemetry.collector import EventReceiver
from ainative.telemetry.sink import Fanout
from ainative.telemetry.store import DEFAULT_RETENTION_S

DEFAULT_STATE_DIR = "/var/lib/ainative"
META_FILE = "daemon.json"  # what `ainative restore` needs to know about the last run
# The loop publishes its state to the metrics at most this often (and within this long
# of a change): a fork storm costs one snapshot per PUBLISH_EVERY_S, not one per batch.
PUBLISH_EVERY_S = 0.1
SWEEP_EVERY_S = 10.0  # metrics of exits the event source missed are dropped this often


@dataclass
class DaemonConfig:
    rules: list[str] = field(default_factory=list)
    rules_dir: str | None = DEFAULT_RULES_DIR
    state_dir: str = DEFAULT_STATE_DIR
    socket_path: str = "/run/ainative/ainative.sock"
    socket_mode: int = 0o666
    socket_group: str | None = None
    scope_pid: int | None = None
    dry_run: bool = False
    reconcile_interval: float = 1.0
    cgroup_root: str = "ainative"
    cgroups: bool = True
    poll_interval: float = 0.5
    limits: Limits = field(default_factory=Limits)
    metrics_address: MetricsAddress | None = None  # None: no Prometheus endpoint
    gpu_interval: float = DEFAULT_INTERVAL_S
    events_socket: str | None = None  # None: receive no spans (the CLI's default: beside
    # the control socket)
    events_retention_s: float = DEFAULT_RETENTION_S  # the event store's
    runqueue: RunqueueMode = "off"  # the CLI's default is schedstat
    otlp_endpoint: str | None = None  # OTLP/HTTP collector (the optional 'otlp' extra)


class StartupError(Exception):
    """The daemon cannot start; the message says why and what to do."""


class Daemon:
    def __init__(self, config: DaemonConfig, platform: Platform | None = None) -> None:
        self.cfg = config
        if config.scope_pid is not None and not pid_alive(config.scope_pid):
            raise StartupError(f"--scope-descendants {config.scope_pid}: no such process")
        try:
            self.platform = platform or get_platform(cgroup_root=config.cgroup_root,
                                                     poll_interval=config.poll_interval)
        except (MechanismUnavailable, ValueError) as e:
            raise StartupError(str(e)) from e
        self.backend = self.platform.backend
        self.started = time.time()
        self.rules: RuleSet = self._load_rules_or_fail()
        self.supervisor: Supervisor
        self.pools = PoolRegistry()
        self.sel = selectors.DefaultSelector()
        self.api = Api(self)
        self.transport = Transport(self.sel, self.api.handle, config.limits)
        self.event_source: EventSource | None = None
        self.event_source_name = "none"
        self._mechanisms: list[dict[str, Any]] = []
        self._stop = False
        self._hup = False
        self._dir_fd: int | None = None
        self._lockfd: int | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self.recovered: dict[str, Any] | None = None
        self.last_reload_error: str | None = None
        self.journal: Journal | None = None
        # Telemetry: every event the daemon emits goes through sinks, from the loop.
        self.sinks = Fanout()
        self.metrics: DaemonMetrics | None = None
        if config.metrics_address is not None:
            self.metrics = DaemonMetrics()
            self.sinks.add(self.metrics)
        self.exporter: MetricsServer | None = None
        self.gpu_sampler = GpuSampler(interval_s=config.gpu_interval)
        self.store: StoreBuffer | None = None
        self.receiver: EventReceiver | None = None
        self.runqueue_queue = LoopQueue()
        self.runqueue = RunqueueFeed(config.runqueue, self.runqueue_queue)
        self._published = -1e9
        self._publish_pending = False
        self._last_sweep = time.monotonic()

    # --- start-up ---

    def _load_rules_or_fail(self) -> RuleSet:
        try:
            return load_rules(self.cfg.rules, self.cfg.rules_dir)
        except ConfigError as e:
            raise StartupError(f"bad rules: {e}") from e

    def _open_state(self) -> None:
        try:
            self._dir_fd = statedir.secure_dir(self.cfg.state_dir)
            self._lockfd = statedir.lock(self._dir_fd)
        except statedir.StateDirError as e:
            raise StartupError(str(e)) from e
        if self.cfg.dry_run:
            return
        scope = self.cfg.scope_pid

        def in_scope(ident: TaskId) -> bool:
            return scope is None or self.backend.is_descendant(ident.pid, scope)

        try:
            self.journal = Journal(self.cfg.state_dir, dir_fd=self._dir_fd,
                                   validate=make_validator(self.cfg.cgroup_root, in_scope))
            self._write_meta()
        except (JournalError, statedir.StateDirError) as e:
            raise StartupError(str(e)) from e
        except OSError as e:
            raise StartupError(f"cannot open the journal in {self.cfg.state_dir}: "
                               f"{e.strerror or e}") from e
        if self.journal.torn_tail:
            log.warn("journal_torn_tail", detail="the last record was cut by a crash "
                     "mid-write; the change it began was never made")
        if self.journal.unusable_count:
            log.warn("journal_unusable_records", count=self.journal.unusable_count,
                     first=self.journal.unusable[:5],
                     action="skipped: these records are not undone")

    def _write_meta(self) -> None:
        assert self._dir_fd is not None
        data = json.dumps({"cgroup_root": self.cfg.cgroup_root, "scope_pid": self.cfg.scope_pid,
                           "socket": self.cfg.socket_path, "pid": os.getpid()}).encode()
        fd = statedir.open_in(self._dir_fd, META_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)

    def start(self) -> None:
        if os.geteuid() != 0:
            log.warn("not_root", uid=os.geteuid(), detail="ainative can only lower priorities "
                     "of this user's own processes; see the mechanisms below")
        self._open_state()
        self._open_store()
        self._open_otlp()
        self.supervisor = Supervisor(
            self.backend, self.rules, self.journal,
            SupervisorConfig(scope_pid=self.cfg.scope_pid, dry_run=self.cfg.dry_run,
                             cgroups=self.cfg.cgroups),
            gpu_pids=nvml.cached_compute_pids(), sink=self.sinks)
        rep = self.supervisor.recover()
        if rep is not None:
            # A previous run died without undoing: undone now, before anything else.
            self.recovered = rep.to_json()
            log.warn("crash_recovery", **{k: v for k, v in self.recovered.items()
                                          if k != "details"})
        self._probe()
        self._open_events()
        self._open_socket()
        self._open_events_socket()
        self._open_metrics()
        self.gpu_sampler.start()
        self._install_signals()
        log.event("started", version=__version__, pid=os.getpid(), events=self.event_source_name,
                  socket=self.cfg.socket_path, state_dir=self.cfg.state_dir,
                  scope=self.cfg.scope_pid, dry_run=self.cfg.dry_run,
                  rules=self.rules.sources, classes=sorted(self.rules.classes),
                  metrics=self.metrics_view()["url"] or "off",
                  events_socket=self.cfg.events_socket or "off",
                  event_store=self.store.store.path if self.store else "off")
        self.supervisor.full_scan()
        self._publish(force=True)
        # After the scan: the source starts with the processes already running.
        self.sel.register(self.runqueue_queue.fileno(), selectors.EVENT_READ, "runqueue")
        self._update_runqueue_pids()
        self.runqueue.open()

    def _probe(self) -> None:
        try:
            self._mechanisms = [{"name": m.name, "available": m.available, "detail": m.detail}
                                for m in self.platform.probe()]
        except Exception as e:  # a probe must never stop the daemon
            self._mechanisms = [{"name": "probe", "available": False, "detail": str(e)}]
        for m in self._mechanisms:
            (log.event if m["available"] else log.warn)("mechanism", **m)

    def _open_metrics(self) -> None:
        """Listen on --metrics-address, or fail the start-up with one line saying why.
        Last of the start-up checks (a bad socket option is named first), and before the
        first change: crash recovery before this only undoes."""
        a = self.cfg.metrics_address
        if a is None or self.metrics is None:
            return
        if not a.loopback:
            log.warn("metrics_not_loopback", address=str(a),
                     detail="anyone who can reach this address reads the names, classes "
                            "and latencies of this machine's AI processes; firewall it, "
                            "or listen on 127.0.0.1")
        self.exporter = MetricsServer(a, [self.metrics.render],
                                      [GpuCollector(reader=self.gpu_sampler.latest)])
        try:
            self.exporter.start()
        except ExporterError as e:
            self.exporter = None
            raise StartupError(str(e)) from e

    def _open_store(self) -> None:
        """The event store in the state dir, before anything emits (crash recovery's
        restores are stored too)."""
        assert self._dir_fd is not None
        try:
            store = open_event_store(self._dir_fd, self.cfg.state_dir,
                                     self.cfg.events_retention_s)
        except TelemetryError as e:
            raise StartupError(str(e)) from e
        self.store = StoreBuffer(store)
        self.sinks.add(self.store)

    def _open_otlp(self) -> None:
        """--otlp-endpoint: every event also goes to an OpenTelemetry collector. The sink
        only queues on the loop's thread; its own thread converts and exports."""
        self.otlp: Any = None
        if not self.cfg.otlp_endpoint:
            return
        from ainative.telemetry.otlp import OtlpSink

        try:
            self.otlp = OtlpSink(self.cfg.otlp_endpoint)
        except RuntimeError as e:  # the extra is not installed: one line, with the fix
            raise StartupError(f"--otlp-endpoint: {e}") from e
        self.sinks.add(self.otlp)
        log.event("otlp_export", endpoint=self.cfg.otlp_endpoint)

    def _open_events_socket(self) -> None:
        """Bind --events-socket (after the control socket: a shared directory's problem is
        named by --socket first); the loop reads it."""
        if self.cfg.events_socket is None:
            return
        try:
            self.receiver = open_events_socket(self.cfg.events_socket, self.sinks.emit)
        except TelemetryError as e:
            raise StartupError(str(e)) from e
        self.sel.register(self.receiver.fileno(), selectors.EVENT_READ, "spans")

    def _open_events(self) -> None:
        try:
            self.event_source = self.platform.open_events()
        except Exception as e:
            self.event_source = None
            self.event_source_name = f"periodic scan only ({e})"
            log.warn("no_event_source", error=str(e))
            return
        self.event_source_name = self.event_source.name
        if self.event_source.fallback_reason:
            self.event_source_name += f" ({self.event_source.fallback_reason})"
            log.warn("event_source_fallback", using=self.event_source.name,
                     reason=self.event_source.fallback_reason)
        self.sel.register(self.event_source.fileno(), selectors.EVENT_READ, "events")

    def _open_socket(self) -> None:
        path = self.cfg.socket_path
        gid = None
        if self.cfg.socket_group:
            try:
                gid = grp.getgrnam(self.cfg.socket_group).gr_gid
            except KeyError as e:
                raise StartupError(f"--socket-group {self.cfg.socket_group}: no such group") from e
        try:
            dfd = statedir.secure_dir(os.path.dirname(os.path.abspath(path)), mode=0o755,
                                      what="socket directory", option="--socket")
            os.close(dfd)
            self.transport.listen(path, mode=self.cfg.socket_mode, gid=gid)
            if not self.cfg.dry_run:
                statedir.write_pointer(path, os.path.abspath(self.cfg.state_dir))
        except statedir.StateDirError as e:
            raise StartupError(str(e)) from e
        except TransportError as e:
            raise StartupError(str(e)) from e

    def _install_signals(self) -> None:
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        signal.set_wakeup_fd(self._wake_w.fileno())
        self.sel.register(self._wake_r, selectors.EVENT_READ, "wake")

        def on_stop(signum: int, frame: Any) -> None:
            self._stop = True

        def on_hup(signum: int, frame: Any) -> None:
            self._hup = True

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGHUP, on_hup)

    # --- the loop ---

    def run(self) -> int:
        try:
            self.start()
            next_reconcile = time.monotonic() + self.cfg.reconcile_interval
            while not self._stop:
                deadlines = [next_reconcile, self.supervisor.next_timer(),
                             self.transport.next_deadline(),
                             self._published + PUBLISH_EVERY_S if self._publish_pending
                             else None,
                             self.store.next_flush() if self.store is not None else None]
                timeout = min(t for t in deadlines if t is not None) - time.monotonic()
                for key, events in self.sel.select(max(0.0, timeout)):
                    self._dispatch(key, events)
                    if self._stop:
                        break
                if self._hup:
                    self._hup = False
                    self.reload()
                self.supervisor.run_timers()
                self.transport.expire()
                if time.monotonic() >= next_reconcile:
                    self._reconcile()
                    next_reconcile = time.monotonic() + self.cfg.reconcile_interval
                self._telemetry()
        finally:
            self.shutdown()
        return 0

    def _dispatch(self, key: selectors.SelectorKey, events: int) -> None:
        what = key.data
        if what == "events" and self.event_source is not None:
            try:
                batch = self.event_source.read()
            except OSError as e:
                log.warn("event_read_failed", error=str(e))
                batch = []
            if self.metrics is not None and batch:
                self.metrics.count_process_events(self.event_source.name, len(batch))
            for ev in batch:
                self.supervisor.on_event(ev)
                if ev.kind == "exit" and ev.tid == ev.pid:
                    self.pools.drop_pid(ev.pid)
                    if self.metrics is not None:
                        self.metrics.forget_pid(ev.pid)
        elif what == "spans" and self.receiver is not None:
            self.receiver.handle_readable()  # at most max_batch: the loop stays responsive
        elif what == "runqueue":
            for rq in self.runqueue_queue.drain():
                self.sinks.emit(rq)
        elif what == "listen":
            self.transport.accept()
        elif what == "wake":
            try:
                while self._wake_r and self._wake_r.recv(4096):
                    pass
            except BlockingIOError:
                pass
        elif isinstance(what, int):
            self.transport.on_client(what, events)

    def _reconcile(self) -> None:
        t0 = time.perf_counter()
        self.supervisor.reconcile()
        if self.event_source is None:
            self.supervisor.full_scan()
        if self.metrics is not None:
            self.metrics.observe_reconcile(time.perf_counter() - t0)
            if time.monotonic() - self._last_sweep >= SWEEP_EVERY_S:
                self._last_sweep = time.monotonic()
                self.metrics.sweep(pid_alive)
        if self.journal:
            self.journal.maybe_compact()
        self._update_runqueue_pids()

    def _update_runqueue_pids(self) -> None:
        serving = frozenset(n for n, c in self.rules.classes.items() if c.serving)
        self.runqueue.set_pids(runqueue_pids(self.supervisor.engine.managed.values(), serving))

    def _telemetry(self) -> None:
        """After each pass of the loop: new GPU samples go out as events, and the metrics
        get a fresh snapshot (at most every PUBLISH_EVERY_S; a skipped one is owed and
        the loop wakes for it)."""
        for ev in self.gpu_sampler.drain():
            self.sinks.emit(ev)
        if self.store is not None:
            self.store.maybe_flush()
        self._publish()

    def _publish(self, force: bool = False) -> None:
        if self.metrics is None:
            return
        now = time.monotonic()
        if not force and now - self._published < PUBLISH_EVERY_S:
            self._publish_pending = True
            return
        self._published, self._publish_pending = now, False
        self.metrics.publish(self.supervisor.engine.managed.values(), self.rules.classes,
                             self.pools.views(MAX_POOLS), self.supervisor.engine.paused)

    def reload(self) -> str | None:
        try:
            rules = load_rules(self.cfg.rules, self.cfg.rules_dir)
        except ConfigError as e:
            self.last_reload_error = str(e)
            log.error("reload_failed", error=str(e), action="keeping the last good rules")
            return str(e)
        self.rules = rules
        self.last_reload_error = None
        self.supervisor.swap_rules(rules)
        log.event("reloaded", rules=rules.sources)
        return None

    # --- what the API shows ---

    def daemon_view(self) -> DaemonView:
        return {
            "pid": os.getpid(),
            "started": self.started,
            "uptime_s": round(time.time() - self.started, 1),
            "dry_run": self.cfg.dry_run,
            "paused": self.supervisor.engine.paused,
            "scope_pid": self.cfg.scope_pid,
            "events": self.event_source_name,
            "event_overruns": self.event_source.overruns if self.event_source else 0,
            "rules": self.rules.sources,
            "last_reload_error": self.last_reload_error,
            "recovered": self.recovered,
            "journal_unusable": self.journal.unusable_count if self.journal else 0,
            "clients": len(self.transport.conns),
            "clients_refused": self.transport.refused,
            "clients_expired": self.transport.expired,
            "metrics": self.metrics_view(),
            "event_sink_failures": sum(self.sinks.failures.values()),
            "telemetry": self.telemetry_view(),
        }

    def telemetry_view(self) -> TelemetryView:
        return {"events_socket": events_socket_view(self.receiver),
                "store": self.store.view() if self.store else no_store_view(),
                "runqueue": self.runqueue.view()}

    def metrics_view(self) -> MetricsView:
        ex = self.exporter
        if ex is None or ex.bound is None:
            return {"address": None, "url": None, "loopback": None, "refused": 0}
        return {"address": str(ex.bound), "url": ex.bound.url, "loopback": ex.bound.loopback,
                "refused": ex.refused}

    def mechanisms(self) -> list[dict[str, Any]]:
        return self._mechanisms

    def gpu_view(self) -> dict[str, Any]:
        # The sampler's report (at most two intervals old): `status` never waits on NVML
        # in the loop while the sampler thread has a recent one.
        try:
            rep = self.gpu_sampler.latest()
        except Exception as e:
            return {"available": False, "reason": f"NVML error: {e}", "gpus": []}
        thr = self.rules.gpu_available_threshold
        gpus = []
        for g in rep.gpus:
            d = dict(g.__dict__)
            d["processes"] = [p.__dict__ for p in g.processes]
            u = g.utilization_gpu
            d["available_for_work"] = None if u is None else u < thr
            gpus.append(d)
        return {"available": rep.available, "reason": rep.reason, "threshold_pct": thr,
                "gpus": gpus}

    # --- stopping ---

    def shutdown(self) -> None:
        if hasattr(self, "supervisor"):
            try:
                rep = self.supervisor.stop()
                log.event("stopped", **{k: v for k, v in rep.to_json().items()
                                        if k != "details"})
            except Exception as e:
                log.error("restore_on_stop_failed", error=f"{type(e).__name__}: {e}")
        self.transport.close()
        self._close_telemetry_sources()
        if self.event_source is not None:
            try:
                self.event_source.close()
            except Exception as e:
                log.warn("event_source_close_failed", error=str(e))
        if self.journal:
            self.journal.shutdown()
        self.gpu_sampler.stop()
        if self.store is not None:
            try:
                self.store.close()  # the last flush: the stop's own restores included
            except Exception as e:
                log.warn("event_store_close_failed", error=str(e)[:200])
            self.store = None
        if getattr(self, "otlp", None) is not None:
            if not self.otlp.close(5.0):
                log.warn("otlp_flush_incomplete", endpoint=self.cfg.otlp_endpoint)
            self.otlp = None
        if self.exporter is not None:
            self.exporter.close()
            self.exporter = None
        for fd in (self._lockfd, self._dir_fd):
            if fd is not None:
                os.close(fd)
        self._lockfd = self._dir_fd = None

    def _close_telemetry_sources(self) -> None:
        """Take what the events socket and the run-queue source still hold, then close
        them (the socket file is removed if it is still ours)."""
        if self.receiver is not None:
            try:
                self.receiver.handle_readable()
            except Exception as e:
                log.warn("events_socket_read_failed", error=str(e)[:200])
            self.receiver.close()
            self.receiver = None
        self.runqueue.stop()
        for rq in self.runqueue_queue.drain():
            self.sinks.emit(rq)
        self.runqueue_queue.close()

