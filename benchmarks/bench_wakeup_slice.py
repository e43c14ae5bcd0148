"""What EEVDF's slice does for a woken thread on a CPU where a busy loop runs: the
mechanism behind the inference class's `slice = "0.1ms"` (README, "Why serving gets the
shortest slice"), measured without a model, a socket server or the daemon around it.

A waker on one CPU sends a timestamp over a socketpair every millisecond to a sleeper
pinned to another CPU, where a busy loop runs too; the sleeper's wakeup latency is the
time from the send to when it runs. Every combination of the sleeper's slice (the
kernel's default, 0.1 ms) and the loop's weight (nice 0, nice 19) is measured in
interleaved rounds, so a noisy moment hits all of them alike. Prints p50/p99/p99.9/max
per combination and the sample count.

    .venv/bin/python benchmarks/bench_wakeup_slice.py [--wakeups 30000] [--rounds 3]

Linux 6.12+ (custom slices); two CPUs at least. No root needed: slices and nice >= 0 are
open to any user for their own processes.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time

import numpy as np

from ainative.core.knobs import SLICE_MIN_NS
from ainative.platform.linux import knobs

PERIOD_S = 0.001


def _hog(cpu: int, nice: int) -> subprocess.Popen[bytes]:
    code = (f"import os\nos.sched_setaffinity(0, {{{cpu}}})\nos.nice({nice})\n"
            "while True: pass\n")
    return subprocess.Popen([sys.executable, "-c", code])


def measure(n: int, slice_ns: int, hog_nice: int, waker_cpu: int, sleeper_cpu: int
            ) -> np.ndarray:
    """n wakeup latencies in microseconds."""
    hog = _hog(sleeper_cpu, hog_nice)
    a, b = socket.socketpair()
    pid = os.fork()
    if pid == 0:  # the sleeper
        try:
            a.close()
            os.sched_setaffinity(0, {sleeper_cpu})
            if slice_ns:
                knobs.set_slice(0, slice_ns)
            out = np.empty(n, dtype=np.int64)
            for i in range(n):
                sent = int.from_bytes(b.recv(8), "little")
                out[i] = time.clock_gettime_ns(time.CLOCK_MONOTONIC) - sent
            b.sendall(out.tobytes())
        finally:
            os._exit(0)
    b.close()
    try:
        os.sched_setaffinity(0, {waker_cpu})
        time.sleep(0.2)  # the loop is running on the sleeper's CPU
        for _ in range(n):
            time.sleep(PERIOD_S)
            a.sendall(time.clock_gettime_ns(time.CLOCK_MONOTONIC).to_bytes(8, "little"))
        raw = b""
        while len(raw) < n * 8:
            chunk = a.recv(n * 8 - len(raw))
            if not chunk:
                break
            raw += chunk
    finally:
        os.waitpid(pid, 0)
        hog.kill()
        hog.wait()
        a.close()
    return np.frombuffer(raw, dtype=np.int64) / 1000.0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--wakeups", type=int, default=30000, help="per combination, all rounds")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if not knobs.default_slice_ns():
        sys.exit("this kernel has no custom EEVDF slices (Linux 6.12+): nothing to measure")
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        sys.exit("needs two CPUs: the waker's and the sleeper's")
    waker, sleeper = cpus[0], cpus[-1]
    combos = [(s, h) for h in (0, 19) for s in (0, SLICE_MIN_NS)]
    per_round = max(1, args.wakeups // args.rounds)
    got: dict[tuple[int, int], list[np.ndarray]] = {c: [] for c in combos}
    for _ in range(args.rounds):
        for s, h in combos:
            got[(s, h)].append(measure(per_round, s, h, waker, sleeper))
    print(f"wakeup latency of a thread on CPU {sleeper}, where a busy loop runs, woken from "
          f"CPU {waker} every {PERIOD_S * 1000:g} ms; kernel default slice "
          f"{knobs.default_slice_ns() / 1e6:g} ms")
    print(f"{'sleeper slice':>14s} {'loop nice':>9s} {'wakeups':>8s} {'p50 us':>8s} "
          f"{'p99 us':>8s} {'p99.9 us':>9s} {'max us':>8s}")
    for s, h in combos:
        lat = np.concatenate(got[(s, h)])
        p50, p99, p999 = np.percentile(lat, [50, 99, 99.9])
        name = "default" if not s else f"{s / 1e6:g} ms"
        print(f"{name:>14s} {h:9d} {lat.size:8d} {p50:8.0f} {p99:8.0f} {p999:9.0f} "
              f"{lat.max():8.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
