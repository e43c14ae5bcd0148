"""The daemon's own work while it protects a serving process: what it costs and how it
grows with what happens on the machine (issue 9, "where the tail comes from").

A real daemon (built-in rules, scoped to this benchmark's children) and a real ONNX
Runtime server on a Unix socket, kept busy by a client thread in this process at
--rate requests/s. Measured from the daemon's /proc/PID/stat CPU time:

  1. protecting the busy server on a quiet machine (the activity tick, the loop's
     schedstat reads, reconcile passes): percent of one core; target < 1 %;
  2. the same with 4 busy shell loops no rule knows (the loop engaged: its once-a-second
     pass over /proc and the imposer's catch-up): percent of one core;
  3. an exec storm: --execs short programs started one after another; CPU per exec event;
  4. reconcile passes: their mean and max duration from the daemon's own histogram
     (`ainative status --json` -> daemon.metrics is not needed: the log's reconcile events
     are not timed, so the figure comes from the Prometheus endpoint).

    sudo .venv/bin/python benchmarks/bench_daemon_work.py [--seconds 20] [--rate 500]
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request

from _daemon import BenchDaemon

SERVER = textwrap.dedent("""
    import os, socket, sys, threading, numpy as np, onnxruntime as ort
    from onnx import helper, TensorProto, numpy_helper
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((256, 256)).astype(np.float32), "w")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [16, 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [16, 256])], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    so = ort.SessionOptions(); so.intra_op_num_threads = 1
    s = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    x = rng.standard_normal((16, 256)).astype(np.float32)
    ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    ls.bind(sys.argv[1]); ls.listen(4)
    print("ready", flush=True)
    c, _ = ls.accept(); f = c.makefile("rwb")
    for line in f:
        s.run(None, {"x": x}); f.write(b"ok\\n"); f.flush()
""")


def load(path: str, rate: float, stop: threading.Event) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(path)
        f = s.makefile("rwb")
        nxt = time.monotonic()
        while not stop.is_set():
            f.write(b"r\n")
            f.flush()
            f.readline()
            nxt += 1 / rate
            time.sleep(max(0.0, nxt - time.monotonic()))


def cpu_percent(d: BenchDaemon, seconds: float) -> float:
    c0, t0 = d.cpu_seconds(), time.monotonic()
    time.sleep(seconds)
    return 100.0 * (d.cpu_seconds() - c0) / (time.monotonic() - t0)


def reconcile_figures(url: str) -> tuple[float, float, float]:
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    total = float(re.search(r"^ainative_daemon_reconcile_seconds_sum (\S+)$", text, re.M)[1])
    count = float(re.search(r"^ainative_daemon_reconcile_seconds_count (\S+)$", text, re.M)[1])
    buckets = re.findall(r'^ainative_daemon_reconcile_seconds_bucket\{le="([^"]+)"\} (\S+)$',
                         text, re.M)
    # The smallest bucket that holds every pass: an upper bound of the slowest.
    top = next((float(le) for le, n in buckets if float(n) >= count and le != "+Inf"),
               float("inf"))
    return count, total / count if count else 0.0, top


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--rate", type=float, default=500.0)
    ap.add_argument("--execs", type=int, default=500)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (the daemon changes priorities)")
    sock = f"/tmp/ainative-bench-work-{os.getpid()}.sock"
    srv = subprocess.Popen([sys.executable, "-c", SERVER, sock], stdout=subprocess.PIPE,
                           text=True)
    hogs: list[subprocess.Popen[bytes]] = []
    stop = threading.Event()
    d = None
    try:
        assert srv.stdout is not None and srv.stdout.readline().strip() == "ready"
        d = BenchDaemon("--metrics-address", "127.0.0.1:0", scope_pid=os.getpid())
        url = d.daemon.client.status()["daemon"]["metrics"]["url"]
        t = threading.Thread(target=load, args=(sock, args.rate, stop), daemon=True)
        t.start()
        time.sleep(3)  # classified, busy, boost applied
        quiet = cpu_percent(d, args.seconds)
        g = d.daemon.client.status()["guard"]
        print(f"protecting one busy server ({args.rate:.0f} req/s), quiet machine: daemon "
              f"{quiet:.2f} % of one core (target < 1 %); guard step {g['step']}, wait "
              f"ratio {g['wait_ratio']}")
        hogs = [subprocess.Popen(["/bin/sh", "-c", "while :; do :; done"]) for _ in range(4)]
        time.sleep(5)  # the loop climbs
        engaged = cpu_percent(d, args.seconds)
        g = d.daemon.client.status()["guard"]
        print(f"same, 4 busy loops no rule knows: daemon {engaged:.2f} % of one core; guard "
              f"step {g['step']} ({g['step_name']}), {len(g['contenders'])} demoted, wait "
              f"ratio {g['wait_ratio']}")
        for h in hogs:
            h.kill()
            h.wait()
        hogs = []
        time.sleep(2)
        c0 = d.cpu_seconds()
        t0 = time.monotonic()
        for _ in range(args.execs):
            subprocess.run(["/bin/true"], check=True)
        span = time.monotonic() - t0
        time.sleep(1)  # the daemon catches up with the last events
        per = (d.cpu_seconds() - c0) / args.execs
        print(f"exec storm: {args.execs} execs in {span:.1f} s: daemon {per * 1e6:.0f} us of "
              f"CPU per exec (10 ms clock ticks: +-{10e3 / args.execs:.0f} us)")
        n, mean, top = reconcile_figures(url)
        print(f"reconcile passes: {n:.0f}, mean {mean * 1e6:.0f} us, all <= {top * 1e3:g} ms")
    finally:
        stop.set()
        for h in hogs:
            h.kill()
            h.wait()
        if d is not None:
            d.stop()
        srv.kill()
        srv.wait()
        try:
            os.unlink(sock)
        except OSError:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
