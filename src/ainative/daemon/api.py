"""The control API: one table of op -> who may call it -> handler, and typed replies.

Who may ask for what is decided here from the caller's SO_PEERCRED credentials, before
any handler runs: anyone may read (ping, status, explain, latency — other users'
processes shown without their environment), a user may register or report pools only for their own
processes (and registration goes through the access policy of the rule files), and only
root may restore, resume or reload.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypedDict

from ainative import __version__, log
from ainative.core.activity import ActivityView
from ainative.core.classifier import ENV_VAR
from ainative.core.engine import Managed
from ainative.core.knobs import describe
from ainative.core.plan import activity_rules, state_of
from ainative.core.supervisor import Refused, Supervisor
from ainative.daemon.metrics import (
    INFERENCE_BUCKETS_S,
    RUNQUEUE_BUCKETS_S,
    DaemonMetrics,
    bucket_quantile,
    log2_rebin,
)
from ainative.daemon.pools import PoolRegistry, PoolReportError
from ainative.daemon.telemetry import TelemetryView
from ainative.ipc.protocol import (
    Peer,
    RequestError,
    int_field,
    parse_request,
    reply_error,
    reply_ok,
    str_field,
)
from ainative.platform.base import ProcessGone

# A status reply is bounded whatever the machine runs: the daemon builds it in memory and
# a reader may be slow.
MAX_STATUS_TASKS = 2000
MAX_STATUS_POOLS = 512


# Another user's environment is theirs: say whether the signal matched, not what their
# environment holds.
HIDDEN_ENV = f"{ENV_VAR}: not shown (another user's process)"


def _may_see_env(peer: Peer, owner: int | None) -> bool:
    return peer.is_root or (owner is not None and peer.uid == owner)


class Access(enum.Enum):
    ANYONE = "anyone"
    OWNER = "the owner of the process, or root"  # the handler checks ownership
    ROOT = "root"


# Functional form: "class" is the wire name and a Python keyword.
TaskView = TypedDict("TaskView", {
    "pid": int, "start_time": int, "name": str, "uid": int | None, "class": str,
    "active": bool, "signals": list[str], "applied": dict[str, str],
    "would_apply": dict[str, str], "state": str, "activity": ActivityView | None,
    "targets": dict[str, str], "overridden": dict[str, str], "errors": dict[str, str],
    "threads": int, "cpu_time_s": float | None, "since": float,
})


class MetricsView(TypedDict):
    """The Prometheus endpoint: all None (and refused 0) with --metrics-address off."""

    address: str | None  # as bound: the real port when 0 was asked for
    url: str | None
    loopback: bool | None
    refused: int  # scrapes closed unanswered: more than the exporter's limit at once


class DaemonView(TypedDict):
    pid: int
    started: float
    uptime_s: float
    dry_run: bool
    paused: bool
    scope_pid: int | None
    events: str
    event_overruns: int
    rules: list[str]
    last_reload_error: str | None
    recovered: dict[str, Any] | None
    journal_unusable: int
    clients: int
    clients_refused: int
    clients_expired: int
    metrics: MetricsView
    event_sink_failures: int  # events a telemetry sink failed on (dropped)
    telemetry: TelemetryView  # events socket, event store, run-queue source


class LatencyDist(TypedDict):
    """One histogram of a process, from the daemon's fixed metric buckets. Quantiles are
    approximate: the upper bound of the bucket they fall in (None with no samples, and
    for p99 above the last bound, which over_last then says)."""

    count: int
    p50_s: float | None
    p99_s: float | None
    over_last: bool  # p99 lies above the last bucket bound
    # log2 buckets: [upper bound in microseconds (a power of two; None: above the last
    # fixed bound), count], ascending, re-binned from the fixed buckets
    log2_us: list[tuple[int | None, int]]


class TaskLatency(TypedDict):
    pid: int
    inference: LatencyDist  # spans the process sent
    runqueue: LatencyDist  # per-wakeup waits (eBPF); empty with schedstat
    schedstat_wait_s: float | None  # run-queue wait summed from schedstat (fallback)


class LatencyReply(TypedDict):
    available: bool  # False: the daemon keeps no latency state (metrics off)
    why: str  # when not available, why
    tasks: list[TaskLatency]  # managed processes only, the ones status lists


def _dist(bounds: tuple[float, ...], counts: tuple[int, ...] | None) -> LatencyDist:
    if counts is None:
        return {"count": 0, "p50_s": None, "p99_s": None, "over_last": False, "log2_us": []}
    p50, p99 = bucket_quantile(bounds, counts, 0.5), bucket_quantile(bounds, counts, 0.99)
    over = p99 is not None and p99 == float("inf")
    return {"count": sum(counts),
            "p50_s": None if p50 is None or p50 == float("inf") else p50,
            "p99_s": None if over else p99, "over_last": over,
            "log2_us": log2_rebin(bounds, counts)}


class Host(Protocol):
    """What the API needs from the daemon around it."""

    supervisor: Supervisor
    pools: PoolRegistry

    def daemon_view(self) -> DaemonView: ...
    def mechanisms(self) -> list[dict[str, Any]]: ...
    def gpu_view(self) -> dict[str, Any]: ...
    def reload(self) -> str | None: ...


Handler = Callable[[dict[str, Any], Peer], Mapping[str, Any]]


@dataclass(frozen=True)
class Op:
    name: str
    access: Access
    handler: Handler


class Api:
    def __init__(self, host: Host) -> None:
        self.host = host
        self.ops: dict[str, Op] = {op.name: op for op in (
            Op("ping", Access.ANYONE, self.ping),
            Op("status", Access.ANYONE, self.status),
            Op("explain", Access.ANYONE, self.explain),
            Op("latency", Access.ANYONE, self.latency),
            Op("register", Access.OWNER, self.register),
            Op("report_pool", Access.OWNER, self.report_pool),
            Op("restore", Access.ROOT, self.restore),
            Op("resume", Access.ROOT, self.resume),
            Op("reload", Access.ROOT, self.reload),
        )}

    @property
    def sup(self) -> Supervisor:
        return self.host.supervisor

    def handle(self, line: bytes, peer: Peer) -> bytes:
        """One request line in, one reply line out; never raises."""
        try:
            req = parse_request(line)
            op = self.ops.get(req["op"])
            if op is None:
                known = ", ".join(sorted(self.ops))
                raise RequestError(f"unknown op {req['op']!r}; known: {known}")
            if op.access is Access.ROOT and not peer.is_root:
                raise RequestError(f"{op.name!r} needs root (you are uid {peer.uid})")
            return reply_ok(**op.handler(req, peer))
        except RequestError as e:
            log.warn("bad_request", peer_pid=peer.pid, uid=peer.uid, error=str(e))
            return reply_error(str(e))
        except Exception as e:  # the daemon keeps serving whatever one request does
            log.error("request_failed", error=f"{type(e).__name__}: {e}")
            return reply_error(f"internal error: {type(e).__name__}: {e}")

    # --- ops ---

    def ping(self, req: dict[str, Any], peer: Peer) -> Mapping[str, Any]:
        return {"pong": True, "pid": os.getpid(), "version": __version__}

    def status(self, req: dict[str, Any], peer: Peer) -> Mapping[str, Any]:
        managed = sorted(self.sup.engine.managed.values(), key=lambda m: m.ident.pid)
        tasks = [self.task_view(m, peer) for m in managed[:MAX_STATUS_TASKS]]
        classes = self.sup.rules.classes
        journal = self.sup.engine.journal
        return {
            "version": __version__,
            "daemon": self.host.daemon_view(),
            "mechanisms": self.host.mechanisms(),
            "gpu": self.host.gpu_view(),
            "classes": {n: c.knobs_summary() for n, c in classes.items()},
            "activity": activity_rules(self.sup),
            "guard": self.sup.guard_view(),
            "task_count": len(managed),
            "tasks": tasks,
            "tasks_truncated": max(0, len(managed) - MAX_STATUS_TASKS),
            "pools": self.host.pools.views(MAX_STATUS_POOLS),
            "pool_count": len(self.host.pools),
            "journal": {"in_force": len(journal.in_force()) if journal else 0},
        }

    def explain(self, req: dict[str, Any], peer: Peer) -> Mapping[str, Any]:
        pid = int_field(req, "pid")
        try:
            info = self.sup.backend.read_process(pid)
            d = self.sup.decide(pid)
        except ProcessGone as e:
            raise RequestError(f"no process {pid}") from e
        except PermissionError as e:
            raise RequestError(f"process {pid} cannot be read: {e}") from e
        out: dict[str, Any] = d.to_json()
        if not _may_see_env(peer, info.uid):
            for s in out["signals"]:
                if s["signal"] == "env":
                    s["detail"] = HIDDEN_ENV
        if d.cls is not None:
            out["knobs"] = self.sup.rules.classes[d.cls].knobs_summary()
        m = self.sup.engine.managed.get(d.ident)
        if m is not None:
            out["managed"] = self.task_view(m, peer)
            out["state"] = state_of(self.sup, m)
            out["activity"] = self.sup.activity_view(m.ident)
        elif d.cls is not None:
            out["state"] = "decided just now; applied on the next event"
        held = self.sup.guard.contender_view(d.ident)
        if held is not None:
            # A competitor the closed loop demotes, managed by a class or not.
            out["guard"] = held
            if m is None:
                out["state"] = f"demoted by the closed loop: {held['why']}"
        out["activity_rules"] = activity_rules(self.sup)
        if self.sup.cfg.dry_run:
            out["dry_run"] = "dry run: nothing is changed, knobs show what would be applied"
        return out

    def latency(self, req: dict[str, Any], peer: Peer) -> LatencyReply:
        """Per managed process (the ones status lists, nothing else: no unmanaged pid's
        spans, no span names), its inference and run-queue latency from the metrics."""
        metrics = getattr(self.host, "metrics", None)
        if not isinstance(metrics, DaemonMetrics):
            return {"available": False, "tasks": [],
                    "why": "the daemon keeps latency with its metrics, which are off "
                           "(--metrics-address off)"}
        pids = sorted(m.ident.pid for m in self.sup.engine.managed.values())
        pids = pids[:MAX_STATUS_TASKS]
        snap = metrics.latency_snapshot(pids)
        tasks: list[TaskLatency] = []
        for pid in pids:
            lat = snap.get(pid)
            tasks.append({
                "pid": pid,
                "inference": _dist(INFERENCE_BUCKETS_S, lat.inference if lat else None),
                "runqueue": _dist(RUNQUEUE_BUCKETS_S, lat.runqueue if lat else None),
                "schedstat_wait_s": round(lat.schedstat_wait_s, 6) if lat else None,
            })
        return {"available": True, "why": "", "tasks": tasks}

    def register(self, req: dict[str, Any], peer: Peer) -> Mapping[str, Any]:
        pid, cls = int_field(req, "pid"), str_field(req, "class")
        try:
            m = self.sup.register(pid, cls, peer.uid)
        except Refused as e:
            raise RequestError(str(e)) from e
        dry = self.sup.engine.dry_run
        return {"pid": pid, "class": cls, "applied": {} if dry else m.applied_summary(),
                "would_apply": m.applied_summary() if dry else {},
                "state": state_of(self.sup, m), "active": m.active, "errors": m.errors}

    def report_pool(self, req: dict[str, Any], peer: Peer) -> Mapping[str, Any]:
        pid = int_field(req, "pid")
        try:
            info = self.sup.backend.read_process(pid)
        except ProcessGone as e:
            raise RequestError(f"no process {pid}") from e
        if not peer.is_root and info.uid != peer.uid:
            raise RequestError("you may only report pools of your own processes")
        try:
            self.host.pools.report(info.ident, info.uid, req.get("pool"))
        except PoolReportError as e:
            raise RequestError(str(e)) from e
        return {}

    def restore(self, req: dict[str, Any], peer: Peer) -> Mapping[str, Any]:
        return dict(self.sup.restore().to_json(), paused=True)

    def resume(self, req: dict[str, Any], peer: Peer) -> Mapping[str, Any]:
        self.sup.resume()
        return {"paused": False}

    def reload(self, req: dict[str, Any], peer: Peer) -> Mapping[str, Any]:
        err = self.host.reload()
        if err:
            raise RequestError(f"reload failed, last good rules stay in force: {err}")
        return {"rules": self.sup.rules.sources}

    # --- views ---

    def task_view(self, m: Managed, peer: Peer) -> TaskView:
        dry = self.sup.engine.dry_run
        try:
            u, s = self.sup.backend.cpu_times(m.ident.pid)
            cpu: float | None = round(u + s, 3)
        except (ProcessGone, OSError):
            cpu = None
        view: TaskView = {
            "pid": m.ident.pid,
            "start_time": m.ident.start_time,
            "name": m.name,
            "uid": m.decision.uid,
            "class": m.cls,
            "active": m.active,
            "signals": [HIDDEN_ENV if s.name == "env" and not _may_see_env(peer, m.decision.uid)
                        else s.detail for s in m.decision.matched_signals],
            "applied": m.applied_summary() if m.active and not dry else {},
            "would_apply": m.applied_summary() if m.active and dry else {},
            "state": state_of(self.sup, m),
            "activity": self.sup.activity_view(m.ident),
            "targets": {k: describe(k, v) for k, v in m.targets.items()},
            "overridden": m.overridden,
            "errors": m.errors,
            "threads": len(m.threads),
            "cpu_time_s": cpu,
            "since": m.since,
        }
        return view

