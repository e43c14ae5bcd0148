"""The control socket's JSON protocol: parsing, limits and who may ask for what.

One request per line: {"op": "...", ...}. One reply per line: {"ok": true, ...} or
{"ok": false, "error": "..."}. Anyone may read (status, explain, ping); a user may
register (or demote) only their own processes and never into a realtime class; root may
do everything.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

MAX_REQUEST = 64 * 1024
READ_OPS = {"ping", "status", "explain", "latency"}
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


MAX_DEPTH = 32  # no request needs more; json.loads would recurse ~1000 deep otherwise


def _not_json(const: str) -> Any:
    raise ValueError(f"{const} is not JSON")


def _finite(text: str) -> float:
    v = float(text)
    if not math.isfinite(v):
        raise ValueError(f"{text} is not a finite number")
    return v


def _check_values(v: Any, depth: int = 0) -> None:
    """Strings must be valid Unicode (no lone surrogates) and nesting shallow."""
    if depth > MAX_DEPTH:
        raise RequestError(f"request nested deeper than {MAX_DEPTH} levels")
    if isinstance(v, str):
        try:
            v.encode("utf-8")
        except UnicodeEncodeError as e:
            raise RequestError("request holds a string that is not valid Unicode "
                               "(a lone surrogate escape)") from e
    elif isinstance(v, dict):
        for k, x in v.items():
            _check_values(k, depth + 1)
            _check_values(x, depth + 1)
    elif isinstance(v, list):
        for x in v:
            _check_values(x, depth + 1)


def parse_request(line: bytes) -> dict[str, Any]:
    if len(line) > MAX_REQUEST:
        raise RequestError(f"request larger than {MAX_REQUEST} bytes")
    try:
        req = json.loads(line, parse_constant=_not_json, parse_float=_finite)
    except RecursionError as e:
        raise RequestError(f"request nested deeper than {MAX_DEPTH} levels") from e
    except (ValueError, UnicodeDecodeError) as e:
        raise RequestError(f"request is not valid JSON: {e}") from e
    _check_values(req)
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


def _strict(v: Any) -> Any:
    """A reply is strict JSON whatever the daemon holds: non-finite numbers become null,
    lone surrogates U+FFFD, anything else not JSON its str()."""
    if isinstance(v, str):
        try:
            v.encode("utf-8")
            return v
        except UnicodeEncodeError:
            return "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in v)
    if isinstance(v, bool) or v is None:
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, int):
        return v
    if isinstance(v, dict):
        return {str(_strict(k)): _strict(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_strict(x) for x in v]
    return _strict(str(v))


def reply_ok(**fields: Any) -> bytes:
    return json.dumps(_strict({"ok": True, **fields}), allow_nan=False,
                      separators=(",", ":")).encode() + b"\n"


def reply_error(msg: str) -> bytes:
    return json.dumps({"ok": False, "error": _strict(msg)}, allow_nan=False,
                      separators=(",", ":")).encode() + b"\n"
