"""Writing a stress result: JSON for machines, Markdown for people, a PNG of the latency
distributions (percentile on a log scale, as HdrHistogram plots them)."""

from __future__ import annotations

import json
import os
from typing import Any

from ainative.stress.catalog import DESCRIPTIONS

COLUMNS = ("p50_ms", "p90_ms", "p99_ms", "p99_9_ms", "max_ms")


HEADER = ["scenario", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms", "req/s", "late",
          "dropped", "rq wait s", "hog CPU s"]


def _row(name: str, r: dict[str, Any]) -> list[str]:
    if "error" in r:
        return [name, "error", *["-"] * (len(HEADER) - 2)]
    lat = r["latency"]
    hog = r.get("contention_cpu_s")
    return [name + (" (interrupted)" if r.get("interrupted") else ""),
            *(f"{lat[c]:.2f}" for c in COLUMNS),
            f"{r['throughput_per_s']:.0f}", str(r["late"]), str(r["dropped"]),
            f"{r['resources']['run_queue_wait_s']:.3f}",
            "-" if hog is None else f"{hog:.1f}"]


def table_rows(report: dict[str, Any]) -> list[list[str]]:
    return [_row(n, r) for n, r in report["scenarios"].items()]


def errors(report: dict[str, Any]) -> list[str]:
    """'scenario: why' for every scenario that failed."""
    return [f"{n}: {r['error']}" for n, r in report["scenarios"].items() if "error" in r]


def round_lines(report: dict[str, Any]) -> list[str]:
    """Each scenario's p99 in each of its rounds: how much the rounds differed."""
    return [f"{name}: " + " / ".join(f"{x['p99_ms']:.2f}" for x in r["rounds"])
            for name, r in report["scenarios"].items() if r.get("rounds")]


def markdown(report: dict[str, Any]) -> str:
    cfg = report["config"]
    lines = [
        "# ainative stress comparison",
        "",
        f"Model `{cfg['model_name']}`, batch {cfg['batch']}, {cfg['threads']} thread(s), "
        f"{cfg['rate']:.0f} requests/s open loop for {cfg['duration']:.0f} s per scenario; "
        f"contention {', '.join(report['contention']) or 'none'}; "
        f"machine {report['machine']['cpus']} CPUs, kernel {report['machine']['kernel']}.",
        "",
        "The workload is a model server on a Unix socket and a separate load client. "
        "Latency is measured by the client from each request's scheduled time to its "
        "reply, so time spent queued counts. *rq wait*: time the model server's threads "
        "sat runnable, waiting for a CPU. *hog CPU*: CPU-seconds the contention got during "
        "the measurement.",
        "",
        "| " + " | ".join(HEADER) + " | what |",
        "|" + "---|" * (len(HEADER) + 1),
    ]
    for name, r in report["scenarios"].items():
        row = [c.replace("|", "\\|") for c in _row(name, r)]
        lines.append("| " + " | ".join(row) + f" | {DESCRIPTIONS.get(name, '')} |")
    if report.get("rounds", 1) > 1:
        lines += ["", f"The scenarios ran in turn, {report['rounds']} rounds of "
                      f"{cfg['duration'] / report['rounds']:g} s; each row merges its rounds' "
                      "histograms. p99 ms by round:", "",
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
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    for name, r in report["scenarios"].items():
        dist = r.get("distribution") or []
        if not dist:
            continue
        xs = [1.0 / max(1e-6, 1.0 - p / 100.0) for p, _ in dist]
        ax.plot(xs, [v for _, v in dist], label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ticks = [1, 2, 10, 100, 1000, 10000, 100000]
    ax.set_xticks(ticks)
    ax.set_xticklabels(["0%", "50%", "90%", "99%", "99.9%", "99.99%", "99.999%"])
    ax.set_xlabel("percentile")
    ax.set_ylabel("latency from scheduled time (ms)")
    cfg = report["config"]
    ax.set_title(f"{cfg['model_name']} batch {cfg['batch']} at {cfg['rate']:.0f}/s, "
                 f"contention {', '.join(report['contention']) or 'none'}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
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
