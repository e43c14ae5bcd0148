"""ainative's events as ETW TraceLogging events: an EventSink (telemetry/sink.py) that
writes every event of the one schema (telemetry/events.py) to the provider "ainative",
so Windows tools see the seed's three events (AiTaskRegistered, InferenceLatency,
GpuUtilization) and ainative's others (PolicyApplied, PolicyRestored, RunqueueLatency)
with the same names and fields as the JSON on Linux.

TraceLogging events describe themselves: each write carries the provider's metadata
(its name) and the event's (its name and each field's name and type) beside the values,
so no manifest is installed. The provider's GUID is derived from its name the way
EventSource and TraceLogging tools do (SHA-1 over a fixed namespace and the upper-case
UTF-16BE name), so ``*ainative`` in WPR/PerfView and the GUID in logman name the same
provider. Collecting them:

    logman start ainative -p {<provider_guid("ainative")>} -o ainative.etl -ets
    ... run the daemon ...
    logman stop ainative -ets
    tracerpt ainative.etl -o ainative.xml -of XML

Field types: int -> INT64, float -> DOUBLE, bool -> BOOL32, str -> UTF-8 string; a
tuple (signals, ran_instead) is one UTF-8 string joined with "; "; a None field is left
out of that event.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import hashlib
import struct
import sys
import uuid
from typing import Any, Protocol

from ainative.telemetry.events import Event

PROVIDER_NAME = "ainative"
# The namespace EventSource/TraceLogging hash provider names in.
_NAMESPACE = bytes((0x48, 0x2C, 0x2D, 0xB2, 0xC3, 0x90, 0x47, 0xC8,
                    0x87, 0xF8, 0x1A, 0x15, 0xBF, 0xC1, 0x30, 0xFB))

# TraceLogging in-types and out-types (TraceLoggingProvider.h), and the descriptor types
# of EVENT_DATA_DESCRIPTOR.
IN_ANSISTRING, IN_INT64, IN_DOUBLE, IN_BOOL32 = 2, 9, 12, 13
OUT_UTF8 = 35
CHAIN = 0x80
DESC_DATA, DESC_EVENT_METADATA, DESC_PROVIDER_METADATA = 0, 1, 2
CHANNEL_TRACELOGGING = 11
LEVEL_INFO = 4
EVENT_PROVIDER_SET_TRAITS = 2


def provider_guid(name: str) -> uuid.UUID:
    """The GUID tools derive from a provider name."""
    digest = bytearray(hashlib.sha1(_NAMESPACE + name.upper().encode("utf-16-be")).digest())
    digest[7] = (digest[7] & 0x0F) | 0x50
    return uuid.UUID(bytes_le=bytes(digest[:16]))


def provider_metadata(name: str) -> bytes:
    """Provider traits: total size (UINT16), then the name, UTF-8, NUL-terminated."""
    body = name.encode() + b"\0"
    return struct.pack("<H", 2 + len(body)) + body


def _field(name: str, value: Any) -> tuple[bytes, bytes] | None:
    """(the field's metadata, its value) or None to leave it out."""
    key = name.encode() + b"\0"
    if value is None:
        return None
    if isinstance(value, bool):
        return key + bytes((IN_BOOL32,)), struct.pack("<i", int(value))
    if isinstance(value, int):
        return key + bytes((IN_INT64,)), struct.pack("<q", value)
    if isinstance(value, float):
        return key + bytes((IN_DOUBLE,)), struct.pack("<d", value)
    if isinstance(value, tuple):
        value = "; ".join(
            ":".join(str(getattr(x, f.name)) for f in dataclasses.fields(x))
            if dataclasses.is_dataclass(x) else str(x) for x in value)
    text = str(value).replace("\0", "")
    return key + bytes((IN_ANSISTRING | CHAIN, OUT_UTF8)), text.encode() + b"\0"


def encode(ev: Event) -> tuple[str, bytes, list[bytes]]:
    """(the event's name, its TraceLogging metadata, one value blob per field)."""
    name = type(ev).__name__
    meta = bytearray(b"\0")  # tags: none
    meta += name.encode() + b"\0"
    values: list[bytes] = []
    for f in dataclasses.fields(ev):
        got = _field(f.name, getattr(ev, f.name))
        if got is not None:
            meta += got[0]
            values.append(got[1])
    return name, struct.pack("<H", 2 + len(meta)) + bytes(meta), values


class EtwApi(Protocol):
    """The advapi32 calls the sink makes; ``Advapi32`` is the real one."""

    def register(self, guid: uuid.UUID) -> int: ...
    def set_traits(self, handle: int, traits: bytes) -> None: ...
    def write(self, handle: int, level: int, blobs: list[tuple[bytes, int]]) -> int: ...
    def unregister(self, handle: int) -> None: ...


class _GUID(ctypes.Structure):
    _fields_ = [("data", ctypes.c_ubyte * 16)]


class _EVENT_DESCRIPTOR(ctypes.Structure):
    _fields_ = [("Id", ctypes.c_ushort), ("Version", ctypes.c_ubyte),
                ("Channel", ctypes.c_ubyte), ("Level", ctypes.c_ubyte),
                ("Opcode", ctypes.c_ubyte), ("Task", ctypes.c_ushort),
                ("Keyword", ctypes.c_ulonglong)]


class _EVENT_DATA_DESCRIPTOR(ctypes.Structure):
    _fields_ = [("Ptr", ctypes.c_ulonglong), ("Size", ctypes.c_ulong),
                ("Type", ctypes.c_ubyte), ("Reserved1", ctypes.c_ubyte),
                ("Reserved2", ctypes.c_ushort)]


class Advapi32:
    """EventRegister / EventSetInformation / EventWriteTransfer / EventUnregister."""

    def __init__(self) -> None:
        if sys.platform != "win32":
            raise OSError(errno.ENOSYS, "ETW exists only on Windows")
        _ct: Any = ctypes
        self._a: Any = _ct.WinDLL("advapi32")
        self._a.EventRegister.argtypes = [ctypes.POINTER(_GUID), ctypes.c_void_p,
                                          ctypes.c_void_p, ctypes.POINTER(ctypes.c_ulonglong)]
        self._a.EventRegister.restype = ctypes.c_ulong
        self._a.EventSetInformation.argtypes = [ctypes.c_ulonglong, ctypes.c_int,
                                                ctypes.c_void_p, ctypes.c_ulong]
        self._a.EventSetInformation.restype = ctypes.c_ulong
        self._a.EventWriteTransfer.argtypes = [
            ctypes.c_ulonglong, ctypes.POINTER(_EVENT_DESCRIPTOR), ctypes.c_void_p,
            ctypes.c_void_p, ctypes.c_ulong, ctypes.POINTER(_EVENT_DATA_DESCRIPTOR)]
        self._a.EventWriteTransfer.restype = ctypes.c_ulong
        self._a.EventUnregister.argtypes = [ctypes.c_ulonglong]

    def register(self, guid: uuid.UUID) -> int:
        g = _GUID()
        ctypes.memmove(g.data, guid.bytes_le, 16)
        handle = ctypes.c_ulonglong()
        status = self._a.EventRegister(ctypes.byref(g), None, None, ctypes.byref(handle))
        if status != 0:
            raise OSError(errno.EIO, f"EventRegister: Win32 error {status}")
        return int(handle.value)

    def set_traits(self, handle: int, traits: bytes) -> None:
        buf = ctypes.create_string_buffer(traits, len(traits))
        self._a.EventSetInformation(handle, EVENT_PROVIDER_SET_TRAITS, buf, len(traits))

    def write(self, handle: int, level: int, blobs: list[tuple[bytes, int]]) -> int:
        desc = _EVENT_DESCRIPTOR(0, 0, CHANNEL_TRACELOGGING, level, 0, 0, 0)
        bufs = [ctypes.create_string_buffer(b, len(b)) for b, _ in blobs]
        data = (_EVENT_DATA_DESCRIPTOR * len(blobs))()
        for i, ((blob, kind), buf) in enumerate(zip(blobs, bufs, strict=True)):
            data[i].Ptr, data[i].Size, data[i].Type = ctypes.addressof(buf), len(blob), kind
        return int(self._a.EventWriteTransfer(handle, ctypes.byref(desc), None, None,
                                              len(blobs), data))

    def unregister(self, handle: int) -> None:
        self._a.EventUnregister(handle)


class EtwSink:
    """An EventSink writing each event to ETW. Writes never raise (a sink must not stop
    the daemon); ``failed`` counts the writes ETW refused, ``last_status`` the last
    EventWriteTransfer result (0: written, or nobody listening)."""

    def __init__(self, name: str = PROVIDER_NAME, api: EtwApi | None = None) -> None:
        self.api: EtwApi = api if api is not None else Advapi32()
        self.guid = provider_guid(name)
        self._traits = provider_metadata(name)
        self.handle = self.api.register(self.guid)
        self.api.set_traits(self.handle, self._traits)
        self.written = 0
        self.failed = 0
        self.last_status = 0

    def emit(self, ev: Event, /) -> None:
        _name, meta, values = encode(ev)
        blobs = [(self._traits, DESC_PROVIDER_METADATA), (meta, DESC_EVENT_METADATA)]
        blobs += [(v, DESC_DATA) for v in values]
        try:
            self.last_status = self.api.write(self.handle, LEVEL_INFO, blobs)
        except OSError:
            self.last_status = -1
        if self.last_status == 0:
            self.written += 1
        else:
            self.failed += 1

    def close(self) -> None:
        if self.handle:
            self.api.unregister(self.handle)
            self.handle = 0
