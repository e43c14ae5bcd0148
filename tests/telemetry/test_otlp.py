"""OtlpSink against a real OTLP/HTTP receiver on loopback.

The OpenTelemetry Collector is not packaged in Debian, so the receiver is a small
http.server that accepts POST /v1/traces and /v1/metrics and decodes the bodies with the
official protobuf classes (opentelemetry-proto), as a collector would.
"""

from __future__ import annotations

import gzip
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk")
pytest.importorskip("opentelemetry.exporter.otlp.proto.http")

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from ainative.telemetry.events import (
    AiTaskRegistered,
    InferenceLatency,
    PolicyApplied,
    PolicyRestored,
    RanInstead,
    RunqueueLatency,
)
from ainative.telemetry.otlp import (
    MISSING_EXTRA,
    OtlpSink,
    operation_and_model,
)


class Receiver:
    """Records every decoded OTLP/HTTP request it is sent."""

    def __init__(self) -> None:
        self.traces: list[ExportTraceServiceRequest] = []
        self.metrics: list[ExportMetricsServiceRequest] = []
        self.bad: list[str] = []
        self.lock = threading.Lock()
        rec = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.headers.get("Content-Type") != "application/x-protobuf":
                    rec.bad.append(f"content-type {self.headers.get('Content-Type')}")
                if self.path == "/v1/traces":
                    req: Any = ExportTraceServiceRequest.FromString(body)
                    resp: Any = ExportTraceServiceResponse()
                    with rec.lock:
                        rec.traces.append(req)
                elif self.path == "/v1/metrics":
                    req = ExportMetricsServiceRequest.FromString(body)
                    resp = ExportMetricsServiceResponse()
                    with rec.lock:
                        rec.metrics.append(req)
                else:
                    rec.bad.append(f"path {self.path}")
                    self.send_response(404)
                    self.end_headers()
                    return
                out = resp.SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def spans(self) -> list[tuple[dict[str, Any], Span]]:
        """(resource attributes, span) for every span received."""
        out: list[tuple[dict[str, Any], Span]] = []
        for req in self.traces:
            for rs in req.resource_spans:
                res = attrs(rs.resource.attributes)
                for ss in rs.scope_spans:
                    out.extend((res, s) for s in ss.spans)
        return out

    def metric(self, name: str) -> list[tuple[dict[str, Any], Any]]:
        out: list[tuple[dict[str, Any], Any]] = []
        for req in self.metrics:
            for rm in req.resource_metrics:
                res = attrs(rm.resource.attributes)
                for sm in rm.scope_metrics:
                    out.extend((res, m) for m in sm.metrics if m.name == name)
        return out

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [value(x) for x in v.array_value.values]
    return getattr(v, kind)


def attrs(kvs: Any) -> dict[str, Any]:
    return {kv.key: value(kv.value) for kv in kvs}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def test_operation_and_model() -> None:
    assert operation_and_model("infer") == ("infer", None)
    assert operation_and_model("chat llama-3-8b") == ("chat", "llama-3-8b")
    assert operation_and_model("resnet50 ") == ("resnet50", None)
    assert operation_and_model("") == ("inference", None)


def test_events_arrive_as_spans_and_metrics(receiver: Receiver) -> None:
    sink = OtlpSink(receiver.endpoint, service_name="ainative-test",
                    resource_attrs={"host.name": "testhost"})
    now = time.time_ns()
    pid, tid = os.getpid(), threading.get_native_id()
    inf1 = InferenceLatency(ts_ns=now, pid=pid, tid=tid, name="chat llama-3-8b",
                            duration_ns=12_345_678, request="req-812",
                            runqueue_wait_ns=9_000_000,
                            ran_instead=(RanInstead(4411, "stress-ng", 8_000_000),))
    inf2 = InferenceLatency(ts_ns=now + 50_000_000, pid=pid, tid=tid, name="infer",
                            duration_ns=3_000_001)
    rq = RunqueueLatency(ts_ns=now + 1, pid=pid, tid=tid, wait_ns=250_000, cpu=1)
    pa = PolicyApplied(ts_ns=now + 2, pid=pid, tid=tid, knob="nice", old="0", new="-5",
                       cls="inference")
    pr = PolicyRestored(ts_ns=now + 3, pid=pid, tid=tid, knob="nice", value="0",
                        why="restored: stop")
    reg = AiTaskRegistered(ts_ns=now + 4, pid=pid, tid=pid, cls="inference",
                           comm="python3", signals=("onnxruntime",))
    for ev in (inf1, inf2, rq, pa, pr, reg):
        sink.emit(ev)
    assert sink.close(timeout_s=10.0)
    assert receiver.bad == []

    spans = {s.name: (res, s) for res, s in receiver.spans()}
    assert set(spans) == {"chat llama-3-8b", "infer", "ainative.policy_applied",
                          "ainative.policy_restored", "ainative.ai_task_registered"}
    res, s = spans["chat llama-3-8b"]
    assert res["service.name"] == "ainative-test"
    assert res["host.name"] == "testhost"
    assert s.kind == Span.SPAN_KIND_SERVER
    assert s.start_time_unix_nano == now - 12_345_678
    assert s.end_time_unix_nano == now
    assert attrs(s.attributes) == {
        "gen_ai.operation.name": "chat", "gen_ai.request.model": "llama-3-8b",
        "process.pid": pid, "thread.id": tid, "ainative.request": "req-812",
        "ainative.runqueue_wait_ns": 9_000_000, "ainative.ran_instead.pid": [4411],
        "ainative.ran_instead.comm": ["stress-ng"],
        "ainative.ran_instead.ns": [8_000_000]}
    _, s = spans["infer"]
    assert s.start_time_unix_nano == now + 50_000_000 - 3_000_001
    assert s.end_time_unix_nano == now + 50_000_000
    assert attrs(s.attributes) == {"gen_ai.operation.name": "infer", "process.pid": pid,
                                   "thread.id": tid}
    _, s = spans["ainative.policy_applied"]
    assert s.kind == Span.SPAN_KIND_INTERNAL
    assert s.start_time_unix_nano == s.end_time_unix_nano == now + 2
    assert attrs(s.attributes) == {"process.pid": pid, "thread.id": tid,
                                   "ainative.knob": "nice", "ainative.old": "0",
                                   "ainative.new": "-5", "ainative.class": "inference"}
    _, s = spans["ainative.policy_restored"]
    assert attrs(s.attributes)["ainative.why"] == "restored: stop"
    _, s = spans["ainative.ai_task_registered"]
    assert attrs(s.attributes)["ainative.signals"] == ["onnxruntime"]

    # The histogram: one point per (operation, model, pid), with the right count and sum.
    got = receiver.metric("gen_ai.server.request.duration")
    assert got, "gen_ai.server.request.duration did not arrive"
    res, m = got[-1]
    assert res["service.name"] == "ainative-test"
    assert m.unit == "s"
    points = {attrs(p.attributes).get("gen_ai.operation.name"): p
              for p in m.histogram.data_points}
    assert set(points) == {"chat", "infer"}
    assert points["chat"].count == 1
    assert points["chat"].sum == pytest.approx(0.012345678)
    assert attrs(points["chat"].attributes) == {
        "gen_ai.operation.name": "chat", "gen_ai.request.model": "llama-3-8b",
        "process.pid": pid}
    assert points["infer"].count == 1
    assert points["infer"].sum == pytest.approx(0.003000001)
    assert list(points["chat"].explicit_bounds)[:4] == [0.00125, 0.0025, 0.005, 0.01]

    got = receiver.metric("ainative.runqueue.wait")
    assert got, "ainative.runqueue.wait did not arrive"
    _, m = got[-1]
    assert m.unit == "s"
    (p,) = m.histogram.data_points
    assert p.count == 1
    assert p.sum == pytest.approx(0.00025)
    assert attrs(p.attributes) == {"process.pid": pid, "ainative.source": "ebpf"}


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port: int = s.getsockname()[1]
    s.close()
    return port


def test_emit_never_blocks_on_unreachable_endpoint() -> None:
    sink = OtlpSink(f"http://127.0.0.1:{closed_port()}", request_timeout_s=1.0)
    now = time.time_ns()
    evs = [InferenceLatency(ts_ns=now + i, pid=os.getpid(), tid=1, name="infer",
                            duration_ns=1000 + i) for i in range(1000)]
    sink.emit(evs[0])  # first-use costs (lazy imports inside the SDK) out of the timing
    t0 = time.perf_counter()
    for ev in evs:
        sink.emit(ev)
    took = time.perf_counter() - t0
    assert took < 0.05, f"1000 emits took {took * 1000:.1f} ms"
    t0 = time.perf_counter()
    sink.close(timeout_s=2.0)
    took = time.perf_counter() - t0
    assert took < 2.5, f"close took {took:.2f} s"
    assert sink.dropped == 0
    sink.emit(evs[0])  # after close: dropped and counted, not an error
    assert sink.dropped == 1


def test_full_queue_drops_oldest_and_counts(receiver: Receiver) -> None:
    sink = OtlpSink(receiver.endpoint, max_queue=10, flush_s=60.0)
    now = time.time_ns()
    for i in range(25):
        sink.emit(InferenceLatency(ts_ns=now + i, pid=os.getpid(), tid=1, name=f"s{i}",
                                   duration_ns=1))
    assert sink.dropped == 15
    assert sink.close(timeout_s=10.0)
    assert sorted(s.name for _, s in receiver.spans()) == sorted(f"s{i}" for i in range(15, 25))


def test_missing_extra_is_one_clear_line() -> None:
    code = ("import sys; sys.modules['opentelemetry'] = None\n"
            "from ainative.telemetry.otlp import OtlpSink, OtlpUnavailable\n"
            "try:\n"
            "    OtlpSink('http://127.0.0.1:4318')\n"
            "except OtlpUnavailable as e:\n"
            "    print(e)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == MISSING_EXTRA


@pytest.mark.skipif(os.geteuid() != 0, reason="the daemon changes priorities: needs root")
def test_a_daemon_exports_its_policy_actions(receiver: Receiver, tmp_path: Path) -> None:
    # A real scoped daemon with --otlp-endpoint; a child it demotes (background, always on)
    # gives a policy_applied, and the stop's restore a policy_restored, both exported.
    from ainative.ipc.launcher import ScopedDaemon

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                             env=dict(os.environ, AINATIVE_CLASS="background"))
    d = ScopedDaemon(str(tmp_path), scope_pid=os.getpid(),
                     cgroup_root=f"ainative-otlp-{os.getpid()}",
                     rules_text="[classes.background]\nonly_while_serving_active = false\n",
                     extra_args=("--otlp-endpoint", receiver.url, "--reconcile-interval", "0.2"))
    try:
        d.start(timeout=15)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and os.getpriority(os.PRIO_PROCESS, child.pid) != 19:
            time.sleep(0.05)
        assert os.getpriority(os.PRIO_PROCESS, child.pid) == 19
        d.close()  # stops: restores, then flushes the OTLP sink
        assert os.getpriority(os.PRIO_PROCESS, child.pid) == 0
        names: dict[str, list[dict[str, Any]]] = {}
        for _res, s in receiver.spans():
            names.setdefault(s.name, []).append(attrs(s.attributes))
        applied = names.get("ainative.policy_applied", [])
        assert any(a.get("process.pid") == child.pid for a in applied), names.keys()
        assert any(a.get("process.pid") == child.pid
                   for a in names.get("ainative.policy_restored", []))
    finally:
        d.close()
        child.kill()
        child.wait()
