"""The ETW sink's real advapi32 calls under Wine: EventRegister, EventSetInformation and
EventWriteTransfer must accept what the sink passes (status 0) for every event type.
Wine delivers nothing to a session, so what reaches ETW is checked against the
documented layout with a fake boundary (tests/winhost/test_windows_etw.py); delivery to
a real `logman` session is unverified.
"""

from __future__ import annotations

import sys

import pytest

pytestmark = pytest.mark.skipif(sys.platform != "win32", reason="needs a Windows Python")


def test_every_event_type_is_accepted_by_event_write_transfer() -> None:
    from ainative.platform.windows.etw import EtwSink
    from ainative.telemetry.events import (
        AiTaskRegistered,
        GpuUtilization,
        InferenceLatency,
        PolicyApplied,
        PolicyRestored,
        RunqueueLatency,
    )

    sink = EtwSink()
    assert sink.handle != 0
    events = [AiTaskRegistered(1, 2, 2, "inference", "python", ("library onnxruntime",)),
              InferenceLatency(2, 2, 3, "infer", 1000), GpuUtilization(3, 0, 0, 0, 50.0),
              PolicyApplied(4, 2, 3, "priority_class", "normal", "high"),
              PolicyRestored(5, 2, 3, "priority_class", "normal"),
              RunqueueLatency(6, 2, 3, 100)]
    for ev in events:
        sink.emit(ev)
        assert sink.last_status == 0, type(ev).__name__
    assert sink.written == len(events) and sink.failed == 0
    sink.close()
