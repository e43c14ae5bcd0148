"""The cost of `ainative monitor`: its CPU and the daemon's while it refreshes every second
with 200 processes on the machine.

A scoped daemon (ScopedDaemon, scope = this benchmark's pid, metrics on, so the
``latency`` op has its state) and 200 idle child processes (python sleeping; every
tenth with AINATIVE_CLASS=background, so the daemon manages 20 of them and the table has
rows). Then the monitor's textual app runs headless (textual's run_test, an 80x24
virtual screen) with --interval 1 for the window (20 s by default): each second a worker
thread asks the daemon for status and latency, and the table and panels are redrawn.

Printed: the monitor's CPU (this process: the app, its worker thread and the render,
over the window) and the daemon's (utime + stime from /proc over the same window), each
as a percentage of one CPU, and how many refreshes ran.

Run: python benchmarks/bench_monitor.py [--procs 200] [--seconds 20] [--interval 1]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time

from ainative.cli.monitor import MonitorApp
from ainative.ipc.launcher import ScopedDaemon

SLEEPER = "import sys; print('ready', flush=True); sys.stdin.read()"


def cpu_s(pid: int) -> float:
    """utime + stime of pid, in seconds."""
    with open(f"/proc/{pid}/stat") as fh:
        f = fh.read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


async def run_monitor(sock: str, seconds: float, interval: float) -> tuple[float, float, int,
                                                                            int]:
    """(monitor CPU s, wall s, refreshes, rows shown) over the window."""
    app = MonitorApp(sock, interval=interval)
    async with app.run_test(size=(80, 24)) as pilot:
        while app.refreshes == 0:
            await pilot.pause(0.1)
        c0, w0, r0 = time.process_time(), time.monotonic(), app.refreshes
        await pilot.pause(seconds)
        c1, w1, r1 = time.process_time(), time.monotonic(), app.refreshes
        shown = len(app.shown)
        await pilot.press("q")
    return c1 - c0, w1 - w0, r1 - r0, shown


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--procs", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--interval", type=float, default=1.0)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_monitor: needs root (the daemon changes priorities and cgroups)")
    work = tempfile.mkdtemp(prefix="ainative-bench-monitor-")
    children: list[subprocess.Popen[str]] = []
    with ScopedDaemon(work, scope_pid=os.getpid(), cgroup_root=f"ainative-bench-{os.getpid()}",
                      metrics_address="127.0.0.1:0") as d:
        try:
            for i in range(args.procs):
                env = dict(os.environ)
                if i % 10 == 0:
                    env["AINATIVE_CLASS"] = "background"
                p = subprocess.Popen([sys.executable, "-c", SLEEPER], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env)
                children.append(p)
            for p in children:
                assert p.stdout is not None
                p.stdout.readline()
            time.sleep(2.0)  # the daemon classifies them all
            dpid = d.pid
            d0 = cpu_s(dpid)
            mon_cpu, wall, refreshes, shown = asyncio.run(
                run_monitor(d.sock, args.seconds, args.interval))
            # the daemon's window ends with the monitor's (plus the quit, a few ms)
            d1 = cpu_s(dpid)
        finally:
            for p in children:
                p.kill()
            for p in children:
                p.wait()
    print(f"processes: {args.procs} children ({args.procs // 10 + (args.procs % 10 > 0)} "
          f"managed, {shown} rows in the table), interval {args.interval:g} s, window "
          f"{wall:.1f} s, {refreshes} refreshes")
    print(f"monitor CPU: {100 * mon_cpu / wall:.1f}% of one CPU "
          f"({1000 * mon_cpu / max(1, refreshes):.1f} ms per refresh, render included)")
    print(f"daemon CPU:  {100 * (d1 - d0) / wall:.2f}% of one CPU over the same window "
          f"({d1 - d0:.2f} s; its loop and the status/latency requests; clock ticks of "
          f"{1 / os.sysconf('SC_CLK_TCK'):g} s)")


if __name__ == "__main__":
    main()
