"""Property tests of the socket protocol: whatever a client sends, parsing either gives a
request with a known ``op`` or raises RequestError (which the daemon turns into an error
reply), never anything else; and every reply is one line of JSON.

Bugs these found and that are fixed: JSON nested ~1000 deep escaped as RecursionError;
NaN/Infinity were accepted and echoed (any user could break root's `status`); lone
surrogates went out in replies. Their tests below now pass.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ainative.ipc.protocol import (
    ALL_OPS,
    MAX_REQUEST,
    RequestError,
    int_field,
    parse_request,
    reply_error,
    reply_ok,
    str_field,
)

SETTINGS = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

# Text with everything in it: lone surrogates, NUL, newlines, astral characters.
SURROGATES = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
ANY_CHAR = st.one_of(st.characters(), SURROGATES, st.sampled_from("\x00\n\r\"\\\u2028"))
ANY_TEXT = st.text(ANY_CHAR, max_size=64)

JSON_SCALARS = st.one_of(
    st.none(), st.booleans(),
    st.integers(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    ANY_TEXT,
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(ANY_TEXT, kids, max_size=4),
    max_leaves=12,
)
OPS = st.one_of(st.sampled_from(sorted(ALL_OPS)), JSON_VALUES)
REQUESTS = st.fixed_dictionaries(
    {"op": OPS},
    optional={"pid": JSON_VALUES, "class": JSON_VALUES, "pool": JSON_VALUES,
              "extra": JSON_VALUES},
)
# Bytes that look like JSON more often than random bytes do.
JSONISH = st.text(st.sampled_from('{}[]":,0123456789.eE+-nulltruefalseop ingstau\\\x00\n'),
                  max_size=80).map(lambda s: s.encode("utf-8", "surrogatepass"))


def _check_parse(line: bytes) -> dict[str, Any] | None:
    try:
        req = parse_request(line)
    except RequestError as e:
        assert str(e)  # the message goes back to the client
        return None
    assert isinstance(req, dict)
    assert isinstance(req["op"], str) and req["op"] in ALL_OPS
    return req


def _strict_json(data: bytes) -> Any:
    """Parse as RFC 8259 JSON: no NaN/Infinity, strings must be valid Unicode (no lone
    surrogates, which strict decoders such as serde_json reject)."""
    def no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    obj = json.loads(data.decode("utf-8"), parse_constant=no_constant)
    stack = [obj]
    while stack:
        x = stack.pop()
        if isinstance(x, str):
            x.encode("utf-8")  # UnicodeEncodeError on a lone surrogate
        elif isinstance(x, dict):
            stack.extend(x)
            stack.extend(x.values())
        elif isinstance(x, list):
            stack.extend(x)
    return obj


def _check_reply(data: bytes) -> Any:
    assert isinstance(data, bytes)
    assert data.endswith(b"\n")
    assert data.count(b"\n") == 1, "a reply must be exactly one line"
    assert data.isascii()
    return json.loads(data)


def _valid_unicode(v: Any) -> bool:
    """No lone surrogate anywhere: such a request is refused (RequestError)."""
    if isinstance(v, str):
        return not any(0xD800 <= ord(c) <= 0xDFFF for c in v)
    if isinstance(v, dict):
        return all(_valid_unicode(k) and _valid_unicode(x) for k, x in v.items())
    if isinstance(v, list):
        return all(_valid_unicode(x) for x in v)
    return True


# --- parse_request ---

@SETTINGS
@given(st.binary(max_size=512))
@example(b"")
@example(b"\xff\xfe")
@example(b"\x00")
@example(b'{"op":"ping"}\x00')
@example(b'\xef\xbb\xbf{"op":"ping"}')
@example('{"op":"ping"}'.encode("utf-16"))
@example(b'{"op":"\xed\xa0\x80"}')  # a surrogate encoded in UTF-8 (invalid)
def test_parse_request_arbitrary_bytes(line: bytes) -> None:
    _check_parse(line)


@SETTINGS
@given(JSONISH)
def test_parse_request_jsonish_bytes(line: bytes) -> None:
    _check_parse(line)


@SETTINGS
@given(JSON_VALUES)
def test_parse_request_arbitrary_json(value: Any) -> None:
    _check_parse(json.dumps(value).encode())


@SETTINGS
@given(REQUESTS)
def test_parse_request_objects(req: dict[str, Any]) -> None:
    out = _check_parse(json.dumps(req).encode())
    if isinstance(req["op"], str) and req["op"] in ALL_OPS and _valid_unicode(req):
        assert out == json.loads(json.dumps(req))
    else:
        assert out is None


@pytest.mark.parametrize("n", [MAX_REQUEST - 1, MAX_REQUEST, MAX_REQUEST + 1, 4 * MAX_REQUEST])
def test_parse_request_size_limit(n: int) -> None:
    head = b'{"op":"ping","pad":"'
    line = head + b"x" * (n - len(head) - 2) + b'"}'
    assert len(line) == n
    if n > MAX_REQUEST:
        with pytest.raises(RequestError):
            parse_request(line)
    else:
        assert parse_request(line)["op"] == "ping"


def test_parse_request_huge_integer_is_a_request_error() -> None:
    with pytest.raises(RequestError):  # int() digit limit: ValueError, caught
        parse_request(b'{"op":"explain","pid":' + b"9" * 5000 + b"}")


@pytest.mark.parametrize("line", [
    b"[" * 1000,
    b'{"op":"ping","x":' + b"[" * 5000 + b"]" * 5000 + b"}",
    b'{"op":"ping","x":' + b'{"a":' * 3000 + b"1" + b"}" * 3000 + b"}",
])
def test_parse_request_deep_nesting(line: bytes) -> None:
    assert len(line) <= MAX_REQUEST
    _check_parse(line)


@pytest.mark.parametrize("const", [b"NaN", b"Infinity", b"-Infinity", b"1e999"])
def test_parse_request_rejects_non_json_numbers(const: bytes) -> None:
    with pytest.raises(RequestError):
        parse_request(b'{"op":"report_pool","pid":1,"pool":{"used":' + const + b"}}")


# --- field validators ---

@SETTINGS
@given(REQUESTS, st.sampled_from(["pid", "class", "pool", "missing"]))
def test_int_field(req: dict[str, Any], name: str) -> None:
    try:
        v = int_field(req, name)
    except RequestError:
        return
    assert type(v) is int and 0 < v <= 1 << 22


@SETTINGS
@given(REQUESTS, st.sampled_from(["pid", "class", "op", "missing"]),
       st.integers(min_value=0, max_value=100))
def test_str_field(req: dict[str, Any], name: str, max_len: int) -> None:
    try:
        v = str_field(req, name, max_len)
    except RequestError:
        return
    assert isinstance(v, str) and 0 < len(v) <= max_len


@pytest.mark.parametrize("v", [True, False, 0, -1, 1.0, 5.5, "12", None, [], {}, 2**22 + 1,
                               2**70, float("nan"), float("inf")])
def test_int_field_rejects(v: Any) -> None:
    with pytest.raises(RequestError):
        int_field({"op": "explain", "pid": v}, "pid")


# --- replies ---

@SETTINGS
@given(ANY_TEXT)
@example("\ud800")
@example("a\nb\r\n\u2028\x00")
def test_reply_error_one_line_of_json(msg: str) -> None:
    rep = _check_reply(reply_error(msg))
    # Lone surrogates go out as U+FFFD: a reply is always valid Unicode.
    want = "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in msg)
    assert rep == {"ok": False, "error": want}


@SETTINGS
@given(st.dictionaries(ANY_TEXT.filter(lambda k: k != "ok"), JSON_VALUES, max_size=5))
def test_reply_ok_one_line_of_json(fields: dict[str, Any]) -> None:
    rep = _check_reply(reply_ok(**fields))
    assert rep["ok"] is True
    if _valid_unicode(fields):
        assert rep == json.loads(json.dumps({"ok": True, **fields}))


def test_reply_ok_non_json_values_become_strings() -> None:
    rep = _check_reply(reply_ok(obj=object(), s={1, 2}, b=b"x"))
    assert all(isinstance(rep[k], str) for k in ("obj", "s", "b"))


@SETTINGS
@given(st.text(st.characters(exclude_categories=["Cs"]), max_size=64))
def test_reply_error_strict_json_for_valid_unicode(msg: str) -> None:
    assert _strict_json(reply_error(msg))["error"] == msg


def test_reply_with_lone_surrogate_is_strict_json() -> None:
    _strict_json(reply_error("\ud800"))


@pytest.mark.parametrize("v", [math.nan, math.inf, -math.inf])
def test_reply_ok_non_finite_is_strict_json(v: float) -> None:
    _strict_json(reply_ok(pools=[{"used": v}]))
