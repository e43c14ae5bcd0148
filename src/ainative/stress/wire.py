"""The stress model server's protocol: length-prefixed binary frames on a Unix stream
socket.

Every message, either way, is one frame, an 8-byte little-endian header and a payload:

    kind: u32 | length: u32 | payload: length bytes

    client -> server          server -> client
    HELLO  (empty)            HELLO  JSON Hello: the server's pid, service time, inputs
    INFER  the input tensors  RESULT the output tensors' bytes, or ERROR a UTF-8 message
    START  (empty)            START  JSON {"sched": ...}: the measurement begins now
    STOP   (empty)            STOP   JSON ServerReport: the server's figures since START

INFER's payload is every model input's raw bytes (C order, native byte order) one after
the other, in the order HELLO listed them. Their sizes are fixed by those specs, so the
payload needs no names, shapes or dtypes of its own, and anything of another length is
refused (ERROR, then the connection is closed: the framing can no longer be trusted).

Why this framing: tensors are raw bytes already. Text (JSON, base64) or pickle would
cost more CPU per request than the model does at these sizes, and that cost would be
measured as latency (and pickle would run code sent over the socket). A fixed header says
how much follows before any of it is read, so the payload goes straight into its buffer
(pinned memory with --pool) with recv_into, without delimiter scanning, and a length the
session cannot take is refused without being read or allocated. A connection carries one
request at a time (a client worker waits for its reply), so replies need no ids.
"""

from __future__ import annotations

import json
import socket
import struct
from enum import IntEnum
from typing import Any, TypedDict

from ainative.stress.batch import InputSpec

HEADER = struct.Struct("<II")
MAX_CONTROL = 1 << 20  # a JSON control message; tensors are checked against their specs


class Kind(IntEnum):
    HELLO = 1
    INFER = 2
    RESULT = 3
    ERROR = 4
    START = 5
    STOP = 6


class Hello(TypedDict):
    pid: int
    service_s: float  # seconds per inference, measured in the server's warm-up
    inputs: list[InputSpec]


class ProtocolError(ConnectionError):
    """The peer closed the connection or sent something outside the protocol."""


class ServerError(Exception):
    """The server answered with ERROR; the message is its reason."""


def recv_exact(sock: socket.socket, view: memoryview) -> None:
    """Fill view from sock; a peer that closes first is a ProtocolError."""
    got, want = 0, len(view)
    while got < want:
        n = sock.recv_into(view[got:], want - got)
        if n == 0:
            raise ProtocolError("the connection closed in the middle of a message"
                                if got else "the connection closed")
        got += n


def read_header(sock: socket.socket, buf: bytearray) -> tuple[int, int]:
    """(kind, payload length) of the next frame; buf is the caller's 8-byte scratch."""
    recv_exact(sock, memoryview(buf))
    kind, length = HEADER.unpack(buf)
    return kind, length


def send_frame(sock: socket.socket, kind: int, *parts: Any) -> None:
    """One frame from parts (bytes-like, e.g. NumPy arrays), gathered in one system call
    when the socket takes it all, as it does for anything under its buffer size."""
    views = [memoryview(p).cast("B") for p in parts]
    total = sum(len(v) for v in views)
    head = HEADER.pack(kind, total)
    sent = sock.sendmsg([head, *views])
    if sent < len(head) + total:
        sock.sendall(b"".join([head, *views])[sent:])


def send_json(sock: socket.socket, kind: int, obj: Any) -> None:
    send_frame(sock, kind, json.dumps(obj).encode())


def read_payload(sock: socket.socket, length: int, limit: int = MAX_CONTROL) -> bytes:
    if length > limit:
        raise ProtocolError(f"a {length}-byte control message (at most {limit} allowed)")
    buf = bytearray(length)
    recv_exact(sock, memoryview(buf))
    return bytes(buf)


def call(sock: socket.socket, kind: Kind) -> Any:
    """Send an empty control frame and return the JSON of the reply of the same kind."""
    send_frame(sock, kind)
    head = bytearray(HEADER.size)
    got, length = read_header(sock, head)
    payload = read_payload(sock, length)
    if got == Kind.ERROR:
        raise ServerError(payload.decode(errors="replace"))
    if got != kind:
        raise ProtocolError(f"asked {kind.name}, the server answered with kind {got}")
    return json.loads(payload)
