"""Every knob ainative can set, in one table: its scope, how its value is shown, how two
values compare, and what a valid value is.

Values are plain JSON so the journal can store them:
  nice -> int, policy -> [policy, rt_priority], ioprio -> [class, level],
  affinity -> sorted list of CPUs, slice -> ns (0: the kernel's default),
  cgroup -> {hierarchy: path} (process-wide);
  on Windows priority_class -> name ("high"), thread_priority -> THREAD_PRIORITY_* int.

The validators matter because the journal is read back after a crash and its values are
then written into live processes as root: a record that does not describe something
ainative itself could have written is refused, never applied.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ainative.platform.base import (
    IOPRIO_CLASS_NAMES,
    IOPRIO_CLASS_RT,
    POLICY_NAMES,
    SCHED_FIFO,
    SCHED_RR,
)
from ainative.units import format_cpus

MAX_CPU = 1 << 13  # CONFIG_NR_CPUS tops out at 8192
MAX_CGROUP_PATH = 4096


def _int(v: Any, what: str, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ValueError(f"{what} must be an integer {lo}..{hi}, not {v!r}")
    return v


def _pair(v: Any, what: str) -> tuple[Any, Any]:
    if not isinstance(v, list) or len(v) != 2:
        raise ValueError(f"{what} must be a list of two integers, not {v!r}")
    return v[0], v[1]


def _valid_nice(v: Any) -> int:
    return _int(v, "nice", -20, 19)


def _valid_policy(v: Any) -> list[int]:
    pol, prio = _pair(v, "policy")
    pol = _int(pol, "policy", 0, 7)
    if pol not in POLICY_NAMES:
        raise ValueError(f"unknown scheduling policy {pol}")
    if pol in (SCHED_FIFO, SCHED_RR):
        return [pol, _int(prio, "rt_priority", 1, 99)]
    return [pol, _int(prio, "rt_priority of a non-realtime policy", 0, 0)]


def _valid_ioprio(v: Any) -> list[int]:
    cls, level = _pair(v, "ioprio")
    return [_int(cls, "ioprio class", 0, 3), _int(level, "ioprio level", 0, 7)]


def _valid_affinity(v: Any) -> list[int]:
    if not isinstance(v, list) or not v:
        raise ValueError(f"affinity must be a non-empty list of CPUs, not {v!r}")
    cpus = sorted({_int(c, "CPU", 0, MAX_CPU - 1) for c in v})
    return cpus


def valid_cgroup_path(p: Any) -> str:
    """An absolute, normalised cgroup path: no '..', no NUL, no doubled slashes."""
    if not isinstance(p, str) or not p.startswith("/") or len(p) > MAX_CGROUP_PATH:
        raise ValueError(f"cgroup path must be an absolute path, not {p!r}")
    if "\0" in p or "\n" in p or posixpath.normpath(p) != p or p.startswith("//") \
            or ".." in p.split("/"):
        raise ValueError(f"cgroup path {p!r} is not normalised (no '..', '//', NUL)")
    return p


def _valid_cgroup(v: Any) -> dict[str, str]:
    if not isinstance(v, dict) or not v or len(v) > 16:
        raise ValueError(f"cgroup must be a small map of hierarchy -> path, not {v!r}")
    out: dict[str, str] = {}
    for key, path in v.items():
        if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z0-9_,=.\-*]{1,64}", key):
            raise ValueError(f"bad cgroup hierarchy key {key!r}")
        out[key] = valid_cgroup_path(path)
    return out


# The kernel clamps a custom EEVDF slice to 0.1-100 ms (kernel/sched/syscalls.c).
SLICE_MIN_NS = 100_000
SLICE_MAX_NS = 100_000_000


def _valid_slice(v: Any) -> int:
    ns = _int(v, "slice (ns)", 0, SLICE_MAX_NS)
    if 0 < ns < SLICE_MIN_NS:
        raise ValueError(f"slice must be 0 (the kernel's default) or {SLICE_MIN_NS}.."
                         f"{SLICE_MAX_NS} ns, not {ns}")
    return ns


def show_slice(v: Any) -> str:
    return "default" if not v else f"{int(v) / 1e6:g}ms"


def _show_policy(v: Any) -> str:
    name = POLICY_NAMES.get(int(v[0]), str(v[0]))
    return f"{name}:{v[1]}" if v[1] else name


def _show_ioprio(v: Any) -> str:
    return f"{IOPRIO_CLASS_NAMES.get(int(v[0]), v[0])}:{v[1]}"


def _show_cgroup(v: Any) -> str:
    return ",".join(sorted(set(v.values()))) if isinstance(v, dict) else str(v)


# Windows: a process's priority class and each thread's priority relative to it (the
# Win32 THREAD_PRIORITY_* numbers), by the names SetPriorityClass/SetThreadPriority use.
PRIORITY_CLASSES = ("idle", "below_normal", "normal", "above_normal", "high", "realtime")
THREAD_PRIORITIES = {"idle": -15, "lowest": -2, "below_normal": -1, "normal": 0,
                     "above_normal": 1, "highest": 2, "time_critical": 15}
THREAD_PRIORITY_NAMES = {v: k for k, v in THREAD_PRIORITIES.items()}


def _valid_priority_class(v: Any) -> str:
    if v not in PRIORITY_CLASSES:
        raise ValueError(f"priority_class must be one of {list(PRIORITY_CLASSES)}, not {v!r}")
    return str(v)


def _valid_thread_priority(v: Any) -> int:
    if isinstance(v, bool) or v not in THREAD_PRIORITY_NAMES:
        raise ValueError(f"thread_priority must be one of {sorted(THREAD_PRIORITY_NAMES)} "
                         f"(THREAD_PRIORITY_*), not {v!r}")
    return int(v)


@dataclass(frozen=True)
class Knob:
    name: str
    # "thread": set on every thread; "process": once per process. (Windows'
    # priority_class is process-wide but listed as "thread": the Windows backend reads it
    # on every thread and writes it through the process's own number, see
    # platform/windows/backend.py, so the engine needs no second path for it.)
    scope: str
    validate: Callable[[Any], Any]  # the canonical value, or ValueError
    show: Callable[[Any], str]
    # Whether a value gives realtime treatment (a restore must never grant that).
    realtime: Callable[[Any], bool] = lambda v: False
    platforms: frozenset[str] = frozenset({"linux"})  # the backends that have it (knobs_for)


KNOBS: dict[str, Knob] = {k.name: k for k in (
    Knob("nice", "thread", _valid_nice, str),
    Knob("policy", "thread", _valid_policy, _show_policy,
         realtime=lambda v: int(v[0]) in (SCHED_FIFO, SCHED_RR)),
    Knob("ioprio", "thread", _valid_ioprio, _show_ioprio,
         realtime=lambda v: int(v[0]) == IOPRIO_CLASS_RT),
    Knob("slice", "thread", _valid_slice, show_slice),
    Knob("affinity", "thread", _valid_affinity, lambda v: format_cpus(frozenset(v)),
         platforms=frozenset({"linux", "windows"})),
    Knob("cgroup", "process", _valid_cgroup, _show_cgroup),
    Knob("priority_class", "thread", _valid_priority_class, str,
         realtime=lambda v: v == "realtime", platforms=frozenset({"windows"})),
    Knob("thread_priority", "thread", _valid_thread_priority,
         lambda v: THREAD_PRIORITY_NAMES.get(int(v), str(v)), platforms=frozenset({"windows"})),
)}
THREAD_KNOBS = tuple(k for k, spec in KNOBS.items() if spec.scope == "thread")
PROCESS_KNOBS = tuple(k for k, spec in KNOBS.items() if spec.scope == "process")


def knobs_for(backend_name: str) -> frozenset[str]:
    """The knobs a backend sets: the Windows backend its own, every other (Linux, a
    test's in-memory fake) the Linux ones. A class may name both kinds; the engine leaves
    out those the backend in use does not have."""
    platform = "windows" if backend_name == "windows" else "linux"
    return frozenset(k for k, spec in KNOBS.items() if platform in spec.platforms)


def describe(knob: str, value: Any) -> str:
    spec = KNOBS.get(knob)
    try:
        return spec.show(value) if spec else str(value)
    except (TypeError, ValueError, IndexError, KeyError):
        return str(value)


def comparable(cur: Any, ref: Any) -> Any:
    """A read-back value in the shape of the one it is compared with. A cgroup value lists
    every managed hierarchy, but a target or journal entry only those a class uses."""
    if isinstance(cur, dict) and isinstance(ref, dict):
        return {k: cur.get(k, "/") for k in ref}
    return cur


def same(cur: Any, ref: Any) -> bool:
    return bool(comparable(cur, ref) == ref)


def own_group_pattern(cgroup_root: str) -> re.Pattern[str]:
    """The paths of ainative's own groups for a cgroup root name: /<root>.<class>."""
    return re.compile("/" + re.escape(cgroup_root) + r"\.[A-Za-z0-9_\-]{1,64}")


def check_change(knob: Any, old: Any, new: Any, cgroup_root: str) -> str | None:
    """Why a journaled change cannot be used (None when it can): an unknown knob, a value
    of the wrong type or range, an undo that would grant realtime, a cgroup move whose
    target is not one of ainative's own groups."""
    spec = KNOBS.get(knob) if isinstance(knob, str) else None
    if spec is None:
        return f"unknown knob {knob!r}"
    try:
        old_v, new_v = spec.validate(old), spec.validate(new)
    except ValueError as e:
        return str(e)
    if spec.realtime(old_v):
        # ainative never manages a task someone else made realtime, so its undo never
        # writes a realtime value back: such a record was not written by ainative.
        return f"undo would set a realtime {knob} ({describe(knob, old_v)})"
    if knob == "cgroup":
        own = own_group_pattern(cgroup_root)
        bad = [p for p in new_v.values() if not own.fullmatch(p)]
        if bad:
            return (f"cgroup record moves into {bad[0]!r}, which is not one of ainative's "
                    f"groups (/{cgroup_root}.<class>)")
    return None
