"""The one event schema: what every telemetry source emits and every sink stores.

Six event types, the seed's three (ai_task_registered, inference_latency,
gpu_utilization) and three of ainative's own (policy_applied, policy_restored,
runqueue_latency). Each is a frozen dataclass; every event carries when it happened
(``ts_ns``, CLOCK_REALTIME nanoseconds, so events from different processes line up) and
the process and thread it is about.

On the wire (an in-process span to the daemon, a trace file's rows) an event is one JSON
object with a ``type`` key. Events arrive from any local process, so ``decode`` trusts
nothing: unknown types and keys, wrong types, negative durations, oversized strings and
lists are refused with a one-line reason (EventError), never half-accepted.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, fields
from typing import Any, ClassVar

MAX_EVENT_BYTES = 4096  # one datagram; a span's event is about 150 bytes
MAX_TEXT = 128  # span names, request ids, comm, class names, knob values
MAX_LIST = 16  # signals, ran_instead


class EventError(ValueError):
    """An event that cannot be decoded or is not valid: one line saying why."""


@dataclass(frozen=True)
class RanInstead:
    """A thread that had the CPU while the measured thread waited for it."""

    pid: int
    comm: str
    ns: int  # how long it ran while the measured thread waited


@dataclass(frozen=True)
class InferenceLatency:
    """One traced request (a span): its duration, and where the eBPF source was on, the
    run-queue wait its thread had during it and who ran instead."""

    TYPE: ClassVar[str] = "inference_latency"
    ts_ns: int  # when the span ended
    pid: int
    tid: int
    name: str  # the span's name ("infer", a model name)
    duration_ns: int
    request: str | None = None  # the caller's request id, if it gave one
    runqueue_wait_ns: int | None = None  # filled in by attribution
    ran_instead: tuple[RanInstead, ...] = ()


@dataclass(frozen=True)
class RunqueueLatency:
    """A thread of an AI process waited ``wait_ns`` between becoming runnable and running."""

    TYPE: ClassVar[str] = "runqueue_latency"
    ts_ns: int  # when it got the CPU
    pid: int
    tid: int
    wait_ns: int
    cpu: int = -1
    source: str = "ebpf"  # "ebpf" (per wakeup) or "schedstat" (summed over an interval)
    ran_instead: tuple[RanInstead, ...] = ()


@dataclass(frozen=True)
class AiTaskRegistered:
    """The daemon classified a process (the seed's "AI Task Registered")."""

    TYPE: ClassVar[str] = "ai_task_registered"
    ts_ns: int
    pid: int
    tid: int
    cls: str
    comm: str = ""
    signals: tuple[str, ...] = ()


@dataclass(frozen=True)
class GpuUtilization:
    """One GPU sample (the seed's "GPU Utilization"); pid/tid are the sampler's."""

    TYPE: ClassVar[str] = "gpu_utilization"
    ts_ns: int
    pid: int
    tid: int
    gpu: int
    utilization_gpu: float | None = None
    memory_used: int | None = None
    memory_total: int | None = None


@dataclass(frozen=True)
class PolicyApplied:
    """The daemon set a knob of a thread (or a process's cgroup: tid == pid)."""

    TYPE: ClassVar[str] = "policy_applied"
    ts_ns: int
    pid: int
    tid: int
    knob: str
    old: str
    new: str
    cls: str = ""


@dataclass(frozen=True)
class PolicyRestored:
    """The daemon put a knob back (stop, lift, restore, crash recovery)."""

    TYPE: ClassVar[str] = "policy_restored"
    ts_ns: int
    pid: int
    tid: int
    knob: str
    value: str
    why: str = ""


Event = (InferenceLatency | RunqueueLatency | AiTaskRegistered | GpuUtilization
         | PolicyApplied | PolicyRestored)

EVENT_TYPES: dict[str, type[Any]] = {c.TYPE: c for c in (
    InferenceLatency, RunqueueLatency, AiTaskRegistered, GpuUtilization, PolicyApplied,
    PolicyRestored)}


def to_dict(ev: Event) -> dict[str, Any]:
    d = asdict(ev)
    d["type"] = ev.TYPE
    return d


def encode(ev: Event) -> bytes:
    """One event as compact JSON (one datagram, one trace row)."""
    return json.dumps(to_dict(ev), separators=(",", ":")).encode()


def _int(v: Any, what: str, minimum: int = 0) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < minimum or v >= 1 << 63:
        raise EventError(f"{what} must be an integer >= {minimum}, not {v!r:.40}")
    return v


def _text(v: Any, what: str) -> str:
    if not isinstance(v, str) or len(v) > MAX_TEXT:
        raise EventError(f"{what} must be a string of at most {MAX_TEXT} characters")
    return v


def _float(v: Any, what: str) -> float:
    if not isinstance(v, int | float) or isinstance(v, bool) or v != v or v < 0:
        raise EventError(f"{what} must be a number >= 0, not {v!r:.40}")
    return float(v)


def _ran_instead(v: Any) -> tuple[RanInstead, ...]:
    if not isinstance(v, list | tuple) or len(v) > MAX_LIST:
        raise EventError(f"ran_instead must be a list of at most {MAX_LIST} entries")
    out = []
    for r in v:
        if not isinstance(r, dict) or set(r) != {"pid", "comm", "ns"}:
            raise EventError("each ran_instead entry must have exactly pid, comm and ns")
        out.append(RanInstead(_int(r["pid"], "ran_instead.pid"), _text(r["comm"], "comm"),
                              _int(r["ns"], "ran_instead.ns")))
    return tuple(out)


def _check(name: str, v: Any) -> Any:
    """One field's value, checked by its name (the schema has one meaning per name)."""
    if v is None and name in ("request", "runqueue_wait_ns", "utilization_gpu",
                              "memory_used", "memory_total"):
        return None
    if name == "ran_instead":
        return _ran_instead(v)
    if name == "signals":
        if not isinstance(v, list | tuple) or len(v) > MAX_LIST:
            raise EventError(f"signals must be a list of at most {MAX_LIST} strings")
        return tuple(_text(s, "a signal") for s in v)
    if name == "cpu":
        return _int(v, "cpu", minimum=-1)
    if name == "utilization_gpu":
        return _float(v, name)
    if name in ("ts_ns", "pid", "tid", "duration_ns", "wait_ns", "runqueue_wait_ns", "gpu",
                "memory_used", "memory_total"):
        return _int(v, name)
    return _text(v, name)


def from_dict(d: Any) -> Event:
    """A validated event from its decoded JSON object. Raises EventError."""
    if not isinstance(d, dict):
        raise EventError("an event must be a JSON object")
    t = d.get("type")
    cls = EVENT_TYPES.get(t) if isinstance(t, str) else None
    if cls is None:
        raise EventError(f"unknown event type {t!r:.40}; known: {', '.join(EVENT_TYPES)}")
    names = {f.name for f in fields(cls)}
    extra = set(d) - names - {"type"}
    if extra:
        raise EventError(f"{t}: unknown key(s) {', '.join(sorted(extra))[:80]}")
    required = {f.name for f in fields(cls)
                if f.default is MISSING and f.default_factory is MISSING}
    missing = required - set(d)
    if missing:
        raise EventError(f"{t}: missing key(s) {', '.join(sorted(missing))}")
    ev: Event = cls(**{k: _check(k, v) for k, v in d.items() if k != "type"})
    return ev


def decode(data: bytes) -> Event:
    """One event from its wire form. Raises EventError (one line) on anything wrong."""
    if len(data) > MAX_EVENT_BYTES:
        raise EventError(f"event of {len(data)} bytes is over the {MAX_EVENT_BYTES} limit")
    try:
        d = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise EventError(f"not JSON: {str(e)[:80]}") from None
    return from_dict(d)
