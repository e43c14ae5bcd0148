"""Human renderings of the daemon's status and explain replies (rich tables)."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.table import Table

console = Console()


def _ago(ts: float | None) -> str:
    if not ts:
        return "-"
    s = max(0.0, time.time() - ts)
    if s < 120:
        return f"{s:.0f}s"
    if s < 7200:
        return f"{s / 60:.0f}m"
    return f"{s / 3600:.1f}h"


def render_status(st: dict[str, Any]) -> None:
    d = st["daemon"]
    mode = "DRY RUN, " if d.get("dry_run") else ""
    mode += "PAUSED (after restore), " if d.get("paused") else ""
    scope = f", scope: descendants of {d['scope_pid']}" if d.get("scope_pid") else ""
    console.print(f"[bold]ainative {st['version']}[/] daemon pid {d['pid']}, up "
                  f"{d['uptime_s']}s, {mode}events: {d['events']}{scope}")
    metrics = d.get("metrics") or {}
    if metrics.get("url"):
        exposed = "" if metrics.get("loopback") else " [yellow](not loopback)[/]"
        console.print(f"metrics: {metrics['url']}{exposed}")
    else:
        console.print("metrics: off")
    _telemetry_lines(d.get("telemetry") or {})
    if d.get("last_reload_error"):
        console.print(f"[red]last reload failed (old rules in force):[/] {d['last_reload_error']}")

    mech = Table(title="mechanisms", show_header=True, header_style="bold")
    mech.add_column("mechanism")
    mech.add_column("ok")
    mech.add_column("detail", overflow="fold")
    for m in st.get("mechanisms", []):
        mech.add_row(m["name"], "yes" if m["available"] else "[red]no[/]", m["detail"])
    console.print(mech)

    gpu = st.get("gpu", {})
    if not gpu.get("available"):
        console.print(f"GPU: none ({gpu.get('reason', 'unknown')})")
    else:
        for g in gpu.get("gpus", []):
            avail = g.get("available_for_work")
            word = "available" if avail else ("busy" if avail is not None else "unknown")
            console.print(
                f"GPU {g['index']} {g['name']}: util {g.get('utilization_gpu')}% "
                f"({word}, threshold {gpu.get('threshold_pct')}%), mem "
                f"{(g.get('memory_used') or 0) >> 20}/{(g.get('memory_total') or 0) >> 20} MiB, "
                f"{g.get('temperature_c')} C, {g.get('power_w')} W")

    act = st.get("activity")
    if act:
        console.print(_activity_rules_line(act))
    if st.get("guard"):
        for line in guard_lines(st["guard"]):
            console.print(line)
    t = Table(title=f"AI tasks: {st['task_count']}", header_style="bold")
    for col in ("pid", "name", "class", "signals", "activity", "knobs", "cpu s", "since"):
        t.add_column(col, overflow="fold")
    for task in st["tasks"]:
        knobs = task["applied"] or task.get("would_apply") or task["targets"]
        shown = ", ".join(f"{k}={v}" for k, v in knobs.items())
        state = task.get("state", "")
        if state != "applied":
            shown = f"{shown}\n({state})" if shown else f"({state})"
        notes = [f"[yellow]overridden {k}[/]" for k in task.get("overridden", {})]
        notes += [f"[red]{k}: {v}[/]" for k, v in task.get("errors", {}).items()]
        t.add_row(str(task["pid"]), task["name"], task["class"], "; ".join(task["signals"]),
                  _activity_cell(task.get("activity")),
                  shown + ("\n" + "\n".join(notes) if notes else ""),
                  "-" if task["cpu_time_s"] is None else f"{task['cpu_time_s']:.1f}",
                  _ago(task["since"]))
    console.print(t)
    pools = st.get("pools") or []
    if pools:
        p = Table(title="pinned pools", header_style="bold")
        for col in ("pid", "name", "total", "used", "peak", "blocks", "frag", "locked", "cuda"):
            p.add_column(col)
        for pool in pools:
            p.add_row(str(pool.get("pid")), str(pool.get("name", "")),
                      _mib(pool.get("total")), _mib(pool.get("used")), _mib(pool.get("peak")),
                      str(pool.get("blocks_in_use")), f"{pool.get('fragmentation', 0):.2f}",
                      str(pool.get("locked")), str(pool.get("cuda_registered")))
        console.print(p)
    console.print(f"journal: {st['journal']['in_force']} change(s) in force")


def _telemetry_lines(t: dict[str, Any]) -> None:
    """The events socket, the event store and the run-queue source, one line each."""
    ev = t.get("events_socket") or {}
    if ev.get("path"):
        rejected = ", ".join(f"{k} {v}" for k, v in sorted(
            (ev.get("rejected_by_reason") or {}).items()))
        console.print(f"spans: {ev['path']} (accepted {ev.get('accepted', 0)}, rejected "
                      f"{ev.get('rejected', 0)}{': ' + rejected if rejected else ''})")
    elif t:
        console.print("spans: off")
    store = t.get("store") or {}
    if store.get("path"):
        lost = (store.get("dropped") or 0) + (store.get("failed") or 0)
        console.print(f"event store: {store['path']} ({store.get('stored', 0)} events"
                      + (f", [red]{lost} lost[/]" if lost else "") + ")")
    rq = t.get("runqueue") or {}
    if rq:
        why = f" ({rq['why']})" if rq.get("why") else ""
        console.print(f"run-queue source: {rq.get('kind')}{why}, watching "
                      f"{rq.get('watched', 0)} processes")


def guard_lines(g: dict[str, Any]) -> list[str]:
    """The closed loop: its step, the wait that put it there, and whom it demotes."""
    if not g.get("enabled"):
        return ["guard: off ([guard] enabled = false)"]
    ratio = "-" if g.get("wait_ratio") is None else f"{g['wait_ratio']:.3f}"
    head = (f"guard: step {g['step']}/{len(g['steps'])}"
            f"{' (' + g['step_name'] + ')' if g.get('step_name') else ''}; serving run-queue "
            f"wait {ratio} s per CPU-s (climb > {g['wait_high']:g}, come down < "
            f"{g['wait_low']:g} for {g['hold_s']:g} s)")
    out = [head]
    if g.get("why"):
        out.append(f"  last change: {g['why']}")
    for c in g.get("contenders", []):
        knobs = ", ".join(f"{k}={v}" for k, v in c["knobs"].items())
        out.append(f"  demoted: pid {c['pid']} {c['name']} ({c['cpu_percent']:.0f}% cpu): {knobs}")
    return out


def _activity_rules_line(act: dict[str, Any]) -> str:
    busy = "yes: demotions in force" if act.get("serving_busy") else "no: nothing demoted"
    return (f"activity: busy at >= {act['active_cpu_percent']:g}% of a CPU over "
            f"{act['active_window_s']:g} s, idle after {act['idle_after_s']:g} s; "
            f"a serving process busy now: {busy}")


def _activity_cell(a: dict[str, Any] | None) -> str:
    if not a:
        return "-"
    cpu = "?" if a.get("cpu_percent") is None else f"{a['cpu_percent']:.0f}% cpu"
    if a.get("busy"):
        return f"busy {a.get('busy_since_s') or 0:.0f}s, {cpu}"
    idle = a.get("idle_for_s")
    return f"idle{f' {idle:.0f}s' if idle is not None else ''}, {cpu}"


def render_plan(entries: list[dict[str, Any]], act: dict[str, Any], note: str) -> None:
    """``ainative plan``: every process the rules would touch now, and how."""
    console.print(note)
    console.print(_activity_rules_line(act))
    t = Table(title=f"processes the rules would touch: {len(entries)}", header_style="bold")
    for col in ("pid", "name", "class", "signals", "activity", "knobs", "now"):
        t.add_column(col, overflow="fold")
    for e in entries:
        t.add_row(str(e["pid"]), e["name"], e["class"], "; ".join(e["signals"]),
                  _activity_cell(e.get("activity")),
                  ", ".join(f"{k}={v}" for k, v in e["knobs"].items()) or "-", e["state"])
    console.print(t)


def _mib(v: Any) -> str:
    return "-" if v is None else f"{int(v) / (1 << 20):.1f} MiB"


def render_explain(ex: dict[str, Any], out: Console | None = None) -> None:
    """``ainative explain``, printed to out (default: the terminal)."""
    c = out or console
    c.print(f"[bold]pid {ex['pid']}[/] ({ex['name']})")
    if ex.get("excluded"):
        c.print(f"never touched: {ex['excluded']}")
        return
    held = ex.get("guard")
    if held:
        knobs = ", ".join(f"{k}={v}" for k, v in held["knobs"].items())
        c.print(f"demoted by the closed loop ({held['cpu_percent']:.0f}% cpu): {knobs}; "
                f"{held['why']}")
    t = Table(header_style="bold")
    for col in ("signal", "matched", "class", "detail"):
        t.add_column(col, overflow="fold")
    for s in ex["signals"]:
        t.add_row(s["signal"], "yes" if s["matched"] else "no", s["class"] or "-", s["detail"])
    c.print(t)
    if ex["class"] is None:
        c.print("class: none (no signal matched); ainative leaves it alone")
        return
    c.print(f"class: [bold]{ex['class']}[/] (from the first matching signal above)")
    knobs = ", ".join(f"{k}={v}" for k, v in ex.get("knobs", {}).items())
    c.print(f"class knobs: {knobs}")
    if ex.get("activity_rules"):
        c.print(_activity_rules_line(ex["activity_rules"]))
    if ex.get("activity"):
        c.print(f"activity: {_activity_cell(ex['activity'])}")
    m = ex.get("managed")
    if m:
        if m["applied"]:
            applied = ", ".join(f"{k}={v}" for k, v in m["applied"].items())
            c.print(f"applied: {applied} on {m['threads']} thread(s)")
        elif m.get("would_apply"):
            would = ", ".join(f"{k}={v}" for k, v in m["would_apply"].items())
            c.print(f"would apply: {would} on {m['threads']} thread(s)")
        for k, v in m.get("overridden", {}).items():
            c.print(f"[yellow]backed off {k}[/]: a person changed it ({v})")
        for k, v in m.get("errors", {}).items():
            c.print(f"[red]not applied {k}[/]: {v}")
    if ex.get("state"):
        c.print(f"now: {ex['state']}")
    if ex.get("dry_run"):
        c.print(ex["dry_run"])
    if ex.get("offline"):
        c.print(ex["offline"])
