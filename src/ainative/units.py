"""Text parsers for sizes, durations and CPU lists: the one home of each.

Every parser here takes text that may come from outside the process (a rule file, a
command line) and either returns a value in range or raises ``ValueError`` with a message
that says what was wrong. None of them can be made to allocate or loop without bound by
its input.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable

# A CPU number above this is refused: Linux's NR_CPUS is at most 8192, and a range like
# "0-999999999" must not build a billion-element set.
MAX_CPU = 8191
# Sizes go to cgroup files and mmap; above 2^63 - 1 the kernel cannot take them.
MAX_SIZE = (1 << 63) - 1

_SIZE_UNITS = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_RE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h|d)?\s*")
_CPU_RANGE_RE = re.compile(r"([0-9]{1,9})\s*(?:-\s*([0-9]{1,9}))?")


class UnitError(ValueError):
    """A value that does not parse. ``option`` names where it came from, if known."""

    def __init__(self, reason: str, option: str | None = None) -> None:
        super().__init__(f"{option}: {reason}" if option else reason)
        self.reason = reason
        self.option = option


def parse_size(v: int | str) -> int:
    """Bytes from an int or text like '512M', '1.5GiB', '64k', '4096'. Never negative.

    Units are binary (k = 1024); a trailing 'b' or 'ib' is ignored.
    """
    if isinstance(v, bool) or not isinstance(v, int | str):
        raise UnitError(f"a size must be a number of bytes or text like '512M', not {v!r}")
    if isinstance(v, int):
        n = v
    else:
        t = v.strip().lower().removesuffix("ib").removesuffix("b")
        try:
            if t and t[-1] in _SIZE_UNITS:
                f = float(t[:-1]) * _SIZE_UNITS[t[-1]]
                if not math.isfinite(f):
                    raise UnitError(f"size {v!r} is too large (at most {MAX_SIZE} bytes)")
                n = int(f)
            else:
                n = int(t)
        except UnitError:
            raise
        except (ValueError, OverflowError):
            raise UnitError(f"{v!r} is not a size: use a number of bytes or one "
                            "with K, M, G or T (512M, 1.5G)") from None
    if n < 0:
        raise UnitError(f"size {v!r} is negative")
    if n > MAX_SIZE:
        raise UnitError(f"size {v!r} is too large (at most {MAX_SIZE} bytes)")
    return n


def parse_duration(text: str, option: str = "--duration") -> float:
    """Seconds from '30s', '10m', '24h', '250ms', '2d' or a bare number of seconds.

    Raises UnitError whose ``option`` is ``option`` and whose ``reason`` is the rest.
    """
    m = _DURATION_RE.fullmatch(text) if isinstance(text, str) else None
    if not m:
        raise UnitError(f"{text!r}: use a number with s, m or h (30s, 10m, 24h)", option)
    value = float(m.group(1)) * _DURATION_UNITS[m.group(2) or "s"]
    if not math.isfinite(value):
        raise UnitError(f"{text!r}: too large", option)
    if value <= 0:
        raise UnitError("must be positive", option)
    return value


def parse_cpus(text: str) -> frozenset[int]:
    """'0-3,6' -> {0,1,2,3,6}; 'all' -> every CPU this process may run on."""
    if not isinstance(text, str):
        raise UnitError(f"a CPU list must be text like \"0-3,6\", not {text!r}")
    if text.strip() == "all":
        return frozenset(os.sched_getaffinity(0))
    cpus: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        m = _CPU_RANGE_RE.fullmatch(part)
        if not m:
            raise UnitError(f"bad CPU list {text!r}: use numbers and ranges like \"0-3,6\"")
        a = int(m.group(1))
        b = int(m.group(2)) if m.group(2) is not None else a
        if b < a:
            raise UnitError(f"bad CPU range {part!r}: the end is below the start")
        if b > MAX_CPU:
            raise UnitError(f"bad CPU range {part!r}: CPU numbers go up to {MAX_CPU}")
        cpus.update(range(a, b + 1))
    if not cpus:
        raise UnitError("empty CPU list")
    return frozenset(cpus)


def format_cpus(cpus: Iterable[int]) -> str:
    """{0,1,2,3,6} -> '0-3,6'."""
    out: list[str] = []
    s = sorted(set(cpus))
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and s[j + 1] == s[j] + 1:
            j += 1
        out.append(str(s[i]) if i == j else f"{s[i]}-{s[j]}")
        i = j + 1
    return ",".join(out)
