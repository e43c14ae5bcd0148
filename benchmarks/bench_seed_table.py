"""The seed's predicted performance table, row by row, measured: each row's claim as an
`ainative stress --compare` run of its own (alone, under 4 CPU hogs, and under the hogs
with ainative, nice -n -10 and chrt -f 10), then one Markdown table of what each gave.

    inference 30 -> 12 ms       --model attention-large (~35 ms), open loop at 5/s: p99 ms
    batch 100 -> 300 req/s      --mode throughput, mlp at batch 64: requests/s (samples/s)
    realtime 50 -> 120 fps      --mode frames --fps 60, attention at batch 8: fps on time
    memory transfer, GPU launch need a GPU: benchmarks/bench_pool.py (the pool's
                                host-to-device figure) and benchmarks/bench_gpu_launch.py

Every row prints the command that gives it; the reports (JSON, Markdown, plot) go to
--report-dir/<row>. Each report says whether its baseline was disturbed (other load on the
machine before or during "alone") and such warnings are repeated here: on a busy machine
the figures are the machine's, not ainative's.

Run as root: python benchmarks/bench_seed_table.py [--scale 1.0] [--rows latency,...]
(--scale 0.5 halves every duration; the defaults take about 15 minutes.)
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from typing import Any

SCENARIOS = "alone,contended,ainative,nice,chrt"
# row -> (the seed's claim, ainative stress arguments, seconds per scenario)
ROWS: dict[str, tuple[str, list[str], float]] = {
    "latency": ("inference 30 -> 12 ms",
                ["--model", "attention-large", "--batch", "1", "--rate", "5"], 60.0),
    "throughput": ("batch inference 100 -> 300 req/s",
                   ["--mode", "throughput", "--model", "mlp", "--batch", "64"], 30.0),
    "frames": ("realtime 50 -> 120 fps",
               ["--mode", "frames", "--fps", "60", "--model", "attention", "--batch", "8"],
               30.0),
}


def command(row: str, scale: float, report_dir: str) -> list[str]:
    _claim, args, seconds = ROWS[row]
    return ["ainative", "stress", "--compare", *args, "--duration", f"{seconds * scale:g}s",
            "--rounds", "3", "--scenarios", SCENARIOS, "--report",
            os.path.join(report_dir, row)]


def cell(row: str, r: dict[str, Any]) -> str:
    if "error" in r:
        return "error"
    lat = r["latency"]
    if row == "throughput":
        return f"{r['throughput_per_s']:.0f} req/s ({r['samples_per_s']:.0f} samples/s)"
    if row == "frames":
        return f"{r['achieved_fps']:.1f} fps, {r['deadline_misses']} missed"
    return f"p99 {lat['p99_ms']:.1f} ms (p50 {lat['p50_ms']:.1f}; n={r['completed']})"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every duration")
    ap.add_argument("--rows", default=",".join(ROWS))
    ap.add_argument("--report-dir", default="reports/seed")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (the ainative and chrt scenarios change priorities)")
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    bad = [r for r in rows if r not in ROWS]
    if bad:
        sys.exit(f"unknown row(s) {bad}: choose from {', '.join(ROWS)}")
    lines = ["| seed's claim | " + " | ".join(SCENARIOS.split(",")) + " | command |",
             "|" + "---|" * (len(SCENARIOS.split(",")) + 2)]
    warnings: list[str] = []
    for row in rows:
        cmd = command(row, args.scale, args.report_dir)
        print("$ " + shlex.join(cmd), flush=True)
        subprocess.run([sys.executable, "-m", "ainative", *cmd[1:]], check=True)
        with open(os.path.join(args.report_dir, row, "report.json")) as fh:
            rep = json.load(fh)
        sc = rep["scenarios"]
        cells = [cell(row, sc[n]) if n in sc else "-" for n in SCENARIOS.split(",")]
        lines.append(f"| {ROWS[row][0]} | " + " | ".join(cells) + f" | `{shlex.join(cmd)}` |")
        warnings += [f"{row}: {w}" for w in rep.get("warnings") or []]
    print()
    print("\n".join(lines))
    if warnings:
        print(f"\n{len(warnings)} warning(s): these figures are the busy machine's:")
        for w in warnings:
            print("  " + w)
    return 0


if __name__ == "__main__":
    sys.exit(main())
