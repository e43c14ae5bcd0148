"""GPU launch latency under CPU contention, with and without ainative (needs a GPU).

A process that drives a GPU spends most of its time launching small kernels and waiting
for them: each launch is a few microseconds of CPU work, and a launch thread that waits
in the run queue behind CPU hogs leaves the GPU idle. This measures that round trip
(one tiny kernel launched and synchronised, torch's CUDA path) in a child process:

- alone;
- contended: 2 busy loops per CPU, named like a load generator (stress-ng) so that the
  built-in rules know them as background work;
- ainative: the same hogs, with a daemon scoped to this benchmark; the launching process
  declares itself with AINATIVE_CLASS=inference (root may), is busy, so the hogs are
  demoted while it runs.

The three run in turn for --rounds rounds and each is merged, like `stress --compare`.
Prints p50/p99/p99.9/max in microseconds and the ratio to alone. Without torch or a GPU
it says so and exits 0.

Run as root: python benchmarks/bench_gpu_launch.py [--launches 20000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

LAUNCHER = r"""
import json, sys, time, torch
n = int(sys.argv[1])
x = torch.zeros(1, device="cuda")
# Warm-up: the context and kernel cache, and 1.5 s of the same loop, so that a daemon
# sees this process busy (its activity window) before the measured launches start.
t_end = time.monotonic() + 1.5
while time.monotonic() < t_end:
    x.add_(1); torch.cuda.synchronize()
out = []
for _ in range(n):
    t = time.perf_counter_ns()
    x.add_(1)
    torch.cuda.synchronize()
    out.append(time.perf_counter_ns() - t)
print(json.dumps(out))
"""

HOG = "import sys\nprint('ready', flush=True)\nwhile True: pass\n"


def probe() -> str:
    """'' when torch sees a CUDA GPU, else why not."""
    r = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.is_available())"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        return "torch is not importable: " + (r.stderr.strip().splitlines() or ["?"])[-1]
    return "" if r.stdout.strip() == "True" else "torch sees no CUDA GPU"


def start_hogs(n: int, tmp: str) -> list[subprocess.Popen[str]]:
    exe = os.path.join(tmp, "stress-ng")
    if not os.path.exists(exe):
        os.symlink(sys.executable, exe)
    hogs = [subprocess.Popen([exe, "-c", HOG], stdout=subprocess.PIPE, text=True)
            for _ in range(n)]
    for h in hogs:
        assert h.stdout is not None
        h.stdout.readline()
    return hogs


def launch(n: int, env: dict[str, str] | None = None) -> list[int]:
    r = subprocess.run([sys.executable, "-c", LAUNCHER, str(n)], capture_output=True,
                       text=True, env=env, check=True)
    return [int(v) for v in json.loads(r.stdout)]


def pct(vals: list[int], p: float) -> float:
    s = sorted(vals)
    return s[min(len(s) - 1, int(p / 100 * len(s)))] / 1000.0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--launches", type=int, default=20000, help="per scenario and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--hogs-per-cpu", type=int, default=2)
    args = ap.parse_args()
    why = probe()
    if why:
        print(f"bench_gpu_launch: skipped: {why}")
        return 0
    if os.geteuid() != 0:
        raise SystemExit("run as root: the ainative scenario starts a daemon")
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from _daemon import BenchDaemon

    tmp = tempfile.mkdtemp(prefix="ainative-gpu-launch-")
    n_hogs = args.hogs_per_cpu * (os.cpu_count() or 1)
    res: dict[str, list[int]] = {"alone": [], "contended": [], "ainative": []}
    for _ in range(args.rounds):
        res["alone"] += launch(args.launches)
        hogs = start_hogs(n_hogs, tmp)
        try:
            res["contended"] += launch(args.launches)
            d = BenchDaemon(scope_pid=os.getpid())
            try:
                time.sleep(1.0)  # the daemon's first scan has classified the hogs
                env = dict(os.environ, AINATIVE_CLASS="inference")
                res["ainative"] += launch(args.launches, env)
            finally:
                d.stop()
        finally:
            for h in hogs:
                h.kill()
                h.wait()
    print(f"GPU launch + synchronise round trip, {args.launches} x {args.rounds} per "
          f"scenario, {n_hogs} hogs on {os.cpu_count()} CPUs (microseconds)")
    alone99 = pct(res["alone"], 99)
    print(f"{'scenario':10} {'p50':>8} {'p99':>8} {'p99.9':>8} {'max':>9} {'p99/alone':>10}")
    for name, vals in res.items():
        print(f"{name:10} {pct(vals, 50):8.1f} {pct(vals, 99):8.1f} {pct(vals, 99.9):8.1f} "
              f"{max(vals) / 1000:9.1f} {pct(vals, 99) / alone99:10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
