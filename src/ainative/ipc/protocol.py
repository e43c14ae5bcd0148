"""The control socket's JSON protocol: parsing, limits and who may ask for what.

One request per line: {"op": "...", ...}. One reply per line: {"ok": true, ...} or
{"ok": false, "error": "..."}. Anyone may read (status, explain, ping); a user may
register (or demote) only their own processes and never into a realtime class; root may
do everything.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

MAX_REQUEST = 64 * 1024
READ_OPS = {"ping", "status", "explain"}
ALL_OPS = READ_OPS | {"register", "restore", "resume", "reload", "report_pool"}


class RequestError(Exception):
    """The request is malformed or not allowed; the message goes back to the caller."""


@dataclass(frozen=True)
class Peer:
    pid: int
    uid: int
    gid: int

    @property
    def is_root(self) -> bool:
        return self.uid == 0


def parse_request(line: bytes) -> dict[str, Any]:
    if len(line) > MAX_REQUEST:
        raise RequestError(f"request larger than {MAX_REQUEST} bytes")
    try:
        req = json.loads(line)
    except (ValueError, UnicodeDecodeError) as e:
        raise RequestError(f"request is not valid JSON: {e}") from e
    if not isinstance(req, dict):
        raise RequestError("request must be a JSON object")
    op = req.get("op")
    if not isinstance(op, str) or op not in ALL_OPS:
        raise RequestError(f"unknown op {op!r}; known: {', '.join(sorted(ALL_OPS))}")
    return req


def int_field(req: dict[str, Any], name: str) -> int:
    v = req.get(name)
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0 or v > 1 << 22:
        raise RequestError(f"{name!r} must be a positive process id")
    return v


def str_field(req: dict[str, Any], name: str, max_len: int = 64) -> str:
    v = req.get(name)
    if not isinstance(v, str) or not v or len(v) > max_len:
        raise RequestError(f"{name!r} must be a non-empty string of at most {max_len} chars")
    return v


def reply_ok(**fields: Any) -> bytes:
    return json.dumps({"ok": True, **fields}, default=str, separators=(",", ":")).encode() + b"\n"


def reply_error(msg: str) -> bytes:
    return json.dumps({"ok": False, "error": msg}, separators=(",", ":")).encode() + b"\n"
