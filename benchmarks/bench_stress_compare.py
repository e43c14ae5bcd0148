"""The issue's target configuration: a 4-layer MLP (batch 8, one thread) at 1,000/s under
4 CPU hogs, in every scenario, in one run. Prints the table and whether ainative's p99 is
within 1.5x of the alone p99 and below what `nice -n -10` gets.

    sudo .venv/bin/python benchmarks/bench_stress_compare.py [--duration 30s] [--report DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", default="30s")
    ap.add_argument("--report", default="reports/bench-compare")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (the ainative, chrt and cgroup scenarios change priorities)")
    subprocess.run([sys.executable, "-m", "ainative", "stress", "--compare", "--model", "mlp",
                    "--batch", "8", "--threads", "1", "--rate", "1000", "--duration",
                    args.duration, "--contention", "cpu:4", "--report", args.report],
                   check=True)
    with open(os.path.join(args.report, "report.json")) as fh:
        rep = json.load(fh)
    v = rep["verdict"]
    print(f"ainative p99 / alone p99 = {v.get('ainative_vs_alone_p99')} "
          f"(target <= 1.5: {'met' if v.get('within_1_5x_alone') else 'NOT met'}); "
          f"below nice -n -10: {'yes' if v.get('below_nice') else 'NO'}")


if __name__ == "__main__":
    main()
