"""What the run-queue latency source costs: kernel-side BPF run time and the user-side
reader's CPU, while it watches one process under CPU contention.

Starts CPU hogs (stress-ng --cpu 4, else Python loops) and a victim that works 0.3 ms and
sleeps 1 ms in a loop, opens the eBPF source watching the victim only, and measures over
--seconds:

* each BPF program's run count and run time, from the kernel's own accounting
  (/proc/sys/kernel/bpf_stats_enabled, switched on for the run and restored after; its
  per-run timestamps add a little of their own), read from the programs' fdinfo;
* the CPU time of the source's reader thread (its /proc/self/task/TID/schedstat);

once with the default batching (the reader collects every 20 ms) and once with a wakeup at
every event (batch_s=0), then the schedstat fallback's reader for comparison. Needs root.
Run: python benchmarks/bench_runqueue_overhead.py [--seconds 5]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ainative.stress.contention import ContentionError, Hogs, parse_scenario
from ainative.telemetry import bpf_setup
from ainative.telemetry.events import RunqueueLatency
from ainative.telemetry.runqueue import (
    EbpfRunqueueSource,
    RunqueueSource,
    ebpf_preflight,
    open_runqueue_source,
)

STATS = Path("/proc/sys/kernel/bpf_stats_enabled")
VICTIM = ("import time\nwhile True:\n    t = time.perf_counter()\n"
          "    while time.perf_counter() - t < 0.0003:\n        pass\n    time.sleep(0.001)\n")


def _prog_stats(src: EbpfRunqueueSource) -> dict[str, tuple[int, int]]:
    """{program: (run_cnt, run_time_ns)} from the kernel's fdinfo of each program."""
    out = {}
    bpf: Any = src._bpf
    for name, fn in bpf.funcs.items():
        info = Path(f"/proc/self/fdinfo/{fn.fd}").read_text()
        f = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
        short = (name.decode() if isinstance(name, bytes) else name).rsplit("__", 1)[-1]
        out[short] = (int(f.get("run_cnt", "0")), int(f.get("run_time_ns", "0")))
    return out


def _thread_cpu_ns(src: RunqueueSource) -> int:
    t = src._thread
    assert t is not None and t.native_id is not None
    return int(Path(f"/proc/self/task/{t.native_id}/schedstat").read_text().split()[0])


def _measure(src: RunqueueSource, seconds: float) -> dict[str, Any]:
    events: list[RunqueueLatency] = []
    src._on_event = events.append
    src.start()
    time.sleep(1.0)  # the first refresh has filled the maps
    e0 = len(events)
    c0 = _thread_cpu_ns(src)
    p0 = _prog_stats(src) if isinstance(src, EbpfRunqueueSource) else {}
    t0 = time.monotonic()
    time.sleep(seconds)
    dt = time.monotonic() - t0
    c1 = _thread_cpu_ns(src)
    p1 = _prog_stats(src) if isinstance(src, EbpfRunqueueSource) else {}
    n = len(events) - e0
    src.stop()
    progs = {k: (p1[k][0] - p0[k][0], p1[k][1] - p0[k][1]) for k in p1}
    return {"secs": dt, "events": n, "reader_ns": c1 - c0, "progs": progs,
            "dropped": src.dropped}


def _report(title: str, m: dict[str, Any]) -> None:
    secs, n = m["secs"], m["events"]
    print(f"{title}:")
    print(f"  events delivered: {n / secs:8.0f}/s   dropped: {m['dropped']}")
    bpf_total = 0
    for name, (cnt, ns) in sorted(m["progs"].items()):
        bpf_total += ns
        per = ns / cnt if cnt else 0.0
        print(f"  BPF {name:17s} {cnt / secs:8.0f} runs/s  {per:6.0f} ns/run  "
              f"{100 * ns / secs / 1e9:6.3f} % of one CPU")
    if m["progs"]:
        print(f"  BPF programs in all:                             "
              f"{100 * bpf_total / secs / 1e9:6.3f} % of one CPU")
    per_ev = m["reader_ns"] / n / 1e3 if n else 0.0
    print(f"  reader thread: {100 * m['reader_ns'] / secs / 1e9:6.3f} % of one CPU"
          f"   ({per_ev:.1f} us per event)")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_runqueue_overhead: needs root (it loads eBPF programs)", file=sys.stderr)
        return 1
    try:
        done = bpf_setup.prepare()
    except (bpf_setup.BpfSetupError, OSError) as e:
        print(f"bench_runqueue_overhead: {e}", file=sys.stderr)
        return 1
    for line in done:
        print(f"setup: {line}")
    why = ebpf_preflight()
    if why:
        print(f"bench_runqueue_overhead: eBPF unavailable: {why}", file=sys.stderr)
        return 1
    old_stats = STATS.read_text().strip() if STATS.exists() else None
    victim = subprocess.Popen([sys.executable, "-c", VICTIM], stdin=subprocess.DEVNULL)
    try:
        if old_stats is not None:
            STATS.write_text("1")
        with Hogs([parse_scenario("cpu:4")]) as hogs:
            print(f"contention: {hogs.tool} --cpu 4 on {os.cpu_count()} CPUs "
                  f"(verified: {hogs.verified['cpu_s']:.2f} s CPU in "
                  f"{hogs.verified['window_s']:.1f} s); watching 1 process, "
                  f"{args.seconds:.0f} s each")
            for title, batch in (("eBPF, batched every 20 ms (default)", 0.02),
                                 ("eBPF, reader woken at every event (batch_s=0)", 0.0)):
                src = open_runqueue_source(lambda: {victim.pid}, lambda e: None,
                                           batch_s=batch)
                if src.kind != "ebpf":
                    print(f"eBPF unavailable: {src.why}", file=sys.stderr)
                    return 1
                _report(title, _measure(src, args.seconds))
            src = open_runqueue_source(lambda: {victim.pid}, lambda e: None,
                                       prefer="schedstat")
            _report("schedstat fallback, every 100 ms", _measure(src, args.seconds))
    except ContentionError as e:
        print(f"bench_runqueue_overhead: {e}", file=sys.stderr)
        return 1
    finally:
        if old_stats is not None:
            STATS.write_text(old_stats)
        victim.kill()
        victim.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
