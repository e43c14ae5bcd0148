"""The issue's target configuration: a 4-layer MLP (batch 8, one thread) served on a Unix
socket, driven at 1,000 requests/s by a separate load client, under 4 CPU hogs, in every
scenario, in one run. Prints the table and whether ainative's p99 is within 1.5x of the
alone p99 and below what `nice -n -10` gets (the run-queue wait is the model server's).

    sudo .venv/bin/python benchmarks/bench_stress_compare.py [--duration 30s] [--report DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", default="30s", help="per scenario")
    ap.add_argument("--report", default="reports/bench-compare")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (the ainative, chrt and cgroup scenarios change priorities)")
    cmd = [sys.executable, "-m", "ainative", "stress", "--compare", "--model", "mlp",
           "--batch", "8", "--threads", "1", "--rate", "1000", "--duration", args.duration,
           "--contention", "cpu:4", "--report", args.report]
    print("$ " + shlex.join(["ainative", *cmd[3:]]), flush=True)
    subprocess.run(cmd, check=True)
    with open(os.path.join(args.report, "report.json")) as fh:
        rep = json.load(fh)
    sc = rep["scenarios"]
    print()
    for name, r in sc.items():
        if "error" in r:
            print(f"{name:10s} FAILED: {r['error']}")
        else:
            print(f"{name:10s} p99 {r['latency']['p99_ms']:9.3f} ms  "
                  f"server run-queue wait {r['resources']['run_queue_wait_s']:.3f} s  "
                  f"hogs {r.get('contention_cpu_s', '-')} CPU-s  "
                  f"({r['scenario_wall_s']} s wall)")
    v = rep["verdict"]
    if "ainative_vs_alone_p99" not in v:
        print("verdict: no ainative figure (see its error above)")
        return 1
    print(f"verdict: ainative p99 / alone p99 = {v['ainative_vs_alone_p99']} "
          f"(target <= 1.5: {'met' if v['within_1_5x_alone'] else 'NOT met'}); "
          f"below nice -n -10: {'yes' if v.get('below_nice') else 'NO'}")
    return 0 if v["within_1_5x_alone"] and v.get("below_nice") else 1


if __name__ == "__main__":
    sys.exit(main())
