"""`ainative demo`: the daemon, scoped to a real model server it launches.

It shows, on this machine, in a few seconds: an ONNX Runtime model server (listening on a
Unix socket, answering a steady stream of requests from a separate load client: the
stress test's own pair, stress/runner.py) found by the daemon on its own, the knobs
applied to every thread of the server (its I/O priority: the CPU is protected by
demoting others), and every value back as it was on stop.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from typing import Any

from ainative.core.classes import format_ioprio
from ainative.core.knobs import describe
from ainative.ipc.client import Client, DaemonError
from ainative.ipc.launcher import LaunchError, ScopedDaemon
from ainative.platform.backend import Backend

# Requests per second: the 4-layer MLP at this rate keeps the server busy (a few percent
# of a CPU, above the daemon's activity threshold) and leaves the machine alone.
RATE = 200.0


def _priorities(backend: Backend, pid: int) -> dict[int, str]:
    """Each thread's CPU and I/O priority and its EEVDF slice as ainative's backend reads
    them: the inference class raises the I/O priority and shortens the slice; background
    work is what it demotes for the CPU."""
    out: dict[int, str] = {}
    for tid in sorted(int(t) for t in os.listdir(f"/proc/{pid}/task")):
        try:
            nice, io = backend.get_knob(tid, "nice"), backend.get_knob(tid, "ioprio")
            line = f"nice {nice}, io {format_ioprio(io)}"
            if "slice" not in backend.missing_knobs():
                line += f", slice {describe('slice', backend.get_knob(tid, 'slice'))}"
        except OSError:  # a thread that ended meanwhile
            continue
        out[tid] = line
    return out


def _wait_for(cl: Client, pid: int, timeout: float) -> dict[str, Any] | None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            st = cl.status()
        except DaemonError:
            time.sleep(0.1)
            continue
        for t in st["tasks"]:
            if t["pid"] == pid and t["active"]:
                return st
        time.sleep(0.1)
    return None


def run_demo(seconds: float) -> int:
    if os.geteuid() != 0:
        print("ainative demo changes priorities and cgroups: run it as root (sudo).",
              file=sys.stderr)
        return 2
    from ainative.platform import get_platform
    from ainative.stress import models
    from ainative.stress.config import WorkloadConfig
    from ainative.stress.runner import Workload, WorkloadError

    backend = get_platform(cgroup_root=f"ainative-demo-{os.getpid()}").backend  # to read
    tmp = tempfile.mkdtemp(prefix="ainative-demo-")
    cfg = WorkloadConfig(models.materialise("mlp", tmp), "mlp", rate=RATE,
                         duration=seconds + 20, batch=8, threads=2, warmup_s=0.5)
    pair = Workload(cfg, tmp)
    daemon = ScopedDaemon(tmp, scope_pid=os.getpid(), log_format="text",
                          cgroup_root=f"ainative-demo-{os.getpid()}")
    try:
        try:
            pair.wait_ready()
        except WorkloadError as e:
            print(f"ainative demo: {e}", file=sys.stderr)
            return 1
        pair.go()
        pid = pair.server_pid
        before = _priorities(backend, pid)
        print(f"launched an ONNX Runtime model server: pid {pid}, listening on "
              f"{pair.socket}, {len(before)} threads, {sorted(set(before.values()))}; "
              f"a load client (pid {pair.client_pid}) sends it {RATE:.0f} requests/s")
        try:
            daemon.start()
        except LaunchError as e:
            print(f"ainative demo: {e}", file=sys.stderr)
            return 1
        cl = daemon.client
        st = _wait_for(cl, pid, 15)
        if st is None:
            print("the daemon did not classify the server in 15 s; log:", file=sys.stderr)
            print(open(daemon.log_path).read(), file=sys.stderr)
            return 1
        from ainative.cli.views import render_explain, render_status

        render_status(st)
        render_explain({k: v for k, v in cl.explain(pid).items() if k != "ok"})
        during = _priorities(backend, pid)
        print(f"every server thread while managed: {sorted(set(during.values()))}")
        time.sleep(seconds)
        daemon.stop()
        after = _priorities(backend, pid)
        same = all(after.get(t) == v for t, v in before.items() if t in after)
        print(f"daemon stopped; every server thread now: "
              f"{sorted(set(after.values()))} ({'restored' if same else 'NOT restored'})")
        print(f"daemon log: {daemon.log_path}")
        return 0 if same else 1
    finally:
        daemon.close()
        pair.close()  # tmp stays: it holds the daemon's log, printed above


if __name__ == "__main__":
    sys.exit(run_demo(float(sys.argv[1]) if len(sys.argv) > 1 else 4.0))
