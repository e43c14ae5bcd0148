"""When a comparison's figures should not be taken at face value, and how few samples a
percentile rests on. Pure functions of a comparison's results: no measurement here
(machine_load.py measures), so the thresholds can be checked on any figures.

Warnings, per scenario round (one bad round is not averaged away by good ones):

- the baseline was disturbed: other processes used more than OTHER_CPUS_MAX CPUs on
  average, before "alone" started (its probe) or while it ran;
- the hypervisor took more than STEAL_CPUS_MAX CPUs (steal) during any scenario;
- the contention was milder than asked: the CPU hogs got less than HOG_SHARE_MIN of the
  CPU left to them (as many CPUs as there are hogs, at most the machine's, less what the
  workload used), so something else had the rest.

A percentile rests on the samples at or beyond it: p99.9 of 5,000 requests is the 5th
slowest. Below P99_9_MIN_SAMPLES samples, p99.9 is (nearly) the maximum, and is shown
with a caveat.
"""

from __future__ import annotations

from typing import Any

OTHER_CPUS_MAX = 0.10  # CPUs used on average by other processes
STEAL_CPUS_MAX = 0.05  # CPUs taken by the hypervisor on average
HOG_SHARE_MIN = 0.90  # of the CPU the hogs should have had
P99_9_MIN_SAMPLES = 1000
CAVEAT_MARK = "†"
CAVEAT_NOTE = (f"{CAVEAT_MARK} p99.9 from fewer than {P99_9_MIN_SAMPLES:,} samples: it is "
               "(nearly) the slowest request, not a percentile to compare")


def tail_count(samples: int, percentile: float) -> int:
    """How many of samples the percentile rests on: the slowest (100 - percentile) % of
    them, at least the one it is."""
    if samples <= 0:
        return 0
    return max(1, round(samples * (100.0 - percentile) / 100.0))


def p99_9_trusted(samples: int) -> bool:
    return samples >= P99_9_MIN_SAMPLES


def other_cpus(fig: dict[str, Any]) -> float:
    """Other processes' CPU, in CPUs on average over the window."""
    w = float(fig.get("window_s") or 0.0)
    return float(fig.get("other_cpu_s") or 0.0) / w if w > 0 else 0.0


def steal_cpus(fig: dict[str, Any]) -> float:
    w = float(fig.get("window_s") or 0.0)
    return float(fig.get("steal_cpu_s") or 0.0) / w if w > 0 else 0.0


def hog_shortfall(fig: dict[str, Any]) -> tuple[float, float] | None:
    """(what the CPU hogs got, what they should have had), CPU-seconds, when they got
    less than HOG_SHARE_MIN of it; None when they did not (or there were no CPU hogs)."""
    hogs = int(fig.get("cpu_hogs") or 0)
    if hogs <= 0:
        return None
    w = float(fig.get("window_s") or 0.0)
    cpus = int(fig.get("cpus") or 1)
    expected = min(hogs, cpus) * w
    # The workload may take what it needs from them: that is the remedies' point.
    expected = min(expected, cpus * w - float(fig.get("own_cpu_s") or 0.0))
    got = float(fig.get("hog_cpu_s") or 0.0)
    if expected <= 0 or got >= HOG_SHARE_MIN * expected:
        return None
    return got, expected


def _top(fig: dict[str, Any]) -> str:
    top = fig.get("top") or []
    if not top:
        return ""
    return " (busiest: " + ", ".join(f"{n} pid {p} {c:.1f} CPU-s" for n, p, c in top) + ")"


def _rounds(r: dict[str, Any]) -> list[dict[str, Any]]:
    ml = r.get("machine_load")
    if not ml:
        return []
    return list(ml.get("rounds") or [ml])


def warnings(scenarios: dict[str, dict[str, Any]]) -> list[str]:
    """One line per disturbance found in a comparison's scenarios (see the module)."""
    out: list[str] = []
    for name, r in scenarios.items():
        if "error" in r:
            continue
        rounds = _rounds(r)
        for i, fig in enumerate(rounds):
            where = f"'{name}'" + (f" round {i + 1}" if len(rounds) > 1 else "")
            before = fig.get("before")
            if name == "alone":
                for when, f in (("before", before), ("during", fig)):
                    if f and other_cpus(f) > OTHER_CPUS_MAX:
                        out.append(f"baseline disturbed: {when} {where} other processes used "
                                   f"{other_cpus(f):.2f} CPUs (more than {OTHER_CPUS_MAX})"
                                   f"{_top(f)}; the alone figures, and every ratio to them, "
                                   "are suspect")
            if steal_cpus(fig) > STEAL_CPUS_MAX:
                out.append(f"the hypervisor took {steal_cpus(fig):.2f} CPUs (steal) during "
                           f"{where}")
            short = hog_shortfall(fig)
            if short is not None:
                out.append(f"contention weaker than asked in {where}: the CPU hogs got "
                           f"{short[0]:.1f} of the {short[1]:.1f} CPU-s left to them; other "
                           f"processes used {float(fig.get('other_cpu_s') or 0):.1f}"
                           f"{_top(fig)}")
    return out
