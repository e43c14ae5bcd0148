"""The Prometheus exporter's scrape time with 500 processes' worth of series.

In-process: the daemon's collector (daemon/metrics.py) holds 500 managed processes (a
published snapshot) and, fed through observe(), each one's inference-latency histogram
(a span name) and run-queue-wait histogram; then 50 scrapes through prometheus_client's
exposition (what the HTTP thread runs) and 50 over HTTP from the daemon's own server
(daemon/exporter.py) on loopback. Also the cost of observe() per event, and how long a
scrape holds the lock observe() takes (the only wait a scrape can cause an event source).

Then a real scoped daemon (--dry-run) managing 500 real `sleep` processes, scraped 50
times over HTTP (its latency series are empty until spans are wired to it).

Run: python benchmarks/bench_metrics_scrape.py [--procs 500] [--scrapes 50]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from ainative.core.classifier import Decision
from ainative.core.engine import Managed
from ainative.daemon.exporter import MetricsServer, parse_address
from ainative.daemon.metrics import DaemonMetrics
from ainative.ipc.launcher import ScopedDaemon
from ainative.platform.base import TaskId
from ainative.telemetry.events import InferenceLatency, RunqueueLatency

CLASSES = ("inference", "batch", "training", "background")


class TimedLock:
    """A lock that records how long each holder kept it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.held: list[float] = []
        self._t = 0.0

    def __enter__(self) -> None:
        self._lock.acquire()
        self._t = time.perf_counter()

    def __exit__(self, *exc: Any) -> None:
        self.held.append(time.perf_counter() - self._t)
        self._lock.release()


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def show(what: str, secs: list[float]) -> str:
    ms = [x * 1e3 for x in secs]
    return (f"  {what}: median {statistics.median(ms):.2f} ms, p99 {pct(ms, 99):.2f} ms "
            f"(n={len(ms)})")


def timed(fn: Callable[[], Any], n: int) -> tuple[list[float], Any]:
    out: list[float] = []
    last: Any = None
    for _ in range(n):
        t0 = time.perf_counter()
        last = fn()
        out.append(time.perf_counter() - t0)
    return out, last


def in_process(procs: int, scrapes: int, events_per_proc: int) -> None:
    m = DaemonMetrics(comm_of=lambda pid: f"w{pid}")
    base = 4_000_000  # pids no real process has here: labels come from the snapshot
    managed = []
    for i in range(procs):
        ident = TaskId(base + i, 1)
        cls = CLASSES[i % len(CLASSES)]
        managed.append(Managed(ident, f"model{i}", cls, Decision(ident, f"model{i}", cls),
                               active=True))
    m.publish(managed, CLASSES, [], False)
    lock = TimedLock()
    m._lock = lock  # type: ignore[assignment]  # instrumented for this benchmark only
    inf = [InferenceLatency(time.time_ns(), base + i, base + i, "infer",
                            int(50_000 * 1.7 ** (k % 20)))
           for k in range(events_per_proc) for i in range(procs)]
    rq = [RunqueueLatency(time.time_ns(), base + i, base + i, int(2_000 * 1.9 ** (k % 16)))
          for k in range(events_per_proc) for i in range(procs)]
    t0 = time.perf_counter()
    for ev in inf:
        m.observe(ev)
    t_inf = (time.perf_counter() - t0) / len(inf)
    t0 = time.perf_counter()
    for e in rq:
        m.observe(e)
    t_rq = (time.perf_counter() - t0) / len(rq)

    address = parse_address("127.0.0.1:0")
    assert address is not None
    server = MetricsServer(address, [m.render], [])
    lock.held.clear()
    exp, body = timed(server.body, scrapes)
    held = list(lock.held)
    url = server.start().url
    gzip_request = urllib.request.Request(url, headers={"Accept-Encoding": "gzip"})
    try:
        http, _ = timed(lambda: urllib.request.urlopen(url, timeout=10).read(), scrapes)
        gz, small = timed(lambda: urllib.request.urlopen(gzip_request, timeout=10).read(),
                          scrapes)
    finally:
        server.close()
    series = body.count(b"_count{")
    print(f"exporter, in process: {procs} processes, {series} histogram series "
          f"({events_per_proc} events each), {len(body) / 1024:.0f} KiB per scrape "
          f"({len(small) / 1024:.0f} KiB gzipped)")
    print(show("scrape, rendering only (what the HTTP thread runs)", exp))
    print(show("scrape over HTTP on loopback, uncompressed", http))
    print(show("scrape over HTTP on loopback, gzip (as Prometheus asks)", gz))
    print(f"  lock held per scrape (copying counts): median "
          f"{statistics.median(held) * 1e3:.3f} ms, max {max(held) * 1e3:.3f} ms")
    print(f"  observe(): {t_inf * 1e6:.2f} us per InferenceLatency, "
          f"{t_rq * 1e6:.2f} us per RunqueueLatency")


def real_daemon(procs: int, scrapes: int) -> None:
    tmp = tempfile.mkdtemp(prefix="ainative-bench-metrics-")
    rules = '[[rule]]\nname = "bench sleepers"\ncomm = ["sleep"]\nclass = "batch"\n'
    sleepers = [subprocess.Popen(["sleep", "3600"]) for _ in range(procs)]
    d = ScopedDaemon(tmp, scope_pid=os.getpid(), cgroup_root=f"ainative-bench-{os.getpid()}",
                     rules_text=rules, extra_args=("--dry-run",),
                     metrics_address="127.0.0.1:0")
    try:
        d.start()
        url = d.metrics_url()
        assert url is not None
        end = time.monotonic() + 30
        while d.client.status()["task_count"] < procs and time.monotonic() < end:
            time.sleep(0.2)
        managed = d.client.status()["task_count"]
        time.sleep(1.0)  # a snapshot with all of them is published
        http, body = timed(lambda: urllib.request.urlopen(url, timeout=10).read(), scrapes)
        print(f"real scoped daemon (--dry-run) managing {managed} processes, "
              f"{len(body) / 1024:.0f} KiB per scrape:")
        print(show("scrape over HTTP on loopback", http))
    finally:
        d.close()
        for s in sleepers:
            s.kill()
            s.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    ap.add_argument("--procs", type=int, default=500)
    ap.add_argument("--scrapes", type=int, default=50)
    ap.add_argument("--events", type=int, default=20, help="events per process and kind")
    ap.add_argument("--no-daemon", action="store_true", help="skip the real daemon")
    args = ap.parse_args()
    in_process(args.procs, args.scrapes, args.events)
    if not args.no_daemon:
        real_daemon(args.procs, args.scrapes)


if __name__ == "__main__":
    main()
