"""The daemon's Prometheus endpoint, end to end: a real scoped daemon serving
`--metrics-address 127.0.0.1:0`, real children (an ONNX Runtime server, a busy process
named like stress-ng), scraped over HTTP and by a real Prometheus server (Debian's
`prometheus`, started here on loopback with its own storage), whose PromQL answers must
agree with `ainative status` and with what the kernel shows. Also: `off` opens no
listener, a bad address or a taken port is one line and an exit status, a stalled
scraper does not stall the policy loop, and the collector's own rules (buckets, labels
from the daemon's view, the bound on series) on real events in-process.

`prometheus_server()` and `PrometheusServer.wait_for()` are for any test that needs a
real Prometheus (the inference-latency PromQL test uses them too).
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers import (
    ONNX_CHILD,
    Children,
    DaemonProc,
    needs_root,
    nice_of,
    stress_hog,
    thread_ids,
)
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from ainative.daemon.exporter import AddressError, MetricsServer, parse_address
from ainative.daemon.gpusampler import GpuSampler
from ainative.daemon.metrics import INFERENCE_BUCKETS_S, DaemonMetrics
from ainative.gpu.metrics import GpuCollector
from ainative.gpu.report import GpuReport, GpuStatus
from ainative.telemetry.events import (
    AiTaskRegistered,
    InferenceLatency,
    PolicyApplied,
    PolicyRestored,
    RunqueueLatency,
)

PROMETHEUS = shutil.which("prometheus")
needs_prometheus = pytest.mark.skipif(
    PROMETHEUS is None, reason="Debian's prometheus is not installed (apt-get install "
    "prometheus): there is no real Prometheus server to scrape the endpoint")


# --- helpers: scrape, status, Prometheus ---

def scrape(url: str) -> list[Sample]:
    """Every sample the endpoint serves now, parsed as Prometheus would."""
    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    return [s for fam in text_string_to_metric_families(text) for s in fam.samples]


def value(samples: list[Sample], metric: str, /, **labels: str) -> float | None:
    """The one sample of ``metric`` whose labels include ``labels`` (None if none)."""
    found = [s.value for s in samples
             if s.name == metric and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) <= 1, f"{metric}{labels}: {len(found)} samples"
    return found[0] if found else None


def total(samples: list[Sample], metric: str, /, **labels: str) -> float:
    return sum(s.value for s in samples
               if s.name == metric and all(s.labels.get(k) == v for k, v in labels.items()))


def metrics_url(d: DaemonProc) -> str:
    url = d.client.status()["daemon"]["metrics"]["url"]
    assert url, "the daemon serves no metrics"
    return str(url)


def wait_until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"not within {timeout:.0f} s: {what}")
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PrometheusServer:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant PromQL query over the HTTP API: its result vector."""
        q = urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(f"{self.url}/api/v1/query?{q}", timeout=5) as r:
            body = json.load(r)
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def wait_for(self, promql: str, cond: Callable[[list[dict[str, Any]]], bool] = bool,
                 timeout: float = 30.0) -> list[dict[str, Any]]:
        """The query's result once cond(result) holds (Prometheus scrapes every second)."""
        end = time.monotonic() + timeout
        while True:
            res = self.query(promql)
            if cond(res):
                return res
            if self.proc.poll() is not None or time.monotonic() > end:
                raise AssertionError(f"{promql}: {res} (prometheus log: "
                                     f"{self.log.read_text()[-800:]})")
            time.sleep(0.25)


@contextmanager
def prometheus_server(tmp_path: Path, targets: list[str]) -> Iterator[PrometheusServer]:
    """A real Prometheus on loopback, scraping ``targets`` (host:port) every second into
    its own storage under tmp_path; stopped on exit."""
    assert PROMETHEUS is not None
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: ainative\n    scrape_interval: 1s\n"
        "    scrape_timeout: 1s\n    static_configs:\n"
        f"      - targets: [{', '.join(repr(t) for t in targets)}]\n")
    listen = f"127.0.0.1:{free_port()}"
    log = tmp_path / "prometheus.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address={listen}", "--log.level=warn"],
            stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    server = PrometheusServer(proc, f"http://{listen}", log)
    try:
        end = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{server.url}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > end:
                raise AssertionError(f"prometheus did not start: {log.read_text()[-800:]}")
            time.sleep(0.2)
        yield server
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def listeners(pid: int) -> list[int]:
    """TCP ports pid listens on (from its socket fds and /proc/net/tcp{,6})."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as fh:
            for line in list(fh)[1:]:
                f = line.split()
                if f[3] == "0A" and f[9] in inodes:  # LISTEN
                    ports.append(int(f[1].rsplit(":", 1)[1], 16))
    return ports


def run_daemon_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ainative", "daemon", "--scope-descendants", str(os.getpid()),
         "--state-dir", str(tmp_path / "state"), "--socket", str(tmp_path / "cli.sock"),
         "--rules-dir", "", "--cgroup-root", f"ainative-test-{os.getpid()}-cli", *args],
        capture_output=True, text=True, timeout=60)


# --- a real daemon, scraped ---

@needs_root
def test_scrape_agrees_with_status_and_the_kernel(
        children: Children, start_daemon: Callable[..., DaemonProc], tmp_path: Path) -> None:
    srv = children.python(ONNX_CHILD)
    hog = stress_hog(children, tmp_path)
    d = start_daemon(metrics="127.0.0.1:0")
    d.wait_task(srv.pid, cls="inference")
    d.wait_task(hog, cls="background")
    url = metrics_url(d)
    assert url.startswith("http://127.0.0.1:") and not url.endswith(":0/metrics")

    def agrees() -> bool:
        st = d.client.status()
        s = scrape(url)
        per_class: dict[str, int] = {}
        for t in st["tasks"]:
            per_class[t["class"]] = per_class.get(t["class"], 0) + 1
        return all(value(s, "ainative_ai_tasks", **{"class": c}) == per_class.get(c, 0)
                   for c in st["classes"]) and all(
            value(s, "ainative_ai_tasks_active", **{"class": c}) ==
            sum(1 for t in st["tasks"] if t["class"] == c and t["active"])
            for c in st["classes"])

    wait_until(agrees, 5, "ai_tasks per class as status counts them")
    s = scrape(url)
    # The hog has one thread: one write per knob its class sets, and the kernel shows it.
    hog_task = next(t for t in d.client.status()["tasks"] if t["pid"] == hog)
    assert len(thread_ids(hog)) == 1 and nice_of(hog, hog) == 19
    for knob in hog_task["applied"]:
        assert value(s, "ainative_policy_actions_total", action="applied", knob=knob,
                     **{"class": "background"}) == 1, knob
    # The server: a write per thread and knob, at least its threads' worth of nice.
    assert total(s, "ainative_policy_actions_total", action="applied", knob="nice",
                 **{"class": "inference"}) >= 1
    assert all(nice_of(srv.pid, t) == -10 for t in thread_ids(srv.pid))
    assert total(s, "ainative_policy_actions_total", action="restored") == 0

    rep = d.client.request("restore")  # root: undo everything, pause
    assert nice_of(hog, hog) == 0
    wait_until(lambda: value(scrape(url), "ainative_daemon_paused") == 1, 5, "paused")
    s = scrape(url)
    assert total(s, "ainative_policy_actions_total", action="restored") == rep["undone"] > 0
    assert total(s, "ainative_policy_actions_total", action="inherited") == rep["inherited"]
    assert total(s, "ainative_ai_tasks_active") == 0
    wait_until(lambda: (value(scrape(url), "ainative_daemon_reconcile_seconds_count") or 0)
               >= 1, 5, "a reconcile pass timed")
    assert (value(s, "ainative_daemon_events_total", source="daemon") or 0) > 0
    assert value(s, "ainative_gpu_available") is not None  # the GPU collector is there


@needs_root
def test_a_manual_change_is_counted_as_an_override(
        children: Children, start_daemon: Callable[..., DaemonProc], tmp_path: Path) -> None:
    hog = stress_hog(children, tmp_path)
    d = start_daemon(metrics="127.0.0.1:0")
    d.wait_task(hog, cls="background")
    url = metrics_url(d)
    os.setpriority(os.PRIO_PROCESS, hog, 5)  # a person renices it
    wait_until(lambda: "nice" in next(t for t in d.client.status()["tasks"]
                                      if t["pid"] == hog)["overridden"], 5, "override seen")
    wait_until(lambda: value(scrape(url), "ainative_policy_actions_total", action="override",
                             knob="nice", **{"class": "background"}) == 1, 5, "override counted")
    assert d.stop() == 0
    assert nice_of(hog, hog) == 5  # the person's value stays


@needs_root
@needs_prometheus
def test_a_real_prometheus_scrapes_the_daemon_and_promql_answers(
        children: Children, start_daemon: Callable[..., DaemonProc], tmp_path: Path) -> None:
    hog = stress_hog(children, tmp_path)
    d = start_daemon(metrics="127.0.0.1:0")
    d.wait_task(hog, cls="background")
    address = d.client.status()["daemon"]["metrics"]["address"]
    with prometheus_server(tmp_path, [address]) as prom:
        prom.wait_for('up{job="ainative"} == 1')
        res = prom.wait_for('ainative_ai_tasks{class="background"}',
                            lambda r: bool(r) and r[0]["value"][1] == "1")
        assert res[0]["metric"]["instance"] == address
        applied = prom.wait_for(
            'sum by (knob) (ainative_policy_actions_total{action="applied",'
            'class="background"})')
        scraped = scrape(metrics_url(d))
        assert {r["metric"]["knob"]: float(r["value"][1]) for r in applied} == {
            s.labels["knob"]: s.value for s in scraped
            if s.name == "ainative_policy_actions_total" and s.labels["action"] == "applied"
            and s.labels["class"] == "background"}
        assert nice_of(hog, hog) == 19
        assert prom.wait_for("ainative_daemon_reconcile_seconds_count > 0")


# --- off, bad addresses, a taken port ---

@needs_root
def test_metrics_off_opens_no_listener_and_on_opens_exactly_one(
        start_daemon: Callable[..., DaemonProc]) -> None:
    off = start_daemon(metrics="off")
    assert off.client.status()["daemon"]["metrics"] == {
        "address": None, "url": None, "loopback": None, "refused": 0}
    assert listeners(off.proc.pid) == []
    on = start_daemon(metrics="127.0.0.1:0", state="state-on")
    port = int(on.client.status()["daemon"]["metrics"]["address"].rsplit(":", 1)[1])
    assert listeners(on.proc.pid) == [port]


@pytest.mark.parametrize(("address", "says"), [
    ("9464", "no host and port"),
    (":9464", "no host"),
    ("127.0.0.1:http", "the port must be a number"),
    ("127.0.0.1:70000", "the port must be a number"),
    ("::1:9464", "in brackets"),
    ("no-such-host.invalid:9464", "cannot resolve"),
])
def test_a_bad_address_is_one_line_naming_the_option_and_the_fix(
        tmp_path: Path, address: str, says: str) -> None:
    r = run_daemon_cli(tmp_path, "--metrics-address", address)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: --metrics-address "), r.stderr
    assert says in lines[0]
    assert not (tmp_path / "state").exists()  # refused before anything started


@needs_root
def test_a_taken_port_stops_the_start_with_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = run_daemon_cli(tmp_path, "--metrics-address", f"127.0.0.1:{port}")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last == (f"Error: --metrics-address 127.0.0.1:{port}: the port is already in use "
                    "(another exporter or ainative daemon listens there); choose a free port "
                    "with --metrics-address HOST:PORT, or --metrics-address off")
    assert not (tmp_path / "cli.sock").exists()


def test_parse_address_forms() -> None:
    assert parse_address("off") is None and parse_address(" OFF ") is None
    a = parse_address("127.0.0.1:9464")
    assert a is not None and a.loopback and str(a) == "127.0.0.1:9464"
    v6 = parse_address("[::1]:0")
    assert v6 is not None and v6.loopback and v6.url == "http://[::1]:0/metrics"
    lo = parse_address("localhost:9464")
    assert lo is not None and lo.loopback
    anyif = parse_address("0.0.0.0:9464")
    assert anyif is not None and not anyif.loopback
    with pytest.raises(AddressError, match="--metrics-address"):
        parse_address("")


# --- a stalled scraper ---

@needs_root
def test_stalled_scrapers_never_stall_the_policy_loop(
        children: Children, start_daemon: Callable[..., DaemonProc], tmp_path: Path) -> None:
    d = start_daemon(metrics="127.0.0.1:0")
    host, port = d.client.status()["daemon"]["metrics"]["address"].rsplit(":", 1)
    stalled = []
    try:
        for _ in range(12):  # more than the exporter serves at once, each sending half a line
            s = socket.create_connection((host, int(port)))
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x")
            stalled.append(s)
        hog = stress_hog(children, tmp_path)
        d.wait_task(hog, cls="background")  # the loop still classifies and applies
        assert nice_of(hog, hog) == 19
        waits = []
        for _ in range(20):  # and answers its socket as fast as ever (about 1 ms here)
            t0 = time.monotonic()
            d.client.status()
            waits.append(time.monotonic() - t0)
        assert max(waits) < 1.0, waits
        wait_until(lambda: d.client.status()["daemon"]["metrics"]["refused"] >= 4, 5,
                   "connections over the limit refused")
    finally:
        for s in stalled:
            s.close()
    # Once they go, scrapes are answered again (until the exporter has seen them close, a
    # new connection may still be one over the limit and closed: that is a "not yet").
    def answered() -> bool:
        try:
            text = scrape(metrics_url(d))
        except (OSError, http.client.HTTPException):
            return False
        return value(text, "ainative_ai_tasks", **{"class": "background"}) == 1

    wait_until(answered, 15, "scrape answered")


# --- the collector on real events, in-process ---

def spans(m: DaemonMetrics, pid: int, *durations_s: float, name: str = "infer") -> None:
    for dur in durations_s:
        m.observe(InferenceLatency(time.time_ns(), pid, pid, name, int(dur * 1e9)))


def collected(m: DaemonMetrics) -> list[Sample]:
    return [s for fam in text_string_to_metric_families(m.render().decode())
            for s in fam.samples]


def test_inference_buckets_and_labels_come_from_the_daemons_view() -> None:
    m = DaemonMetrics(comm_of=lambda pid: f"proc{pid}")
    spans(m, 10, 40e-6, 1e-3, 20.0)  # not managed: class none, comm read once
    s = collected(m)
    labels = {"pid": "10", "comm": "proc10", "class": "none", "name": "infer"}
    assert value(s, "ainative_inference_latency_seconds_bucket", le="5e-05", **labels) == 1
    assert value(s, "ainative_inference_latency_seconds_bucket", le="0.001", **labels) == 2
    assert value(s, "ainative_inference_latency_seconds_bucket", le="10.0", **labels) == 2
    assert value(s, "ainative_inference_latency_seconds_bucket", le="+Inf", **labels) == 3
    assert value(s, "ainative_inference_latency_seconds_count", **labels) == 3
    assert value(s, "ainative_inference_latency_seconds_sum", **labels) == pytest.approx(
        20.00104)
    assert INFERENCE_BUCKETS_S[0] == 50e-6 and INFERENCE_BUCKETS_S[-1] == 10.0


def test_series_are_bounded_evicted_oldest_first_and_dropped_on_exit() -> None:
    m = DaemonMetrics(max_pids=3, max_series_per_pid=2, comm_of=lambda pid: "p")
    for pid in (1, 2, 3):
        spans(m, pid, 0.01)
    spans(m, 1, 0.01)  # pid 1 seen again: pid 2 is now the oldest
    spans(m, 4, 0.01)
    pids = {x.labels["pid"] for x in collected(m)
            if x.name == "ainative_inference_latency_seconds_count"}
    assert pids == {"1", "3", "4"}
    assert value(collected(m), "ainative_metrics_processes_evicted_total") == 1
    for name in ("a", "b", "c", "d"):  # more names than a process may have series
        spans(m, 3, 0.01, name=name)
    names = {x.labels["name"]: x.value for x in collected(m) if x.labels.get("pid") == "3"
             and x.name == "ainative_inference_latency_seconds_count"}
    assert names == {"infer": 1, "a": 1, "other": 3}  # two names, then the rest together
    m.forget_pid(3)
    assert not [x for x in collected(m) if x.labels.get("pid") == "3"]


def test_runqueue_waits_per_wakeup_go_to_the_histogram_schedstat_sums_to_a_counter() -> None:
    m = DaemonMetrics(comm_of=lambda pid: "w")
    m.observe(RunqueueLatency(1, 7, 8, 30_000))  # 30 us, eBPF
    m.observe(RunqueueLatency(1, 7, 7, 2_000_000, source="schedstat"))
    s = collected(m)
    assert value(s, "ainative_runqueue_wait_seconds_count", pid="7") == 1
    assert value(s, "ainative_runqueue_wait_seconds_bucket", pid="7", le="5e-05") == 1
    assert value(s, "ainative_runqueue_schedstat_wait_seconds_total", pid="7") == 0.002
    assert value(s, "ainative_daemon_events_total", source="ebpf") == 1
    assert value(s, "ainative_daemon_events_total", source="schedstat") == 1


def test_policy_counters_take_the_class_from_the_daemons_events_not_forged_labels() -> None:
    m = DaemonMetrics()
    m.observe(AiTaskRegistered(1, 5, 5, "background", "stress-ng"))
    m.observe(PolicyApplied(1, 5, 5, "nice", "0", "19", "background"))
    m.observe(PolicyRestored(1, 5, 5, "nice", "0", "lifted: no serving process is busy"))
    m.observe(PolicyRestored(1, 6, 6, "nice", "0", "inherited: from managed parent 5"))
    m.observe(PolicyApplied(1, 5, 5, "no-such-knob", "0", "1", "background"))
    s = collected(m)
    assert value(s, "ainative_policy_actions_total", action="lifted", knob="nice",
                 **{"class": "background"}) == 1
    assert value(s, "ainative_policy_actions_total", action="inherited", knob="nice",
                 **{"class": "none"}) == 1
    assert value(s, "ainative_policy_actions_total", action="applied", knob="other",
                 **{"class": "background"}) == 1


def test_gpu_families_are_served_from_the_samplers_cached_report() -> None:
    """NVML at its boundary: a reader that counts its calls. Scrapes read the sampler's
    report; only a stale one (the sampler stalled) makes a scrape read the GPUs itself."""
    calls: list[float] = []
    now = [100.0]

    def reader() -> GpuReport:
        calls.append(now[0])
        return GpuReport(True, "driver 580", [GpuStatus(
            0, "NVIDIA H100 80GB HBM3", "GPU-1", utilization_gpu=97.0, memory_used=2 << 30,
            memory_total=80 << 30, memory_free=78 << 30)], "580")

    sampler = GpuSampler(reader, interval_s=5.0, clock=lambda: now[0])
    sampler.sample()  # what the sampler thread does every interval
    address = parse_address("127.0.0.1:0")
    assert address is not None
    server = MetricsServer(address, [], [GpuCollector(reader=sampler.latest, hostname="h")])
    url = server.start().url
    try:
        for _ in range(3):
            s = scrape(url)
        assert len(calls) == 1
        dcgm = {"gpu": "0", "UUID": "GPU-1", "device": "nvidia0",
                "modelName": "NVIDIA H100 80GB HBM3", "Hostname": "h"}
        assert value(s, "DCGM_FI_DEV_GPU_UTIL", **dcgm) == 97
        assert value(s, "DCGM_FI_DEV_FB_USED", **dcgm) == 2048  # MiB, as DCGM writes it
        assert value(s, "ainative_gpu_available") == 1
        now[0] += 11  # two intervals without a sample
        scrape(url)
        assert len(calls) == 2
    finally:
        server.close()
    events = sampler.drain()
    assert [(e.gpu, e.utilization_gpu, e.memory_used, e.memory_total) for e in events] == [
        (0, 97.0, 2 << 30, 80 << 30)]
    assert sampler.drain() == []  # one event per GPU per sample
