"""Workload classes and the kernel knobs each one asks for."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from ainative.platform.base import (
    IOPRIO_CLASS_BY_NAME,
    POLICY_BY_NAME,
    POLICY_NAMES,
    SCHED_FIFO,
    SCHED_RR,
)


class ConfigError(ValueError):
    """A rule or class definition is wrong; the message names file and line."""


@dataclass(frozen=True)
class ClassPolicy:
    """One class: which knobs to set and to what. None leaves a knob alone."""

    name: str
    description: str = ""
    nice: int | None = None
    policy: int | None = None  # SCHED_* number
    rt_priority: int = 0
    ioprio: tuple[int, int] | None = None  # (class, level)
    affinity: frozenset[int] | None = None
    cgroup: bool = False  # put the process in ainative's group for this class
    cpu_weight: int | None = None  # v2 scale 1..10000; v1 shares are derived
    cpu_idle: bool | None = None
    cpuset: str | None = None
    memory_low: int | None = None
    # Apply this class only while at least one `inference` process is being managed.
    only_while_inference_active: bool = False
    # Lower numbers win when signals disagree about nothing else (see classifier).
    rank: int = 50

    @property
    def is_realtime(self) -> bool:
        return self.policy in (SCHED_FIFO, SCHED_RR)

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
        if self.only_while_inference_active:
            out["only_while_inference_active"] = True
        return out


def format_ioprio(v: tuple[int, int]) -> str:
    names = {n: k for k, n in IOPRIO_CLASS_BY_NAME.items()}
    return f"{names.get(v[0], v[0])}:{v[1]}"


def parse_ioprio(text: str) -> tuple[int, int]:
    cls, _, level = text.partition(":")
    if cls not in IOPRIO_CLASS_BY_NAME or cls == "none":
        raise ValueError(f"ioprio class must be rt, be or idle, not {cls!r}")
    lvl = int(level) if level else (0 if cls != "idle" else 7)
    if not 0 <= lvl <= 7:
        raise ValueError(f"ioprio level must be 0..7, not {lvl}")
    return IOPRIO_CLASS_BY_NAME[cls], lvl


def parse_cpus(text: str) -> frozenset[int]:
    """'0-3,6' -> {0,1,2,3,6}; 'all' -> every online CPU."""
    if text.strip() == "all":
        return frozenset(os.sched_getaffinity(0))
    cpus: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        lo, _, hi = part.partition("-")
        a, b = int(lo), int(hi) if hi else int(lo)
        if a < 0 or b < a:
            raise ValueError(f"bad CPU range {part!r}")
        cpus.update(range(a, b + 1))
    if not cpus:
        raise ValueError("empty CPU list")
    return frozenset(cpus)


def format_cpus(cpus: frozenset[int]) -> str:
    out: list[str] = []
    s = sorted(cpus)
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and s[j + 1] == s[j] + 1:
            j += 1
        out.append(str(s[i]) if i == j else f"{s[i]}-{s[j]}")
        i = j + 1
    return ",".join(out)


def parse_size(v: int | str) -> int:
    if isinstance(v, int):
        return v
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    t = v.strip().lower().removesuffix("ib").removesuffix("b")
    if t and t[-1] in units:
        return int(float(t[:-1]) * units[t[-1]])
    return int(t)


_CLASS_KEYS = {
    "description", "nice", "policy", "rt_priority", "ioprio", "affinity", "cgroup",
    "cpu_weight", "cpu_idle", "cpuset", "memory_low", "only_while_inference_active", "rank",
}


def class_from_table(name: str, t: dict[str, Any], base: ClassPolicy | None = None) -> ClassPolicy:
    """Build a class from a TOML table, on top of ``base`` (an earlier definition)."""
    unknown = set(t) - _CLASS_KEYS
    if unknown:
        raise ValueError(f"unknown key(s) {sorted(unknown)} in class {name!r}")
    kw: dict[str, Any] = {} if base is None else dict(base.__dict__)
    kw["name"] = name
    for key, val in t.items():
        if key == "nice":
            if not isinstance(val, int) or not -20 <= val <= 19:
                raise ValueError(f"class {name!r}: nice must be an integer -20..19")
            kw["nice"] = val
        elif key == "policy":
            if val not in POLICY_BY_NAME:
                raise ValueError(
                    f"class {name!r}: policy must be one of {sorted(POLICY_BY_NAME)}, not {val!r}"
                )
            kw["policy"] = POLICY_BY_NAME[val]
        elif key == "rt_priority":
            if not isinstance(val, int) or not 0 <= val <= 99:
                raise ValueError(f"class {name!r}: rt_priority must be 0..99")
            kw["rt_priority"] = val
        elif key == "ioprio":
            kw["ioprio"] = parse_ioprio(str(val))
        elif key == "affinity":
            kw["affinity"] = parse_cpus(str(val))
        elif key in ("cgroup", "cpu_idle", "only_while_inference_active"):
            if not isinstance(val, bool):
                raise ValueError(f"class {name!r}: {key} must be true or false")
            kw[key] = val
        elif key == "cpu_weight":
            if not isinstance(val, int) or not 1 <= val <= 10000:
                raise ValueError(f"class {name!r}: cpu_weight must be 1..10000")
            kw["cpu_weight"] = val
        elif key == "cpuset":
            parse_cpus(str(val))
            kw["cpuset"] = str(val)
        elif key == "memory_low":
            kw["memory_low"] = parse_size(val)
        elif key == "rank":
            kw["rank"] = int(val)
        else:
            kw[key] = val
    pol = ClassPolicy(**kw)
    if pol.is_realtime and pol.rt_priority == 0:
        raise ValueError(f"class {name!r}: a realtime policy needs rt_priority 1..99")
    return pol


@dataclass
class ClassTable:
    classes: dict[str, ClassPolicy] = field(default_factory=dict)

    def get(self, name: str) -> ClassPolicy:
        return self.classes[name]

    def __contains__(self, name: object) -> bool:
        return name in self.classes
