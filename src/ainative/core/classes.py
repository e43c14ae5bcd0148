"""Workload classes and the kernel knobs each one asks for."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ainative.core.knobs import (
    PRIORITY_CLASSES,
    SLICE_MAX_NS,
    SLICE_MIN_NS,
    THREAD_PRIORITIES,
    THREAD_PRIORITY_NAMES,
    show_slice,
)
from ainative.platform.base import (
    IOPRIO_CLASS_BY_NAME,
    POLICY_BY_NAME,
    POLICY_NAMES,
    SCHED_FIFO,
    SCHED_RR,
)
from ainative.units import UnitError, format_cpus, parse_cpus, parse_duration, parse_size


class ConfigError(ValueError):
    """A rule or class definition is wrong; the message names file and line."""


class BadClassKey(ValueError):
    """One key of a class table has a bad value; ``key`` lets the caller find its line."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


@dataclass(frozen=True)
class ClassPolicy:
    """One class: which knobs to set and to what. None leaves a knob alone."""

    name: str
    description: str = ""
    nice: int | None = None
    policy: int | None = None  # SCHED_* number
    rt_priority: int = 0
    ioprio: tuple[int, int] | None = None  # (class, level)
    # EEVDF's slice for its threads in ns (Linux 6.12+): a short one lets a waking thread
    # preempt one that a longer slice protects, with no more CPU share (core/knobs.py).
    slice_ns: int | None = None
    affinity: frozenset[int] | None = None
    cgroup: bool = False  # put the process in ainative's group for this class
    cpu_weight: int | None = None  # v2 scale 1..10000; v1 shares are derived
    cpu_idle: bool | None = None
    cpuset: str | None = None
    memory_low: int | None = None
    # Windows only (core/knobs.py): the process's priority class, its threads' priority.
    priority_class: str | None = None
    thread_priority: int | None = None
    # Processes of this class serve requests: the class's knobs are applied only while the
    # process is busy (CPU used in the recent activity window), and lifted after it has
    # been idle for idle_after; and only their activity turns on the classes below.
    serving: bool = False
    # Apply this class only while at least one serving process is busy. (Also read under
    # its old name, only_while_inference_active.)
    only_while_serving_active: bool = False
    # Lower numbers win when signals disagree about nothing else (see classifier).
    rank: int = 50
    # The closed loop's last step for a busy serving process of this class: SCHED_FIFO at
    # this priority once every step on the competitors did not bring the wait down
    # (core/guard.py; lifted when the process uses most of a CPU). None: never.
    guard_realtime: int | None = None

    @property
    def is_realtime(self) -> bool:
        """A realtime CPU policy (fifo or rr)."""
        return self.policy in (SCHED_FIFO, SCHED_RR)

    @property
    def uses_rt_io(self) -> bool:
        """The realtime I/O class (ioprio = "rt:N")."""
        return self.ioprio is not None and self.ioprio[0] == IOPRIO_CLASS_BY_NAME["rt"]

    def knobs_summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.nice is not None:
            out["nice"] = self.nice
        if self.policy is not None:
            out["policy"] = POLICY_NAMES[self.policy]
            if self.is_realtime:
                out["rt_priority"] = self.rt_priority
        if self.ioprio is not None:
            out["ioprio"] = format_ioprio(self.ioprio)
        if self.slice_ns is not None:
            out["slice"] = show_slice(self.slice_ns)
        if self.affinity is not None:
            out["affinity"] = format_cpus(self.affinity)
        if self.cgroup:
            cg: dict[str, Any] = {}
            if self.cpu_weight is not None:
                cg["cpu_weight"] = self.cpu_weight
            if self.cpu_idle is not None:
                cg["cpu_idle"] = self.cpu_idle
            if self.cpuset is not None:
                cg["cpuset"] = self.cpuset
            if self.memory_low is not None:
                cg["memory_low"] = self.memory_low
            out["cgroup"] = cg
        if self.priority_class is not None:
            out["priority_class"] = self.priority_class
        if self.thread_priority is not None:
            out["thread_priority"] = THREAD_PRIORITY_NAMES[self.thread_priority]
        if self.guard_realtime is not None:
            out["guard_realtime"] = self.guard_realtime
        if self.serving:
            out["serving"] = True
        if self.only_while_serving_active:
            out["only_while_serving_active"] = True
        return out


def parse_slice(val: Any) -> int:
    """'0.1ms' -> 100000 ns, or "default" -> 0; the kernel's range 0.1-100 ms."""
    if val == "default":
        return 0
    if not isinstance(val, str):
        raise ValueError(f"slice must be a duration like \"0.1ms\" or \"default\", not {val!r}")
    try:
        ns = round(parse_duration(val, "slice") * 1e9)
    except UnitError as e:
        raise ValueError(f"slice: {e.reason}") from None
    if not SLICE_MIN_NS <= ns <= SLICE_MAX_NS:
        raise ValueError(f"slice must be 0.1ms..100ms (the kernel's range), not {val!r}")
    return ns


def format_ioprio(v: tuple[int, int]) -> str:
    names = {n: k for k, n in IOPRIO_CLASS_BY_NAME.items()}
    return f"{names.get(v[0], v[0])}:{v[1]}"


def parse_ioprio(text: str) -> tuple[int, int]:
    """'be:4' -> (class, level); 'idle' -> idle class, level 7."""
    cls, _, level = text.partition(":")
    if cls not in IOPRIO_CLASS_BY_NAME or cls == "none":
        raise ValueError(f"ioprio class must be rt, be or idle, not {cls!r}")
    if level and not (level.isascii() and level.isdigit() and len(level) <= 2):
        raise ValueError(f"ioprio level must be 0..7, not {level!r}")
    lvl = int(level) if level else (0 if cls != "idle" else 7)
    if not 0 <= lvl <= 7:
        raise ValueError(f"ioprio level must be 0..7, not {lvl}")
    return IOPRIO_CLASS_BY_NAME[cls], lvl


_CLASS_KEYS = {
    "description", "nice", "policy", "rt_priority", "ioprio", "slice", "affinity", "cgroup",
    "cpu_weight", "cpu_idle", "cpuset", "memory_low", "serving", "only_while_serving_active",
    "only_while_inference_active", "rank", "guard_realtime", "priority_class",
    "thread_priority",
}
# Keys read under an older name: the old spelling keeps working in existing rule files.
_CLASS_KEY_ALIASES = {"only_while_inference_active": "only_while_serving_active",
                      "slice": "slice_ns"}


def _int_in(val: Any, lo: int, hi: int) -> bool:
    return isinstance(val, int) and not isinstance(val, bool) and lo <= val <= hi


def _class_value(key: str, val: Any) -> Any:
    """The ClassPolicy value for one table key, or ValueError saying what is wrong."""
    if key == "nice":
        if not _int_in(val, -20, 19):
            raise ValueError(f"nice must be an integer -20..19, not {val!r}")
        return val
    if key == "policy":
        if not isinstance(val, str) or val not in POLICY_BY_NAME:
            raise ValueError(f"policy must be one of {sorted(POLICY_BY_NAME)}, not {val!r}")
        return POLICY_BY_NAME[val]
    if key == "rt_priority":
        if not _int_in(val, 0, 99):
            raise ValueError(f"rt_priority must be an integer 0..99, not {val!r}")
        return val
    if key == "ioprio":
        if not isinstance(val, str):
            raise ValueError(f"ioprio must be text like \"be:4\" or \"idle\", not {val!r}")
        return parse_ioprio(val)
    if key == "slice":
        return parse_slice(val)
    if key in ("affinity", "cpuset"):
        if isinstance(val, bool) or not isinstance(val, str | int):
            raise ValueError(f"{key} must be a CPU list like \"0-3,6\", not {val!r}")
        cpus = parse_cpus(str(val))
        return cpus if key == "affinity" else str(val)
    if key in ("cgroup", "cpu_idle", "serving", "only_while_serving_active",
               "only_while_inference_active"):
        if not isinstance(val, bool):
            raise ValueError(f"{key} must be true or false, not {val!r}")
        return val
    if key == "cpu_weight":
        if not _int_in(val, 1, 10000):
            raise ValueError(f"cpu_weight must be an integer 1..10000, not {val!r}")
        return val
    if key == "memory_low":
        try:
            return parse_size(val)
        except ValueError as e:
            raise ValueError(f"memory_low: {e}") from None
    if key == "guard_realtime":
        if not _int_in(val, 1, 99):
            raise ValueError(f"guard_realtime must be a realtime priority 1..99, not {val!r}")
        return val
    if key == "rank":
        if not _int_in(val, -1_000_000, 1_000_000):
            raise ValueError(f"rank must be an integer, not {val!r}")
        return val
    if key == "priority_class":
        if val not in PRIORITY_CLASSES:
            raise ValueError(f"priority_class must be one of {list(PRIORITY_CLASSES)}, "
                             f"not {val!r}")
        return val
    if key == "thread_priority":
        if not isinstance(val, str) or val not in THREAD_PRIORITIES:
            raise ValueError(f"thread_priority must be one of {list(THREAD_PRIORITIES)}, "
                             f"not {val!r}")
        return THREAD_PRIORITIES[val]
    if key == "description":
        if not isinstance(val, str):
            raise ValueError(f"description must be text, not {val!r}")
        return val
    raise ValueError(f"unknown key {key!r}")


def class_from_table(name: str, t: dict[str, Any], base: ClassPolicy | None = None) -> ClassPolicy:
    """Build a class from a TOML table, on top of ``base`` (an earlier definition).

    A bad value raises BadClassKey naming the key, so a caller can point at its line.
    """
    unknown = set(t) - _CLASS_KEYS
    if unknown:
        raise BadClassKey(sorted(unknown)[0],
                          f"unknown key(s) {sorted(unknown)} in class {name!r}; "
                          f"allowed: {sorted(_CLASS_KEYS)}")
    kw: dict[str, Any] = {} if base is None else dict(base.__dict__)
    kw["name"] = name
    for key, val in t.items():
        try:
            kw[_CLASS_KEY_ALIASES.get(key, key)] = _class_value(key, val)
        except ValueError as e:
            raise BadClassKey(key, f"class {name!r}: {e}") from None
    pol = ClassPolicy(**kw)
    if pol.is_realtime and pol.rt_priority == 0:
        raise BadClassKey("policy" if "policy" in t else "rt_priority",
                          f"class {name!r}: a realtime policy needs rt_priority 1..99")
    if pol.serving and pol.only_while_serving_active:
        # Its processes would wait for a busy serving process, which only they can be.
        raise BadClassKey("serving", f"class {name!r}: a serving class cannot also wait "
                          "for a serving process (only_while_serving_active)")
    return pol


@dataclass
class ClassTable:
    classes: dict[str, ClassPolicy] = field(default_factory=dict)

    def get(self, name: str) -> ClassPolicy:
        return self.classes[name]

    def __contains__(self, name: object) -> bool:
        return name in self.classes
