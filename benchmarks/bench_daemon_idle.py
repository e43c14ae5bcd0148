"""The daemon's CPU use and memory while idle on a machine with several hundred processes.

Starts --procs extra sleeping processes, runs the daemon unscoped in --dry-run (so it
examines every process on the machine but changes nothing), lets it settle, then measures
its CPU time and RSS over --seconds. Run: python benchmarks/bench_daemon_idle.py
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time

from _daemon import BenchDaemon


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--procs", type=int, default=400)
    ap.add_argument("--warmup", type=float, default=10.0)
    ap.add_argument("--seconds", type=float, default=60.0)
    args = ap.parse_args()
    sleepers = [subprocess.Popen(["sleep", "3600"]) for _ in range(args.procs)]
    try:
        total = len(os.listdir("/proc")) and sum(1 for p in os.listdir("/proc") if p.isdigit())
        d = BenchDaemon("--dry-run")
        try:
            time.sleep(args.warmup)
            c0, t0 = d.cpu_seconds(), time.monotonic()
            time.sleep(args.seconds)
            c1, t1 = d.cpu_seconds(), time.monotonic()
            rss = d.rss_mib()
        finally:
            d.stop()
    finally:
        for s in sleepers:
            s.kill()
            s.wait()
    pct = 100.0 * (c1 - c0) / (t1 - t0)
    print(f"daemon idle with {total} processes on the machine, over {t1 - t0:.0f} s "
          f"after {args.warmup:.0f} s warm-up:")
    print(f"  CPU {pct:.2f} % of one core   RSS {rss:.1f} MiB   (targets: < 1 %, < 80 MB)")


if __name__ == "__main__":
    main()
