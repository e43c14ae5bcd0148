"""Time from exec of a matching process to its policy being applied.

A process whose name matches a rule is started N times; for each, the time from just
before the fork+exec to the moment its nice value, read from /proc, shows the class's
value. Prints p50/p90/p99/max. Run as root: python benchmarks/bench_apply_latency.py
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time

import numpy as np

from _daemon import BenchDaemon

RULES = """
[[rule]]
name = "benchmark target"
comm = "ainb-target"
class = "inference"
"""


def nice_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[16])
    except (OSError, IndexError):
        return None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--timeout", type=float, default=2.0)
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: the daemon changes priorities")
    tmp = tempfile.mkdtemp(prefix="ainb-")
    target = os.path.join(tmp, "ainb-target")
    os.symlink(shutil.which("sleep") or "/bin/sleep", target)
    d = BenchDaemon("--no-cgroups", rules_text=RULES, scope_pid=os.getpid())
    lat: list[float] = []
    missed = 0
    try:
        for _ in range(args.runs):
            t0 = time.perf_counter()
            p = subprocess.Popen([target, "30"])
            while True:
                if nice_of(p.pid) == -10:
                    lat.append((time.perf_counter() - t0) * 1e3)
                    break
                if time.perf_counter() - t0 > args.timeout:
                    missed += 1
                    break
                time.sleep(0.0002)
            p.kill()
            p.wait()
    finally:
        d.stop()
    a = np.array(lat)
    print(f"exec -> policy applied, {len(lat)} runs ({missed} not applied within "
          f"{args.timeout:.0f} s), event source from the daemon log:")
    print(f"  p50 {np.percentile(a, 50):.2f} ms   p90 {np.percentile(a, 90):.2f} ms   "
          f"p99 {np.percentile(a, 99):.2f} ms   max {a.max():.2f} ms")
    print("  (includes fork+exec of the child itself; target: p99 < 50 ms)")


if __name__ == "__main__":
    main()
