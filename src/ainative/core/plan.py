"""What ainative does, or would do, to each process: the one home of that answer.

The daemon's ``status`` and ``explain`` and the daemon-less ``ainative plan`` and
``ainative explain`` all describe a managed process through ``state_of`` and
``PlanEntry``, so what `plan` prints before a daemon starts is what the daemon then says
it applied. ``offline_plan`` runs the daemon's own supervisor in dry-run mode (no journal,
no writes) over /proc: the same classifier, the same activity tracker, sampled over one
activity window.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypedDict

from ainative.core.activity import ActivityView
from ainative.core.engine import Managed
from ainative.core.knobs import describe
from ainative.core.rules import RuleSet
from ainative.core.supervisor import Supervisor, SupervisorConfig
from ainative.platform.backend import Backend
from ainative.platform.base import ProcessGone


class ActivityRules(TypedDict):
    active_cpu_percent: float
    active_window_s: float
    idle_after_s: float
    serving_busy: bool  # some serving process is busy now (demotions are in force)


PlanEntry = TypedDict("PlanEntry", {
    "pid": int, "start_time": int, "name": str, "uid": int | None, "class": str,
    "signals": list[str], "knobs": dict[str, str], "in_force": bool, "state": str,
    "activity": ActivityView | None,
})


def activity_rules(sup: Supervisor) -> ActivityRules:
    cfg = sup.activity.config
    return ActivityRules(active_cpu_percent=cfg.min_cpu_percent,
                         active_window_s=cfg.window_s, idle_after_s=cfg.idle_after_s,
                         serving_busy=sup.engine.serving_active())


def state_of(sup: Supervisor, m: Managed) -> str:
    """One line: whether m's knobs are in force, and if not, why not."""
    dry = sup.engine.dry_run
    cls = sup.rules.classes.get(m.cls)
    if not m.targets and not m.errors:
        return f"class {m.cls} changes nothing (fair share)"
    if m.active:
        return "would apply (dry run: nothing is changed)" if dry else "applied"
    if sup.engine.paused:
        return "paused after `ainative restore` (`ainative resume` to manage again)"
    cfg = sup.activity.config
    if cls is not None and cls.serving:
        return (f"waiting: a serving process is protected only while busy (at least "
                f"{cfg.min_cpu_percent:g}% of a CPU over {cfg.window_s:g} s); idle now")
    if cls is not None and cls.only_while_serving_active:
        return f"waiting: class {m.cls} applies only while a serving process is busy"
    return "decided just now; applied on the next event"


def entry(sup: Supervisor, m: Managed) -> PlanEntry:
    return {
        "pid": m.ident.pid,
        "start_time": m.ident.start_time,
        "name": m.name,
        "uid": m.decision.uid,
        "class": m.cls,
        "signals": [s.detail for s in m.decision.matched_signals],
        "knobs": {k: describe(k, v) for k, v in m.targets.items()},
        "in_force": m.active,
        "state": state_of(sup, m),
        "activity": sup.activity_view(m.ident),
    }


def dry_supervisor(backend: Backend, rules: RuleSet, *, cgroups: bool = True,
                   self_pid: int | None = None) -> Supervisor:
    """The daemon's supervisor with no journal: it decides and changes nothing."""
    return Supervisor(backend, rules, None,
                      SupervisorConfig(dry_run=True, cgroups=cgroups, self_pid=self_pid))


def offline_plan(sup: Supervisor, window_s: float | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> list[PlanEntry]:
    """Classify every process, then sample activity over one window, as a daemon started
    now would; the entries of every process the rules would touch, by pid."""
    sup.full_scan()
    wait = sup.activity.config.window_s if window_s is None else window_s
    sup.sample_activity()
    if wait > 0 and sup.engine.managed:
        sleep(wait)
        sup.sample_activity()
    out: list[PlanEntry] = []
    for m in sorted(sup.engine.managed.values(), key=lambda m: m.ident.pid):
        try:
            out.append(entry(sup, m))
        except ProcessGone:
            continue
    return out
