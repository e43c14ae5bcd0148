"""The ETW TraceLogging sink against a fake advapi32 (a boundary this machine cannot
reach, and where Wine accepts every call but delivers nothing): what the sink hands to
EventWriteTransfer must decode, by the documented TraceLogging layout, to exactly the
event of the one schema (telemetry/events.py), for all six event types. The provider's
GUID must be the one tools derive from its name (checked against published pairs).
The real calls run under Wine in tests/windows/test_wine_etw.py.
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import fields
from typing import Any

from ainative.platform.windows.etw import (
    DESC_DATA,
    DESC_EVENT_METADATA,
    DESC_PROVIDER_METADATA,
    EtwSink,
    provider_guid,
)
from ainative.telemetry.events import (
    AiTaskRegistered,
    GpuUtilization,
    InferenceLatency,
    PolicyApplied,
    PolicyRestored,
    RanInstead,
    RunqueueLatency,
)

EVENTS = [
    AiTaskRegistered(1, 10, 10, "inference", "python", ("library onnxruntime", "tcp :80")),
    InferenceLatency(2, 10, 11, "infer", 1_500_000, "req-1", 20_000,
                     (RanInstead(99, "stress", 5000),)),
    GpuUtilization(3, 0, 0, 0, 87.5, 1 << 30, None),
    PolicyApplied(4, 10, 11, "priority_class", "normal", "high", "inference"),
    PolicyRestored(5, 10, 11, "priority_class", "normal", "restored"),
    RunqueueLatency(6, 10, 11, 42_000, 1, "schedstat", ()),
]


class FakeEtw:
    def __init__(self, status: int = 0) -> None:
        self.status = status
        self.registered: list[uuid.UUID] = []
        self.traits: list[bytes] = []
        self.writes: list[list[tuple[bytes, int]]] = []
        self.unregistered = False

    def register(self, guid: uuid.UUID) -> int:
        self.registered.append(guid)
        return 7

    def set_traits(self, handle: int, traits: bytes) -> None:
        assert handle == 7
        self.traits.append(traits)

    def write(self, handle: int, level: int, blobs: list[tuple[bytes, int]]) -> int:
        assert handle == 7
        self.writes.append(blobs)
        return self.status

    def unregister(self, handle: int) -> None:
        self.unregistered = True


def _cstr(b: bytes, i: int) -> tuple[str, int]:
    end = b.index(b"\0", i)
    return b[i:end].decode(), end + 1


def decode(blobs: list[tuple[bytes, int]]) -> tuple[str, str, dict[str, Any]]:
    """(provider, event name, fields) from what a TraceLogging write hands to ETW."""
    (prov, pk), (meta, mk), *data = blobs
    assert pk == DESC_PROVIDER_METADATA and mk == DESC_EVENT_METADATA
    assert all(k == DESC_DATA for _, k in data)
    assert struct.unpack_from("<H", prov)[0] == len(prov)
    provider, _ = _cstr(prov, 2)
    assert struct.unpack_from("<H", meta)[0] == len(meta)
    assert meta[2] == 0  # no tags
    name, i = _cstr(meta, 3)
    out: dict[str, Any] = {}
    for value, _k in data:
        field, i = _cstr(meta, i)
        in_type = meta[i]
        i += 1
        if in_type & 0x80:
            assert meta[i] == 35  # UTF-8
            i += 1
        in_type &= 0x7F
        if in_type == 9:
            out[field] = struct.unpack("<q", value)[0]
        elif in_type == 12:
            out[field] = struct.unpack("<d", value)[0]
        elif in_type == 13:
            out[field] = bool(struct.unpack("<i", value)[0])
        elif in_type == 2:
            assert value.endswith(b"\0")
            out[field] = value[:-1].decode()
        else:
            raise AssertionError(f"unexpected in-type {in_type}")
    assert i == len(meta)
    return provider, name, out


def _expected(ev: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields(ev):
        v = getattr(ev, f.name)
        if v is None:
            continue
        if isinstance(v, tuple):
            v = "; ".join(":".join(str(getattr(x, g.name)) for g in fields(x))
                          if hasattr(x, "__dataclass_fields__") else str(x) for x in v)
        out[f.name] = v
    return out


def test_every_event_reaches_etw_as_the_same_fields() -> None:
    api = FakeEtw()
    sink = EtwSink(api=api)
    for ev in EVENTS:
        sink.emit(ev)
    assert api.registered == [provider_guid("ainative")]
    assert len(api.writes) == len(EVENTS) and sink.written == len(EVENTS)
    for ev, blobs in zip(EVENTS, api.writes, strict=True):
        provider, name, got = decode(blobs)
        assert provider == "ainative"
        assert name == type(ev).__name__
        assert got == _expected(ev)
    assert decode(api.writes[1])[2]["ran_instead"] == "99:stress:5000"
    assert "memory_total" not in decode(api.writes[2])[2]  # None: left out
    sink.close()
    assert api.unregistered


def test_a_refused_write_is_counted_and_never_raises() -> None:
    api = FakeEtw(status=8)  # ERROR_NOT_ENOUGH_MEMORY: the session's buffers are full
    sink = EtwSink(api=api)
    sink.emit(EVENTS[0])
    assert sink.failed == 1 and sink.written == 0 and sink.last_status == 8


def test_the_provider_guid_is_the_one_tools_derive_from_the_name() -> None:
    # Published name/GUID pairs (Microsoft's TraceLogging samples).
    assert str(provider_guid("TestProviderCpp")) == "3f3dc547-92d7-59d6-ed26-053336a36f9b"
    assert str(provider_guid("MyCompany.MyComponent.MyProvider")) == \
        "d5b90669-1aad-5db8-16c9-6286a7fcfe33"
    assert provider_guid("ainative") == provider_guid("AINATIVE")
