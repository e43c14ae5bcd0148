"""Writing a stress result: JSON for machines, Markdown for people, a PNG of the latency
distributions (percentile on a log scale, as HdrHistogram plots them)."""

from __future__ import annotations

import json
import os
from typing import Any

from ainative.stress import capacity, feeds
from ainative.stress.catalog import DESCRIPTIONS
from ainative.stress.caveats import CAVEAT_MARK, CAVEAT_NOTE, p99_9_trusted, tail_count

COLUMNS = ("p50_ms", "p90_ms", "p99_ms", "p99_9_ms", "max_ms")

# "(n)" beside a percentile: how many samples lie at or beyond it (caveats.tail_count).
_TAIL = ["p99 ms (n)", "p99.9 ms (n)"]
_COMMON = ["rq wait s", "hog CPU s", "other CPU s"]
HEADER = ["scenario", "samples", "p50 ms", "p90 ms", *_TAIL, "max ms", "req/s", "late",
          "dropped", *_COMMON]
HEADERS = {
    "latency": HEADER,
    "throughput": ["scenario", "req/s", "samples/s", "x alone", "requests", "p50 ms", *_TAIL,
                   *_COMMON],
    "frames": ["scenario", "target fps", "achieved fps", "x alone", "deadline misses",
               "late", "skipped", "frames", "p50 ms", *_TAIL, "max ms", *_COMMON],
}
TITLES = {
    "latency": "latency from scheduled time (open loop)",
    "throughput": "most requests per second (closed loop)",
    "frames": "frames on time (one frame at a time, due one period after its start)",
}
NOTES = {
    "latency": "Latency is measured by the client from each request's scheduled time to "
               "its reply, so time spent queued counts.",
    "throughput": "Each connection sends its next request as soon as the last is answered "
                  "(closed loop); req/s is requests completed in the measured window, "
                  "samples/s is that times the batch; latency is each request's own.",
    "frames": "Frame i starts at t0 + i/fps and is due one period later. late: answered "
              "after that; skipped: could not start within a period. Achieved fps counts "
              "frames on time only; latency is from each frame's start time.",
}


def mode(report: dict[str, Any]) -> str:
    return str(report["config"].get("mode", "latency"))


def header(report: dict[str, Any]) -> list[str]:
    return HEADERS[mode(report)]


def _tail_cells(r: dict[str, Any]) -> list[str]:
    lat, n = r["latency"], int(r.get("completed") or 0)
    mark = "" if p99_9_trusted(n) else CAVEAT_MARK
    return [f"{lat['p99_ms']:.2f} ({tail_count(n, 99.0)})",
            f"{lat['p99_9_ms']:.2f}{mark} ({tail_count(n, 99.9)})"]


def _common(r: dict[str, Any]) -> list[str]:
    hog, ml = r.get("contention_cpu_s"), r.get("machine_load") or {}
    other = ml.get("other_cpu_s")
    return [f"{r['resources']['run_queue_wait_s']:.3f}", "-" if hog is None else f"{hog:.1f}",
            "-" if other is None else f"{other:.1f}"]


def _ratio(r: dict[str, Any], alone: dict[str, Any] | None, key: str) -> str:
    if not alone or "error" in alone or not alone.get(key):
        return "-"
    return f"{float(r[key]) / float(alone[key]):.2f}"


def _row(name: str, r: dict[str, Any], m: str = "latency",
         alone: dict[str, Any] | None = None) -> list[str]:
    width = len(HEADERS[m])
    if "error" in r:
        return [name, "error", *["-"] * (width - 2)]
    lat = r["latency"]
    label = name + (" (interrupted)" if r.get("interrupted") else "")
    if m == "throughput":
        return [label, f"{r['throughput_per_s']:.1f}", f"{r.get('samples_per_s', 0):.0f}",
                _ratio(r, alone, "throughput_per_s"), str(r["completed"]),
                f"{lat['p50_ms']:.2f}", *_tail_cells(r), *_common(r)]
    if m == "frames":
        return [label, f"{r.get('target_fps', 0):g}", f"{r.get('achieved_fps', 0):.1f}",
                _ratio(r, alone, "achieved_fps"), str(r.get("deadline_misses", "-")),
                str(r.get("late_frames", "-")), str(r.get("skipped_frames", "-")),
                str(r["completed"]), f"{lat['p50_ms']:.2f}", *_tail_cells(r),
                f"{lat['max_ms']:.2f}", *_common(r)]
    return [label, str(r["completed"]), f"{lat['p50_ms']:.2f}", f"{lat['p90_ms']:.2f}",
            *_tail_cells(r), f"{lat['max_ms']:.2f}", f"{r['throughput_per_s']:.0f}",
            str(r["late"]), str(r["dropped"]), *_common(r)]


def table_rows(report: dict[str, Any]) -> list[list[str]]:
    m, sc = mode(report), report["scenarios"]
    return [_row(n, r, m, sc.get("alone")) for n, r in sc.items()]


def caveat_lines(report: dict[str, Any]) -> list[str]:
    """The p99.9 caveat when any row needs it, then the comparison's warnings."""
    out = []
    if any("error" not in r and not p99_9_trusted(int(r.get("completed") or 0))
           for r in report["scenarios"].values()):
        out.append(CAVEAT_NOTE)
    return out + [f"warning: {w}" for w in report.get("warnings") or []]


def errors(report: dict[str, Any]) -> list[str]:
    """'scenario: why' for every scenario that failed."""
    return [f"{n}: {r['error']}" for n, r in report["scenarios"].items() if "error" in r]


# What round_lines shows of each round, by mode.
ROUND_FIGURE = {"latency": ("p99_ms", "p99 ms"), "throughput": ("throughput_per_s", "req/s"),
                "frames": ("achieved_fps", "fps on time")}


def round_lines(report: dict[str, Any]) -> list[str]:
    """Each scenario's headline figure (p99, req/s, fps) in each of its rounds: how much
    the rounds differed."""
    key = ROUND_FIGURE[mode(report)][0]
    return [f"{name}: " + " / ".join(f"{x.get(key, x['p99_ms']):.2f}" for x in r["rounds"])
            for name, r in report["scenarios"].items() if r.get("rounds")]


def _workload_line(report: dict[str, Any]) -> str:
    cfg, m = report["config"], mode(report)
    load = {"latency": f"{cfg['rate']:g} requests/s open loop",
            "throughput": "a closed loop",
            "frames": f"{cfg['rate']:g} frames/s, one at a time"}[m]
    return (f"Model `{cfg['model_name']}`, batch {cfg['batch']}, {cfg['threads']} thread(s), "
            f"{load} for {cfg['duration']:g} s per scenario; "
            f"contention {', '.join(report['contention']) or 'none'}; "
            f"machine {report['machine']['cpus']} CPUs, kernel {report['machine']['kernel']}.")


def markdown(report: dict[str, Any]) -> str:
    m = mode(report)
    head = header(report)
    lines = [
        "# ainative stress comparison" + ("" if m == "latency" else f": {m}"),
        "",
        _workload_line(report),
        "",
        "The workload is a model server on a Unix socket and a separate load client. "
        + NOTES[m] + " *(n)* beside a percentile: the samples at or beyond it, what it "
        "rests on. *rq wait*: time the model server's threads sat runnable, waiting for a "
        "CPU. *hog CPU*: CPU-seconds the contention got during the measurement. *other "
        "CPU*: CPU-seconds the rest of the machine used meanwhile (the daemon's own, in the "
        "ainative scenario).",
        "",
        "| " + " | ".join(head) + " | what |",
        "|" + "---|" * (len(head) + 1),
    ]
    for name, row in zip(report["scenarios"], table_rows(report), strict=True):
        cells = [c.replace("|", "\\|") for c in row]
        lines.append("| " + " | ".join(cells) + f" | {DESCRIPTIONS.get(name, '')} |")
    caveats = caveat_lines(report)
    if caveats:
        lines += ["", *(f"- {c}" for c in caveats)]
    if report.get("rounds", 1) > 1:
        lines += ["", f"The scenarios ran in turn, {report['rounds']} rounds of "
                      f"{report['config']['duration'] / report['rounds']:g} s; each row "
                      f"merges its rounds' histograms. {ROUND_FIGURE[m][1]} by round:", "",
                  *(f"- {ln}" for ln in round_lines(report))]
    errs = errors(report)
    if errs:
        lines += ["", "Scenarios that failed:", "", *(f"- {e}" for e in errs)]
    v = report.get("verdict", {})
    if v:
        lines += ["", "Verdict: " + ", ".join(f"{k} = {val}" for k, val in v.items())]
    a = report["scenarios"].get("ainative", {}).get("ainative")
    if a:
        lines += ["", f"ainative classified the model server as "
                  f"`{(a.get('workload') or {}).get('class')}` and demoted "
                  f"{a.get('hogs_demoted')} of {a.get('hogs')} hog processes on its own."]
    if report.get("interrupted"):
        lines += ["", "**Interrupted**: scenarios after the last one shown did not run."]
    lines += [*feeds.markdown(report), *capacity.markdown(report)]
    return "\n".join(lines) + "\n"


# What the second panel of a throughput or frames plot shows: the mode's headline rate.
_RATE = {"throughput": ("throughput_per_s", "requests/s"),
         "frames": ("achieved_fps", "frames on time per second")}


def _legend(name: str, r: dict[str, Any], m: str) -> str:
    """A scenario's label: its losses, which a latency curve cannot show."""
    lost = (r.get("deadline_misses", 0), "deadline misses") if m == "frames" else \
        (r.get("dropped", 0), "dropped")
    return f"{name} ({lost[0]} {lost[1]})" if lost[0] else name


def plot(report: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = mode(report)
    sc = {n: r for n, r in report["scenarios"].items() if "error" not in r}
    if m in _RATE:
        fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 5.5),
                                     gridspec_kw={"width_ratios": [3, 2]})
    else:
        fig, ax = plt.subplots(figsize=(9, 5.5))
    for name, r in sc.items():
        dist = r.get("distribution") or []
        if not dist:
            continue
        xs = [1.0 / max(1e-6, 1.0 - p / 100.0) for p, _ in dist]
        ax.plot(xs, [v for _, v in dist], label=_legend(name, r, m))
    alone = sc.get("alone")
    if alone:  # the reference every remedy is judged against
        ax.axhline(alone["latency"]["p99_ms"], color="grey", linestyle="--", linewidth=1,
                   label=f"alone p99 ({alone['latency']['p99_ms']:.2f} ms)")
    cfg = report["config"]
    if m == "frames":
        ax.axhline(1000.0 / cfg["rate"], color="red", linestyle=":", linewidth=1,
                   label=f"deadline ({1000.0 / cfg['rate']:.1f} ms)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ticks = [1, 2, 10, 100, 1000, 10000, 100000]
    ax.set_xticks(ticks)
    ax.set_xticklabels(["0%", "50%", "90%", "99%", "99.9%", "99.99%", "99.999%"])
    ax.set_xlabel("percentile")
    ax.set_ylabel({"latency": "latency from scheduled time (ms)",
                   "throughput": "latency per request (ms)",
                   "frames": "frame latency from its start time (ms)"}[m])
    load = {"latency": f"at {cfg['rate']:.0f}/s", "throughput": "closed loop",
            "frames": f"at {cfg['rate']:g} fps"}[m]
    ax.set_title(f"{cfg['model_name']} batch {cfg['batch']} {load}, "
                 f"contention {', '.join(report['contention']) or 'none'}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    if m in _RATE:
        key, label = _RATE[m]
        names = list(sc)
        bars = bx.bar(names, [float(sc[n].get(key) or 0) for n in names], color="tab:blue")
        bx.bar_label(bars, fmt="%.1f", fontsize="small")
        if alone:
            bx.axhline(float(alone.get(key) or 0), color="grey", linestyle="--", linewidth=1)
        if m == "frames":
            bx.axhline(cfg["rate"], color="red", linestyle=":", linewidth=1)
        bx.set_ylabel(label)
        bx.tick_params(axis="x", labelrotation=30)
        bx.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(report: dict[str, Any], directory: str) -> dict[str, str]:
    os.makedirs(directory, exist_ok=True)
    paths = {"json": os.path.join(directory, "report.json"),
             "markdown": os.path.join(directory, "report.md"),
             "png": os.path.join(directory, "latency.png")}
    with open(paths["json"], "w") as fh:
        json.dump(report, fh, indent=2)
    with open(paths["markdown"], "w") as fh:
        fh.write(markdown(report))
    plot(report, paths["png"])
    return paths
