"""The daemon: process events -> classification -> engine, and the control socket.

One thread, one select loop: process events (netlink or poll), socket clients, signals
(through a wakeup fd), and timers (reconcile, library re-checks). A single thread keeps
every change ordered and the journal simple.
"""

from __future__ import annotations

import errno
import fcntl
import heapq
import os
import selectors
import signal
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Any

from ainative import __version__, log
from ainative.core.classes import ConfigError
from ainative.core.classifier import Classifier, Decision
from ainative.core.engine import Engine, Managed, describe
from ainative.core.journal import Journal
from ainative.core.rules import DEFAULT_RULES_DIR, RuleSet, load_rules
from ainative.ipc.protocol import (
    MAX_REQUEST,
    Peer,
    RequestError,
    int_field,
    parse_request,
    reply_error,
    reply_ok,
    str_field,
)
from ainative.platform.backend import Backend
from ainative.platform.base import ProcessGone, TaskId

DEFAULT_STATE_DIR = "/var/lib/ainative"
MAX_CLIENTS = 64
MAX_POOLS = 4096
CLIENT_TIMEOUT = 10.0


@dataclass
class DaemonConfig:
    rules: list[str] = field(default_factory=list)
    rules_dir: str | None = DEFAULT_RULES_DIR
    state_dir: str = DEFAULT_STATE_DIR
    socket_path: str = "/run/ainative/ainative.sock"
    scope_pid: int | None = None
    dry_run: bool = False
    reconcile_interval: float = 1.0
    cgroup_root: str = "ainative"
    cgroups: bool = True
    poll_interval: float = 0.5


class StartupError(Exception):
    """The daemon cannot start; the message says why and what to do."""


@dataclass
class _Conn:
    sock: socket.socket
    peer: Peer
    buf: bytearray = field(default_factory=bytearray)
    out: bytearray = field(default_factory=bytearray)
    opened: float = field(default_factory=time.monotonic)
    closing: bool = False


def _gpu_pids_cached(ttl: float = 2.0) -> Any:
    from ainative.gpu import nvml

    cache: dict[str, Any] = {"t": -1e9, "v": set()}

    def get() -> set[int]:
        now = time.monotonic()
        if now - cache["t"] > ttl:
            try:
                cache["v"] = nvml.compute_pids()
            except Exception:
                cache["v"] = set()
            cache["t"] = now
        return set(cache["v"])

    return get


class Daemon:
    def __init__(self, config: DaemonConfig, backend: Backend | None = None) -> None:
        self.cfg = config
        if backend is None:
            from ainative.platform.linux.backend import LinuxBackend

            backend = LinuxBackend(cgroup_root=config.cgroup_root)
        self.backend = backend
        self.started = time.time()
        self.rules: RuleSet = self._load_rules_or_fail()
        self.journal: Journal | None = None
        self.engine: Engine
        self.classifier: Classifier
        # Keyed by process identity and pool name: a process may hold several pools.
        self.pools: dict[tuple[TaskId, str], dict[str, Any]] = {}
        self.mechanisms: list[dict[str, Any]] = []
        self.event_source: Any = None
        self.event_source_name = "none"
        self.sel = selectors.DefaultSelector()
        self.listener: socket.socket | None = None
        self.conns: dict[int, _Conn] = {}
        self._stop = False
        self._hup = False
        self._timers: list[tuple[float, int, TaskId]] = []
        self._lockfd: int | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self.recovered: dict[str, Any] | None = None
        self.last_reload_error: str | None = None

    # --- start-up ---

    def _load_rules_or_fail(self) -> RuleSet:
        try:
            return load_rules(self.cfg.rules, self.cfg.rules_dir)
        except ConfigError as e:
            raise StartupError(f"bad rules: {e}") from e

    def _lock_state_dir(self) -> None:
        os.makedirs(self.cfg.state_dir, mode=0o700, exist_ok=True)
        fd = os.open(os.path.join(self.cfg.state_dir, "daemon.lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            raise StartupError(
                f"another ainative daemon is using state dir {self.cfg.state_dir}") from e
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lockfd = fd

    def start(self) -> None:
        self._lock_state_dir()
        self.journal = None if self.cfg.dry_run else Journal(self.cfg.state_dir)
        self.engine = Engine(self.backend, self.journal, self.rules.classes,
                             dry_run=self.cfg.dry_run, cgroups_enabled=self.cfg.cgroups)
        left = self.journal.in_force() if self.journal else []
        if left:
            # A previous run died without undoing: undo now, before anything else.
            rep = self.engine.restore_all(pause=False)
            self.recovered = rep.to_json()
            log.warn("crash_recovery", changes_found=len(left), **{
                k: v for k, v in rep.to_json().items() if k != "details"})
        self.classifier = Classifier(self.backend, self.rules, scope_pid=self.cfg.scope_pid,
                                     gpu_pids=_gpu_pids_cached())
        self._probe()
        self._open_events()
        self._open_socket()
        self._install_signals()
        log.event("started", version=__version__, pid=os.getpid(), events=self.event_source_name,
                  socket=self.cfg.socket_path, state_dir=self.cfg.state_dir,
                  scope=self.cfg.scope_pid, dry_run=self.cfg.dry_run,
                  rules=self.rules.sources, classes=sorted(self.rules.classes))
        self.full_scan()

    def _probe(self) -> None:
        try:
            from ainative.platform.linux.probe import probe_mechanisms

            mechs = probe_mechanisms()
            self.mechanisms = [
                {"name": m.name, "available": m.available, "detail": m.detail} for m in mechs]
        except Exception as e:  # a probe must never stop the daemon
            self.mechanisms = [{"name": "probe", "available": False, "detail": str(e)}]
        for m in self.mechanisms:
            log.event("mechanism", **m)

    def _open_events(self) -> None:
        try:
            from ainative.platform.linux.connector import open_event_source

            self.event_source = open_event_source(self.cfg.poll_interval)
            self.event_source_name = getattr(self.event_source, "name", "?")
            reason = getattr(self.event_source, "fallback_reason", None)
            if reason:
                log.warn("event_source_fallback", using=self.event_source_name, reason=reason)
            self.sel.register(self.event_source.fileno(), selectors.EVENT_READ, "events")
        except Exception as e:
            self.event_source = None
            self.event_source_name = f"periodic scan only ({e})"
            log.warn("no_event_source", error=str(e))

    def _open_socket(self) -> None:
        path = self.cfg.socket_path
        os.makedirs(os.path.dirname(path) or ".", mode=0o755, exist_ok=True)
        if os.path.exists(path):
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(path)
            except OSError:
                os.unlink(path)  # stale socket of a dead daemon
            else:
                raise StartupError(f"a daemon is already listening on {path}")
            finally:
                probe.close()
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(path)
        # Anyone may connect; what they may do is decided from SO_PEERCRED.
        os.chmod(path, 0o666)
        s.listen(16)
        s.setblocking(False)
        self.listener = s
        self.sel.register(s, selectors.EVENT_READ, "listen")

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
        self.start()
        next_reconcile = time.monotonic() + self.cfg.reconcile_interval
        try:
            while not self._stop:
                now = time.monotonic()
                timeout = next_reconcile - now
                if self._timers:
                    timeout = min(timeout, self._timers[0][0] - now)
                for key, _ in self.sel.select(max(0.0, timeout)):
                    self._dispatch(key)
                if self._hup:
                    self._hup = False
                    self.reload()
                self._run_timers()
                now = time.monotonic()
                if now >= next_reconcile:
                    self._reconcile()
                    next_reconcile = now + self.cfg.reconcile_interval
        finally:
            self.shutdown()
        return 0

    def _dispatch(self, key: selectors.SelectorKey) -> None:
        what = key.data
        if what == "events":
            try:
                events = self.event_source.read()
            except OSError as e:
                log.warn("event_read_failed", error=str(e))
                events = []
            for ev in events:
                self.on_event(ev)
        elif what == "listen":
            self._accept()
        elif what == "wake":
            try:
                while self._wake_r and self._wake_r.recv(4096):
                    pass
            except BlockingIOError:
                pass
        elif isinstance(what, int):
            self._client_io(what, key.events)

    def on_event(self, ev: Any) -> None:
        kind, pid, tid = ev.kind, ev.pid, ev.tid
        if kind == "scan":
            self.full_scan()
        elif kind == "exec":
            # A new program: what was mapped before (same pid, same start time) is gone.
            self.classifier.forget_pid(pid)
            self.examine(pid)
        elif kind == "comm":
            self.examine(pid)
        elif kind == "fork":
            if tid != pid:
                self.engine.on_new_thread(pid, tid)
            elif self._managed_by_pid(ev.parent_pid) is not None:
                # Only a managed parent's fork matters now (inherited values); any other
                # fork is looked at when it execs, which keeps busy build machines cheap.
                self.examine(pid, parent_pid=ev.parent_pid)
        elif kind == "exit" and tid == pid:
            for ident in [i for i in self.engine.managed if i.pid == pid]:
                self.engine.forget(ident, "exited")
            for key in [k for k in self.pools if k[0].pid == pid]:
                del self.pools[key]

    # --- classification ---

    def _managed_by_pid(self, pid: int) -> Managed | None:
        for ident, m in self.engine.managed.items():
            if ident.pid == pid:
                return m
        return None

    def examine(self, pid: int, parent_pid: int | None = None, force_libs: bool = True) -> None:
        try:
            info = self.backend.read_process(pid)
        except (ProcessGone, PermissionError, OSError):
            return
        managed = self.engine.managed.get(info.ident)
        try:
            d = self.classifier.classify(info, managed=managed is not None, libraries=force_libs)
        except ProcessGone:
            return
        except (PermissionError, OSError) as e:
            log.debug("classify_failed", pid=pid, error=str(e))
            return
        if d.excluded:
            return
        parent = self._managed_by_pid(parent_pid if parent_pid else info.ppid)
        if d.cls is None:
            if managed is not None:
                self.engine.manage(d)
            elif parent is not None and parent_pid is not None:
                self.engine.reset_inherited(pid, parent)
            self._schedule(info.ident)
            return
        self.engine.manage(d, inherited=parent if parent_pid is not None else None)

    def _schedule(self, ident: TaskId) -> None:
        due = self.classifier.next_library_check(ident)
        if due is not None:
            heapq.heappush(self._timers, (due, ident.pid, ident))

    def _run_timers(self) -> None:
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, _, ident = heapq.heappop(self._timers)
            if ident in self.engine.managed:
                continue
            try:
                if self.backend.task_id(ident.pid) != ident:
                    self.classifier.forget(ident)
                    continue
            except ProcessGone:
                self.classifier.forget(ident)
                continue
            if self.classifier.library_recheck_due(ident):
                self.examine(ident.pid)
            else:
                self._schedule(ident)

    def full_scan(self) -> None:
        alive: set[TaskId] = set()
        for pid in self.backend.list_pids():
            try:
                alive.add(self.backend.task_id(pid))
            except ProcessGone:
                continue
            self.examine(pid)
        self.classifier.forget_gone(alive)
        for ident in [i for i in self.engine.managed if i not in alive]:
            self.engine.forget(ident, "exited")
        # Rebuild timers from scratch so the heap never grows without bound.
        self._timers = [t for t in self._timers if t[2] in alive]
        heapq.heapify(self._timers)

    def _reconcile(self) -> None:
        self.engine.reconcile()
        if self.event_source is None:
            self.full_scan()
        if self.journal:
            self.journal.maybe_compact()

    def reload(self) -> str | None:
        try:
            rules = load_rules(self.cfg.rules, self.cfg.rules_dir)
        except ConfigError as e:
            self.last_reload_error = str(e)
            log.error("reload_failed", error=str(e), action="keeping the last good rules")
            return str(e)
        self.rules = rules
        self.classifier.rules = rules
        self.engine.classes = rules.classes
        self.last_reload_error = None
        log.event("reloaded", rules=rules.sources)
        for ident in list(self.engine.managed):
            m = self.engine.managed.get(ident)
            if m is not None and m.cls not in rules.classes:
                self.engine.unmanage(ident, f"class {m.cls} no longer defined")
        self.full_scan()
        return None

    # --- socket ---

    def _accept(self) -> None:
        assert self.listener is not None
        while True:
            try:
                s, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            if len(self.conns) >= MAX_CLIENTS:
                s.close()
                continue
            creds = s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            pid, uid, gid = struct.unpack("3i", creds)
            s.setblocking(False)
            self.conns[s.fileno()] = _Conn(s, Peer(pid, uid, gid))
            self.sel.register(s, selectors.EVENT_READ, s.fileno())
        self._expire_clients()

    def _expire_clients(self) -> None:
        now = time.monotonic()
        for fd, c in list(self.conns.items()):
            if now - c.opened > CLIENT_TIMEOUT:
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

    def _client_io(self, fd: int, events: int) -> None:
        c = self.conns.get(fd)
        if c is None:
            return
        if events & selectors.EVENT_READ and not c.closing:
            try:
                data = c.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError:
                self._drop(fd)
                return
            if data == b"":
                # The peer finished sending: answer a last unterminated request, then close.
                if not c.buf and not c.out:
                    self._drop(fd)
                    return
                c.closing = True
                if c.buf.strip():
                    line = bytes(c.buf)
                    c.buf.clear()
                    c.out += self.handle(line, c.peer)
                data = None
            if data:
                c.buf += data
                while b"\n" in c.buf:
                    line, _, rest = bytes(c.buf).partition(b"\n")
                    c.buf = bytearray(rest)
                    if line.strip():
                        c.out += self.handle(line, c.peer)
                if len(c.buf) > MAX_REQUEST:
                    c.out += reply_error(f"request larger than {MAX_REQUEST} bytes")
                    c.buf.clear()
                    c.closing = True
        if c.out:
            try:
                n = c.sock.send(c.out)
                del c.out[:n]
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                self._drop(fd)
                return
        if c.closing and not c.out:
            self._drop(fd)
            return
        want = selectors.EVENT_READ | (selectors.EVENT_WRITE if c.out else 0)
        self.sel.modify(c.sock, want, fd)

    def handle(self, line: bytes, peer: Peer) -> bytes:
        try:
            req = parse_request(line)
            return self._op(req, peer)
        except RequestError as e:
            log.warn("bad_request", peer_pid=peer.pid, uid=peer.uid, error=str(e))
            return reply_error(str(e))
        except Exception as e:  # the daemon keeps serving whatever one request does
            log.error("request_failed", error=f"{type(e).__name__}: {e}")
            return reply_error(f"internal error: {type(e).__name__}: {e}")

    def _op(self, req: dict[str, Any], peer: Peer) -> bytes:
        op = req["op"]
        if op == "ping":
            return reply_ok(pong=True, pid=os.getpid())
        if op == "status":
            return reply_ok(**self.status())
        if op == "explain":
            return reply_ok(**self.explain(int_field(req, "pid")))
        if op == "register":
            return reply_ok(**self.register(int_field(req, "pid"), str_field(req, "class"), peer))
        if op == "report_pool":
            return reply_ok(**self.report_pool(int_field(req, "pid"), req.get("pool"), peer))
        if not peer.is_root:
            raise RequestError(f"{op!r} needs root (you are uid {peer.uid})")
        if op == "restore":
            return reply_ok(**self.engine.restore_all().to_json(), paused=True)
        if op == "resume":
            self.engine.resume()
            self.full_scan()
            return reply_ok(paused=False)
        if op == "reload":
            err = self.reload()
            if err:
                raise RequestError(f"reload failed, last good rules stay in force: {err}")
            return reply_ok(rules=self.rules.sources)
        raise RequestError(f"unhandled op {op!r}")

    def register(self, pid: int, cls: str, peer: Peer) -> dict[str, Any]:
        if cls not in self.rules.classes:
            known = ", ".join(sorted(self.rules.classes))
            raise RequestError(f"unknown class {cls!r}; known: {known}")
        try:
            info = self.backend.read_process(pid)
        except ProcessGone as e:
            raise RequestError(f"no process {pid}") from e
        if not peer.is_root:
            if info.uid != peer.uid:
                raise RequestError(f"process {pid} belongs to uid {info.uid}; you (uid "
                                   f"{peer.uid}) may only register your own processes")
            if self.rules.classes[cls].is_realtime:
                raise RequestError(
                    f"class {cls!r} uses a realtime policy; only root may ask for it")
        self.classifier.registrations[info.ident] = cls
        self.examine(pid)
        m = self.engine.managed.get(info.ident)
        if m is None:
            reason = self.classifier.exclusion(info, False) or "not managed"
            raise RequestError(f"process {pid} cannot be managed: {reason}")
        log.event("registered", pid=pid, cls=cls, by_uid=peer.uid)
        return {"pid": pid, "class": cls, "applied": m.applied_summary(),
                "active": m.active, "errors": m.errors}

    def report_pool(self, pid: int, pool: Any, peer: Peer) -> dict[str, Any]:
        if not isinstance(pool, dict) or len(str(pool)) > 8192:
            raise RequestError("'pool' must be a small JSON object of pool stats")
        try:
            info = self.backend.read_process(pid)
        except ProcessGone as e:
            raise RequestError(f"no process {pid}") from e
        if not peer.is_root and info.uid != peer.uid:
            raise RequestError("you may only report pools of your own processes")
        key = (info.ident, str(pool.get("name", "pool")))
        if pool.get("closed"):
            self.pools.pop(key, None)
            return {}
        if key not in self.pools and len(self.pools) >= MAX_POOLS:
            raise RequestError("too many pools reported")
        self.pools[key] = dict(pool, pid=pid, reported_at=time.time())
        return {}

    # --- views ---

    def _gpu(self) -> dict[str, Any]:
        from ainative.gpu import nvml

        try:
            rep = nvml.read_gpus()
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

    def task_json(self, m: Managed) -> dict[str, Any]:
        try:
            u, s = self.backend.cpu_times(m.ident.pid)
            cpu: float | None = round(u + s, 3)
        except (ProcessGone, OSError):
            cpu = None
        return {
            "pid": m.ident.pid,
            "start_time": m.ident.start_time,
            "name": m.name,
            "class": m.cls,
            "active": m.active,
            "signals": [s.detail for s in m.decision.matched_signals],
            "applied": m.applied_summary() if m.active else {},
            "targets": {k: describe(k, v) for k, v in m.targets.items()},
            "overridden": m.overridden,
            "errors": m.errors,
            "threads": len(m.threads),
            "cpu_time_s": cpu,
            "since": m.since,
        }

    def status(self) -> dict[str, Any]:
        tasks = [self.task_json(m) for m in sorted(self.engine.managed.values(),
                                                   key=lambda m: m.ident.pid)]
        return {
            "version": __version__,
            "daemon": {
                "pid": os.getpid(),
                "started": self.started,
                "uptime_s": round(time.time() - self.started, 1),
                "dry_run": self.cfg.dry_run,
                "paused": self.engine.paused,
                "scope_pid": self.cfg.scope_pid,
                "events": self.event_source_name,
                "rules": self.rules.sources,
                "last_reload_error": self.last_reload_error,
                "recovered": self.recovered,
            },
            "mechanisms": self.mechanisms,
            "gpu": self._gpu(),
            "classes": {n: c.knobs_summary() for n, c in self.rules.classes.items()},
            "task_count": len(tasks),
            "tasks": tasks,
            "pools": list(self.pools.values()),
            "journal": {"in_force": len(self.journal.in_force()) if self.journal else 0},
        }

    def explain(self, pid: int) -> dict[str, Any]:
        try:
            info = self.backend.read_process(pid)
        except ProcessGone as e:
            raise RequestError(f"no process {pid}") from e
        m = self.engine.managed.get(info.ident)
        d: Decision = self.classifier.classify(info, managed=m is not None, libraries=True)
        out: dict[str, Any] = d.to_json()
        if d.cls is not None:
            out["knobs"] = self.rules.classes[d.cls].knobs_summary()
        if m is not None:
            out["managed"] = self.task_json(m)
            if not m.active:
                out["why_not_applied"] = (
                    "paused after `ainative restore` (`ainative resume` to manage again)"
                    if self.engine.paused else
                    f"class {m.cls} applies only while an inference process is active")
        elif d.cls is not None:
            out["why_not_applied"] = "decided just now; it will be applied on the next event"
        if self.cfg.dry_run:
            out["dry_run"] = "dry run: nothing is changed, knobs show what would be applied"
        return out

    # --- stopping ---

    def shutdown(self) -> None:
        try:
            rep = self.engine.restore_all(pause=True)
            log.event("stopped", undone=rep.undone, skipped_gone=rep.skipped_gone,
                      skipped_changed=rep.skipped_changed, failed=rep.failed)
        except Exception as e:
            log.error("restore_on_stop_failed", error=str(e))
        try:
            self.backend.cleanup()
        except Exception as e:
            log.warn("cleanup_failed", error=str(e))
        for fd in list(self.conns):
            self._drop(fd)
        if self.listener is not None:
            self.listener.close()
            try:
                os.unlink(self.cfg.socket_path)
            except OSError as e:
                if e.errno != errno.ENOENT:
                    raise
        if self.event_source is not None:
            try:
                self.event_source.close()
            except Exception:
                pass
        if self.journal:
            self.journal.shutdown()
        if self._lockfd is not None:
            os.close(self._lockfd)


def offline_restore(state_dir: str, backend: Backend | None = None) -> dict[str, Any]:
    """`ainative restore` with no daemon running: undo what a dead daemon left in force."""
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    fd = os.open(os.path.join(state_dir, "daemon.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            raise StartupError("a daemon holds the state dir but its socket did not answer; "
                               "stop it (SIGTERM) and its changes are undone") from e
        if backend is None:
            from ainative.platform.linux.backend import LinuxBackend

            backend = LinuxBackend()
        journal = Journal(state_dir)
        engine = Engine(backend, journal, {})
        rep = engine.restore_all()
        journal.shutdown()
        return rep.to_json()
    finally:
        os.close(fd)
