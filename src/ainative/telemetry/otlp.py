"""OpenTelemetry export (OTLP over HTTP/protobuf): ainative's events as spans and metrics.

An optional sink (``pip install 'ainative[otlp]'``): ``OtlpSink(endpoint)`` takes the
events of telemetry/events.py, as any EventSink does, and sends them to an OpenTelemetry
Collector (or any OTLP/HTTP receiver) at ``endpoint`` (``http://127.0.0.1:4318``):
traces to ``/v1/traces``, metrics to ``/v1/metrics``, protobuf bodies. The SDK is imported
only when a sink is made, so ainative without the extra never touches it; without it,
constructing one raises OtlpUnavailable with one line saying what to install.

What goes out, and the GenAI semantic conventions it follows where they fit
(status "Development" there: names may still change between semconv releases):

- **InferenceLatency** (one traced request) -> one span, kind SERVER, from
  ``ts_ns - duration_ns`` to ``ts_ns`` exactly (the event's own times, never "now").
  Mapping of the user's span name (``ainative.span(NAME)``): the GenAI spans convention
  names a span ``{gen_ai.operation.name} {gen_ai.request.model}``. ainative does not
  know the operation or the model, only the user's name, so a name with a space
  (``"chat llama-3-8b"``) is read as ``{operation} {model}`` and one without
  (``"infer"``, ``"resnet50"``) is the operation alone (the semconv's operation values
  are open: ``chat``, ``embeddings``... are the well-known ones, others are allowed).
  The span's name is the user's name unchanged, which is that format in both cases.
  Attributes: ``gen_ai.operation.name``, ``gen_ai.request.model`` (when the name has
  one), ``process.pid``, ``thread.id``, and ainative's own ``ainative.request``,
  ``ainative.runqueue_wait_ns`` and ``ainative.ran_instead.{pid,comm,ns}`` (parallel
  arrays) when attribution filled them in. Kind SERVER, not the CLIENT/INTERNAL of the
  semconv's inference span: that span is the caller's view of a model call, and the
  process ainative traces is the one serving the request (hence also the server metric
  below). ``gen_ai.provider.name`` is left out: ainative cannot know it.
- The same event feeds the histogram ``gen_ai.server.request.duration`` (unit ``s``,
  the GenAI model-server metric) with ``gen_ai.operation.name``,
  ``gen_ai.request.model`` when known and ``process.pid``. Bucket boundaries: the
  semconv's doubling series for GenAI durations (0.01 ... 81.92 s), carried on down to
  1.25 ms, because local inference is often under 10 ms.
- **RunqueueLatency** -> the histogram ``ainative.runqueue.wait`` (unit ``s``) with
  ``process.pid`` and ``ainative.source`` (ebpf or schedstat). No semconv covers it.
- **PolicyApplied**, **PolicyRestored**, **AiTaskRegistered** -> a zero-length span each,
  kind INTERNAL, named ``ainative.policy_applied``, ``ainative.policy_restored``,
  ``ainative.ai_task_registered``, at the event's time, with ``process.pid``,
  ``thread.id`` and the event's fields as ``ainative.*`` attributes. Not log records:
  in SDK 1.45 the logs SDK and its OTLP exporter are still private modules
  (``opentelemetry.sdk._logs``, ``..._log_exporter``) whose API may change in any
  release; spans go through the same stable pipeline as the inference spans, so one
  receiver and one exporter see everything.
- **GpuUtilization** is not exported here: the Prometheus endpoint carries the GPU
  metrics under DCGM exporter's names, which is what GPU dashboards read.

Never blocking the daemon's loop: ``emit`` appends the event to a bounded deque and
returns (about a microsecond; when the deque is full the oldest event falls out and is
counted in ``dropped``). The sink's own thread drains the deque every ``flush_s`` and
turns the events into spans (onto the SDK's BatchSpanProcessor, itself bounded) and
measurements (into the MeterProvider's in-memory aggregation); the HTTP requests happen
on the SDK's threads (a batch every ``schedule_delay_ms``, metrics every
``export_interval_s``). Building SDK spans costs tens of microseconds each, so it is
kept off the caller's thread too. An unreachable endpoint costs those threads retries
(the SDK logs them as warnings), never ``emit``. ``close(timeout_s)`` converts what is
queued, flushes and shuts both providers down, and returns within its timeout whatever
the endpoint does. The providers are this sink's own, never the process-global ones,
and register no atexit hook (a dead endpoint must not hold up the daemon's exit):
whoever makes the sink closes it.

Where the names come from:
- spans: https://opentelemetry.io/docs/specs/semconv/gen-ai/gen-ai-spans/ (span name
  ``{gen_ai.operation.name} {gen_ai.request.model}``, attributes
  ``gen_ai.operation.name``, ``gen_ai.request.model``);
- metrics: https://opentelemetry.io/docs/specs/semconv/gen-ai/gen-ai-metrics/ and
  https://github.com/open-telemetry/semantic-conventions-genai/blob/main/model/gen-ai/metrics.yaml
  (``gen_ai.server.request.duration``, histogram, unit ``s``); the same constant is
  ``GEN_AI_SERVER_REQUEST_DURATION`` in opentelemetry-semantic-conventions'
  ``_incubating/metrics/gen_ai_metrics.py``;
- ``process.pid``, ``thread.id``: the general OpenTelemetry attribute registry.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

from ainative import log
from ainative.telemetry.events import (
    AiTaskRegistered,
    Event,
    InferenceLatency,
    PolicyApplied,
    PolicyRestored,
    RunqueueLatency,
)

MISSING_EXTRA = "OTLP export needs the otlp extra: pip install 'ainative[otlp]'"

REQUEST_DURATION = "gen_ai.server.request.duration"
RUNQUEUE_WAIT = "ainative.runqueue.wait"
# The GenAI semconv's duration boundaries (0.01 .. 81.92 s, doubling), carried on down.
DURATION_BUCKETS = (0.00125, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64,
                    1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
RUNQUEUE_BUCKETS = (1e-6, 4e-6, 16e-6, 64e-6, 256e-6, 0.001, 0.004, 0.016, 0.064, 0.256,
                    1.0)


class OtlpUnavailable(RuntimeError):
    """The otlp extra (opentelemetry-sdk and its OTLP/HTTP exporter) is not installed."""


def operation_and_model(name: str) -> tuple[str, str | None]:
    """The user's span name as (gen_ai.operation.name, gen_ai.request.model or None)."""
    op, sep, model = name.strip().partition(" ")
    model = model.strip()
    return (op or "inference"), (model if sep and model else None)


class OtlpSink:
    """An EventSink that exports to an OTLP/HTTP endpoint (see the module docstring)."""

    def __init__(self, endpoint: str, *, service_name: str = "ainative",
                 headers: Mapping[str, str] | None = None,
                 resource_attrs: Mapping[str, Any] | None = None,
                 export_interval_s: float = 10.0, schedule_delay_ms: float = 1000.0,
                 request_timeout_s: float = 5.0, flush_s: float = 0.2,
                 max_queue: int = 8192) -> None:
        try:
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
                OTLPMetricExporter,
            )
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                OTLPSpanExporter,
            )
            from opentelemetry.sdk.metrics import MeterProvider
            from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
            from opentelemetry.trace import SpanKind
        except ImportError:
            raise OtlpUnavailable(MISSING_EXTRA) from None

        base = endpoint.rstrip("/")
        self.endpoint = base
        hdrs = dict(headers or {})
        attrs: dict[str, Any] = dict(resource_attrs or {})
        attrs["service.name"] = service_name
        resource = Resource.create(attrs)

        self._tracer_provider = TracerProvider(resource=resource, shutdown_on_exit=False)
        self._tracer_provider.add_span_processor(BatchSpanProcessor(
            OTLPSpanExporter(endpoint=f"{base}/v1/traces", headers=hdrs,
                             timeout=request_timeout_s),
            schedule_delay_millis=schedule_delay_ms,
            export_timeout_millis=request_timeout_s * 1000))
        self._reader = PeriodicExportingMetricReader(
            OTLPMetricExporter(endpoint=f"{base}/v1/metrics", headers=hdrs,
                               timeout=request_timeout_s),
            export_interval_millis=export_interval_s * 1000,
            export_timeout_millis=request_timeout_s * 1000)
        self._meter_provider = MeterProvider(resource=resource, metric_readers=[self._reader],
                                             shutdown_on_exit=False)

        self._tracer = self._tracer_provider.get_tracer("ainative")
        meter = self._meter_provider.get_meter("ainative")
        self._duration = meter.create_histogram(
            REQUEST_DURATION, unit="s",
            description="Generative AI server request duration such as time-to-last byte "
                        "or last output token.",
            explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS))
        self._runqueue = meter.create_histogram(
            RUNQUEUE_WAIT, unit="s",
            description="Time a thread of an AI process waited in the run queue.",
            explicit_bucket_boundaries_advisory=list(RUNQUEUE_BUCKETS))
        self._server = SpanKind.SERVER
        self._internal = SpanKind.INTERNAL
        self._queue: deque[Event] = deque(maxlen=max_queue)
        self._max_queue = max_queue
        self.dropped = 0  # events that fell out of a full queue, or came after close
        self.failed = 0  # events the SDK raised on (logged once)
        self._flush_s = flush_s
        self._wake = threading.Event()
        self._closed = False
        self._worker = threading.Thread(target=self._run, name="ainative-otlp", daemon=True)
        self._worker.start()

    def emit(self, ev: Event, /) -> None:
        """Queue one event; never blocks, never waits for the endpoint."""
        if self._closed:
            self.dropped += 1
            return
        q = self._queue
        if len(q) >= self._max_queue:
            self.dropped += 1  # the oldest falls out
        q.append(ev)

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(self._flush_s)
            self._drain()
        self._drain()

    def _drain(self) -> None:
        q = self._queue
        while q:
            try:
                ev = q.popleft()
            except IndexError:
                return
            try:
                self._export(ev)
            except Exception as e:
                self.failed += 1
                if self.failed == 1:
                    log.error("otlp_export_failed", event=ev.TYPE,
                              error=f"{type(e).__name__}: {e}",
                              action="events the OTLP sink fails on are dropped")

    def _export(self, ev: Event) -> None:
        if isinstance(ev, InferenceLatency):
            self._inference(ev)
        elif isinstance(ev, RunqueueLatency):
            self._runqueue.record(ev.wait_ns / 1e9, {"process.pid": ev.pid,
                                                     "ainative.source": ev.source})
        elif isinstance(ev, PolicyApplied):
            self._mark(ev, {"ainative.knob": ev.knob, "ainative.old": ev.old,
                            "ainative.new": ev.new, "ainative.class": ev.cls})
        elif isinstance(ev, PolicyRestored):
            self._mark(ev, {"ainative.knob": ev.knob, "ainative.value": ev.value,
                            "ainative.why": ev.why})
        elif isinstance(ev, AiTaskRegistered):
            self._mark(ev, {"ainative.class": ev.cls, "ainative.comm": ev.comm,
                            "ainative.signals": list(ev.signals)})
        # GpuUtilization: not exported here (module docstring)

    def _inference(self, ev: InferenceLatency) -> None:
        op, model = operation_and_model(ev.name)
        metric: dict[str, Any] = {"gen_ai.operation.name": op, "process.pid": ev.pid}
        if model is not None:
            metric["gen_ai.request.model"] = model
        attrs = dict(metric)
        attrs["thread.id"] = ev.tid
        if ev.request is not None:
            attrs["ainative.request"] = ev.request
        if ev.runqueue_wait_ns is not None:
            attrs["ainative.runqueue_wait_ns"] = ev.runqueue_wait_ns
        if ev.ran_instead:
            attrs["ainative.ran_instead.pid"] = [r.pid for r in ev.ran_instead]
            attrs["ainative.ran_instead.comm"] = [r.comm for r in ev.ran_instead]
            attrs["ainative.ran_instead.ns"] = [r.ns for r in ev.ran_instead]
        span = self._tracer.start_span(ev.name, kind=self._server, attributes=attrs,
                                       start_time=ev.ts_ns - ev.duration_ns)
        span.end(end_time=ev.ts_ns)
        self._duration.record(ev.duration_ns / 1e9, metric)

    def _mark(self, ev: PolicyApplied | PolicyRestored | AiTaskRegistered,
              fields: dict[str, Any]) -> None:
        attrs: dict[str, Any] = {"process.pid": ev.pid, "thread.id": ev.tid}
        attrs.update((k, v) for k, v in fields.items() if v != "" and v != [])
        span = self._tracer.start_span(f"ainative.{ev.TYPE}", kind=self._internal,
                                       attributes=attrs, start_time=ev.ts_ns)
        span.end(end_time=ev.ts_ns)

    def close(self, timeout_s: float = 5.0) -> bool:
        """Export what is pending and shut down; True if that finished within
        ``timeout_s`` (False: the endpoint did not answer in time, the rest is dropped)."""
        if self._closed:
            return True
        deadline = time.monotonic() + timeout_s
        self._closed = True
        self._wake.set()
        self._worker.join(timeout_s)

        def shutdown() -> None:
            self._tracer_provider.shutdown()
            left = max(deadline - time.monotonic(), 0.0)
            self._meter_provider.shutdown(timeout_millis=left * 1000)

        t = threading.Thread(target=shutdown, name="ainative-otlp-close", daemon=True)
        t.start()
        t.join(max(deadline - time.monotonic(), 0.0))
        return not t.is_alive() and not self._worker.is_alive()
