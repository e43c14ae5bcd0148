"""The daemon's telemetry wiring, end to end: spans from a real traced ONNX Runtime
process arrive on the daemon's events socket, become its inference-latency histogram (read
by a real Prometheus with PromQL), and are kept with the policy events in the event store
in the state dir; a forged span is rejected and counted in status; with the run-queue
source on, the traced process's run-queue waits under CPU contention are exported too.
Also: the start-up refusals of the events socket and the store (one line each, naming the
option or file and the fix).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers import Children, DaemonProc, needs_root
from test_daemon_metrics import (
    needs_prometheus,
    prometheus_server,
    run_daemon_cli,
    scrape,
    stress_hog,
    total,
    wait_until,
)

from ainative.telemetry.events import InferenceLatency
from ainative.telemetry.store import DEFAULT_STORE_NAME, EventStore

TELEMETRY_TESTS = Path(__file__).resolve().parent.parent / "telemetry"

# A traced model server: traced_child.py's ONNX Runtime session under traced_session,
# driven over stdin: "run N" runs N requests, flushes and prints the span stats; "busy S"
# runs requests for S seconds; "forge" sends one span that claims its parent's pid.
TRACED_SERVER = textwrap.dedent("""
    import json, os, socket, sys, time
    sys.path.insert(0, sys.argv[1])
    import numpy as np
    from traced_child import session
    from ainative.telemetry import events
    from ainative.telemetry.events import InferenceLatency
    from ainative.telemetry.span import flush, stats, traced_session
    s = traced_session(session())
    x = np.ones((8, 256), np.float32)
    print("ready", flush=True)
    def report():
        flush(5.0)
        st = stats()
        print(json.dumps({"sent": st.sent, "recorded": st.recorded, "dropped": st.dropped,
                          "path": st.path}), flush=True)
    for line in sys.stdin:
        cmd, arg = (line.split() + [""])[:2]
        if cmd == "run":
            for i in range(int(arg)):
                s.run(None, {"x": x}, request=f"r{i}")
            report()
        elif cmd == "busy":
            end = time.monotonic() + float(arg)
            while time.monotonic() < end:
                s.run(None, {"x": x}); time.sleep(0.001)
            report()
        elif cmd == "forge":
            ev = InferenceLatency(ts_ns=time.time_ns(), pid=os.getppid(), tid=os.getppid(),
                                  name="forged", duration_ns=1000)
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as c:
                c.sendto(events.encode(ev), os.environ["AINATIVE_EVENTS"])
            print("sent", flush=True)
""")


def traced_server(children: Children, events_socket: str) -> subprocess.Popen[str]:
    return children.python(TRACED_SERVER, str(TELEMETRY_TESTS),
                           env={"AINATIVE_EVENTS": events_socket})


def ask(p: subprocess.Popen[str], line: str) -> Any:
    assert p.stdin is not None and p.stdout is not None
    p.stdin.write(line + "\n")
    p.stdin.flush()
    out = p.stdout.readline()
    return json.loads(out) if out.startswith("{") else out.strip()


def telemetry(d: DaemonProc) -> dict[str, Any]:
    t: dict[str, Any] = d.client.status()["daemon"]["telemetry"]
    return t


def span_count(url: str, pid: int) -> float:
    return total(scrape(url), "ainative_inference_latency_seconds_count", pid=str(pid))


@needs_root
@needs_prometheus
def test_spans_reach_metrics_prometheus_and_the_store_and_forgeries_are_counted(
        children: Children, start_daemon: Callable[..., DaemonProc], tmp_path: Path) -> None:
    hog = stress_hog(children, tmp_path)  # background: a policy action to store
    d = start_daemon(metrics="127.0.0.1:0")
    st = d.client.status()["daemon"]
    sock = st["telemetry"]["events_socket"]["path"]
    assert sock and os.path.exists(sock) and (os.stat(sock).st_mode & 0o777) == 0o666
    assert st["telemetry"]["store"]["path"] == os.path.join(d.state_dir, DEFAULT_STORE_NAME)
    url, address = st["metrics"]["url"], st["metrics"]["address"]
    srv = traced_server(children, sock)
    d.wait_task(hog, cls="background")

    with prometheus_server(tmp_path, [address]) as prom:
        sent = ask(srv, "run 200")
        assert sent["path"] == sock and sent["dropped"] == 0 and sent["sent"] == 200, sent
        # (a) every span the child sent is in its histogram, under its pid.
        wait_until(lambda: span_count(url, srv.pid) == sent["sent"], 10,
                   f"{sent['sent']} spans of pid {srv.pid} in /metrics")
        buckets = [s for s in scrape(url)
                   if s.name == "ainative_inference_latency_seconds_bucket"
                   and s.labels["pid"] == str(srv.pid) and s.labels["le"] == "+Inf"]
        assert sum(s.value for s in buckets) == sent["sent"]
        # (b) a real Prometheus has it, and PromQL answers for that process.
        res = prom.wait_for(f'ainative_inference_latency_seconds_count{{pid="{srv.pid}"}}',
                            lambda r: bool(r) and float(r[0]["value"][1]) == sent["sent"])
        assert res[0]["metric"]["instance"] == address
        p99 = prom.wait_for(
            "histogram_quantile(0.99, sum by (le) (ainative_inference_latency_seconds_bucket"
            f'{{pid="{srv.pid}"}}))', lambda r: bool(r) and r[0]["value"][1] != "NaN")
        assert 0 < float(p99[0]["value"][1]) < 10

    # (d) a span claiming another pid is rejected, counted by reason, and not exported.
    assert ask(srv, "forge") == "sent"
    wait_until(lambda: telemetry(d)["events_socket"]["rejected_by_reason"].get(
        "pid_mismatch") == 1, 5, "the forged span counted as pid_mismatch")
    ev = telemetry(d)["events_socket"]
    assert ev["accepted"] == sent["sent"] and f"sent by pid {srv.pid}" in ev["last_rejection"]
    assert span_count(url, os.getpid()) == 0

    # (c) after the stop: the spans and the policy events are in the store.
    assert d.stop() == 0
    assert not os.path.exists(sock)  # the daemon removed its socket
    with EventStore(os.path.join(d.state_dir, DEFAULT_STORE_NAME), readonly=True) as store:
        counts = store.counts()
        spans = list(store.query(types=["inference_latency"], pid=srv.pid))
        restored = list(store.query(types=["policy_restored"], pid=hog))
    assert len(spans) == sent["sent"], counts
    assert all(isinstance(e, InferenceLatency) and e.pid == srv.pid for e in spans)
    assert counts.get("policy_applied", 0) >= 1 and counts.get("ai_task_registered", 0) >= 2
    assert restored, counts  # the stop's own restores were flushed before the store closed


@needs_root
def test_runqueue_waits_of_the_traced_process_under_contention(
        children: Children, start_daemon: Callable[..., DaemonProc], tmp_path: Path) -> None:
    d = start_daemon("--runqueue", "auto", metrics="127.0.0.1:0")
    wait_until(lambda: telemetry(d)["runqueue"]["kind"] != "starting", 20,
               "the run-queue source started")
    rq = telemetry(d)["runqueue"]
    if rq["kind"] != "ebpf":
        pytest.skip(f"the eBPF run-queue source is not available here: {rq['why']}")
    srv = traced_server(children, telemetry(d)["events_socket"]["path"])
    for _ in range(2):
        children.python("print('ready', flush=True)\nwhile True: pass")
    d.wait_task(srv.pid, cls="batch")
    wait_until(lambda: telemetry(d)["runqueue"]["watched"] >= 1, 5, "the traced pid watched")
    url = d.client.status()["daemon"]["metrics"]["url"]
    time.sleep(0.6)  # the source's next refresh writes the pid into the kernel's map
    sent = ask(srv, "busy 2")
    assert sent["sent"] > 0, sent
    wait_until(lambda: total(scrape(url), "ainative_runqueue_wait_seconds_count",
                             pid=str(srv.pid)) > 0, 5, "run-queue waits of the traced pid")
    assert telemetry(d)["runqueue"]["events"] > 0
    assert span_count(url, srv.pid) == sent["sent"]
    assert d.stop() == 0
    with EventStore(os.path.join(d.state_dir, DEFAULT_STORE_NAME), readonly=True) as store:
        waits = list(store.query(types=["runqueue_latency"], pid=srv.pid))
    assert waits and all(w.pid == srv.pid for w in waits)


# --- refusals at start-up ---

def error_line(r: subprocess.CompletedProcess[str]) -> str:
    """The one line a refused start ends with (the log lines before it are JSON)."""
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: "), r.stderr
    return last


@needs_root
def test_a_taken_events_socket_and_an_unsafe_store_stop_the_start_with_one_line(
        tmp_path: Path) -> None:
    # Another receiver on the path (the default: events.sock beside the control socket).
    other = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    other.bind(str(tmp_path / "events.sock"))
    try:
        r = run_daemon_cli(tmp_path, "--metrics-address", "off")
    finally:
        other.close()
    last = error_line(r)
    assert "--events-socket" in last and "already receiving" in last, r.stderr

    # events.db a symlink in the state dir: refused, the target untouched.
    os.unlink(tmp_path / "events.sock")
    state = tmp_path / "state"
    state.mkdir(mode=0o700, exist_ok=True)
    target = tmp_path / "target"
    target.write_text("not yours")
    (state / DEFAULT_STORE_NAME).unlink(missing_ok=True)  # the refused start's, empty
    (state / DEFAULT_STORE_NAME).symlink_to(target)
    last = error_line(run_daemon_cli(tmp_path, "--metrics-address", "off",
                                     "--events-socket", "off"))
    assert "event store" in last and "symbolic link" in last, last
    assert target.read_text() == "not yours"

    # events.db of another owner: refused too.
    (state / DEFAULT_STORE_NAME).unlink()
    (state / DEFAULT_STORE_NAME).write_bytes(b"")
    os.chown(state / DEFAULT_STORE_NAME, 65534, 65534)
    last = error_line(run_daemon_cli(tmp_path, "--metrics-address", "off",
                                     "--events-socket", "off"))
    assert "event store" in last and "owned by" in last, last

