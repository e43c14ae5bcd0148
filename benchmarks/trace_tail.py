"""Where the serving tail comes from: who ran while the model server or its load client
waited for a CPU (issue 9's tail investigation, repeatable).

For each scenario asked (default: ainative and ainative-noloop), runs one
`ainative stress --compare` scenario under `perf sched record -a`, then reads
`perf sched timehist`: every time a thread of the server or of the load client was
woken and had to wait longer than --threshold before it ran, the tasks that ran on its CPU
in between are blamed, by kind (the hogs, the ainative daemon, kernel threads, the
server/client pair itself, anything else). Prints per scenario: the pair's runs, the
delays over the threshold, their sum, and the blame table; plus the scenario's p99/p99.9.

    sudo .venv/bin/python benchmarks/trace_tail.py [--contention cpu:4] [--duration 10s]
        [--scenarios ainative,ainative-noloop] [--threshold-ms 0.5]

Needs perf (Debian: linux-perf) and root. perf's timehist columns: time, [cpu], task
("comm[tid]" for a process's main thread, "comm[tid/pid]" for its other threads), time
it slept, scheduling delay (waiting to run after its wakeup) and run time, in ms.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass

_ROW = re.compile(r"^\s*([\d.]+)\s+\[(\d+)\]\s+(.+?)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s*$")
_TASK = re.compile(r"^(.*)\[(\d+)(?:/(\d+))?\]$")


@dataclass(frozen=True)
class Row:
    end: float  # when this run ended (s)
    cpu: int
    comm: str
    tid: int
    pid: int
    delay: float  # scheduling delay before this run (s)
    run: float  # run time (s)


def parse(text: str) -> list[Row]:
    rows = []
    for line in text.splitlines():
        m = _ROW.match(line)
        if not m:
            continue
        t = _TASK.match(m.group(3).strip())
        if not t:
            continue
        tid = int(t.group(2))
        pid = int(t.group(3)) if t.group(3) else tid
        rows.append(Row(float(m.group(1)), int(m.group(2)), t.group(1), tid, pid,
                        float(m.group(5)) / 1e3, float(m.group(6)) / 1e3))
    return rows


def kind_of(r: Row, pair: set[int], daemon: int | None) -> str:
    if r.pid in pair:
        return "the server/client pair"
    if daemon is not None and r.pid == daemon:
        return "the ainative daemon"
    if r.comm.startswith(("stress-ng", "sh")):
        return "the hogs"
    if r.comm.startswith(("kworker", "ksoftirq", "rcu", "migration", "kcompact", "kswapd")):
        return "kernel threads"
    if r.comm == "<idle>":
        return "idle"
    return f"other ({r.comm})"


def blame(rows: list[Row], pair: set[int], daemon: int | None, threshold: float
          ) -> tuple[int, int, float, collections.Counter[str], collections.Counter[str]]:
    by_cpu: dict[int, list[Row]] = collections.defaultdict(list)
    for r in rows:
        by_cpu[r.cpu].append(r)
    runs = delays = 0
    total = 0.0
    count: collections.Counter[str] = collections.Counter()
    spent: collections.Counter[str] = collections.Counter()
    for r in rows:
        if r.pid not in pair:
            continue
        runs += 1
        if r.delay < threshold:
            continue
        delays += 1
        total += r.delay
        start = r.end - r.run
        woke = start - r.delay
        for o in by_cpu[r.cpu]:
            o_start = o.end - o.run
            overlap = min(o.end, start) - max(o_start, woke)
            if o is r or overlap <= 0:
                continue
            k = kind_of(o, pair, daemon)
            count[k] += 1
            spent[k] += overlap * 1e3
    return runs, delays, total, count, spent


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--contention", default="cpu:4")
    ap.add_argument("--duration", default="10s")
    ap.add_argument("--rate", default="1000")
    ap.add_argument("--scenarios", default="ainative,ainative-noloop")
    ap.add_argument("--threshold-ms", type=float, default=0.5)
    ap.add_argument("--keep", help="directory to keep perf data and reports in")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (perf sched record -a, and the scenarios change priorities)")
    if not shutil.which("perf"):
        sys.exit("needs perf (apt-get install linux-perf)")
    work = args.keep or tempfile.mkdtemp(prefix="ainative-trace-tail-")
    os.makedirs(work, exist_ok=True)
    for name in args.scenarios.split(","):
        report = os.path.join(work, name)
        data = os.path.join(work, f"{name}.perf")
        cmd = [sys.executable, "-m", "ainative", "stress", "--compare", "--scenarios", name,
               "--rounds", "1", "--model", "mlp", "--batch", "8", "--threads", "1",
               "--rate", args.rate, "--duration", args.duration,
               "--contention", args.contention, "--report", report]
        subprocess.run(["perf", "sched", "record", "-a", "-o", data, "--", *cmd],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        with open(os.path.join(report, "report.json")) as fh:
            sc = json.load(fh)["scenarios"][name]
        if "error" in sc:
            print(f"== {name}: FAILED: {sc['error']}")
            continue
        pair = {int(sc["pid"]), int(sc["client"]["pid"])}
        daemon = sc.get("daemon_pid")
        text = subprocess.run(["perf", "sched", "timehist", "-i", data], capture_output=True,
                              text=True, check=False).stdout
        runs, delays, total, count, spent = blame(parse(text), pair, daemon,
                                                  args.threshold_ms / 1e3)
        lat = sc["latency"]
        g = sc.get("guard") or {}
        print(f"== {name} ({args.contention}, {args.duration}): p99 {lat['p99_ms']:.3f} ms, "
              f"p99.9 {lat['p99_9_ms']:.3f} ms over {sc.get('completed')} requests; daemon "
              f"{sc.get('daemon_cpu_percent')} % of a core; loop's highest step "
              f"{g.get('max_step')}")
        print(f"   server+client runs {runs}; woken and kept waiting over "
              f"{args.threshold_ms:g} ms: {delays} times, {total * 1e3:.1f} ms in all")
        for k, n in count.most_common():
            print(f"   {k:34s} ran {n:5d} times in those waits, {spent[k]:8.1f} ms")
    print(f"(perf data and reports in {work})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
