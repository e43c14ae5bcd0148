"""Replay never dies on garbage: every valid record is kept, every bad line is counted and
named with its line number, and forged records (values ainative never writes, targets
outside its groups, processes outside its scope) are refused rather than undone."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ainative.core.journal import MAX_UNUSABLE_KEPT, Change, Journal, make_validator
from ainative.platform.base import TaskId

P = {"pid": 100, "start_time": 5000}
T = {"pid": 101, "start_time": 5001}
ROOT = "ainative"
OUT_OF_SCOPE = 666


def change(seq: Any, knob: str = "nice", old: Any = 0, new: Any = 5, proc: Any = None,
           task: Any = None, **extra: Any) -> dict[str, Any]:
    rec = {"op": "change", "seq": seq, "proc": P if proc is None else proc,
           "task": T if task is None else task, "knob": knob, "old": old, "new": new}
    rec.update(extra)
    return rec


def line(rec: Any) -> bytes:
    return json.dumps(rec).encode() + b"\n"


def validator() -> Any:
    return make_validator(ROOT, in_scope=lambda t: t.pid != OUT_OF_SCOPE)


# (line, a word the reason must contain) for each bad line; None for a good one.
CASES: list[tuple[bytes, str | None]] = [
    (line(change(1)), None),
    (b"[]\n", "not a JSON object"),
    (b"{}\n", "no 'op'"),
    (line({k: v for k, v in change(50).items() if k != "task"}), "no 'task'"),
    (line(change("x")), "'seq' is not an integer"),
    (line(change(True)), "'seq' is not an integer"),
    (b'{"op":"change","seq":51,"knob":"nice\xff\xfe"}\n', "not UTF-8 (byte 0xff"),
    (line(change(10**30)), "'seq' out of range"),
    (line(change(52, proc={"pid": 10**30, "start_time": 1})), "'pid' out of range"),
    (line(change(53, task={"pid": 7, "start_time": -1})), "'start_time' out of range"),
    (line(change(54, task={"pid": "7", "start_time": 1})), "'pid' is not an integer"),
    (b'{"op":"change","seq":' + b"9" * 5000 + b"}\n", "not JSON"),
    (line(change(55, old=10**30)), "nice must be an integer"),
    (b'{"op":"change","seq":56,"proc":{"pid":1,"start_time":1},"task":{"pid":1,'
     b'"start_time":1},"knob":"nice","old":NaN,"new":1}\n', "not JSON"),
    (line(change(57, knob="policy", old=[1, 50], new=[0, 0])), "undo would set a realtime"),
    (line(change(58, knob="ioprio", old=[1, 0], new=[2, 4])), "undo would set a realtime"),
    (line(change(59, knob="cgroup", old={"0": "/"}, new={"0": "/../../etc"})),
     "not normalised"),
    (line(change(60, knob="cgroup", old={"0": "/"}, new={"0": "/system.slice"})),
     "not one of ainative's groups"),
    (line(change(61, proc={"pid": OUT_OF_SCOPE, "start_time": 1})),
     "outside the daemon's scope (process 666)"),
    (line(change(62, knob="rlimit")), "unknown knob"),
    (line(change(2, knob="affinity", old=[0, 1], new=[1])), None),
    (line({"op": "close", "seq": 99, "reason": "undone"}), None),  # unknown seq: harmless
    (line(change(1, new=19)), "duplicate seq 1 (first at line 1)"),
    (line({"op": "erase", "seq": 2}), "unknown op \"erase\""),
    (line({"op": "close", "seq": 2, "reason": "because"}), "unknown reason"),
    (line({"op": "close", "seq": "2", "reason": "undone"}), "'seq' is not an integer"),
    (b"[" * 100_000 + b"\n", "not JSON"),
    (b"\n", "empty line"),
    (line(change(3, knob="cgroup", old={"0": "/user.slice"}, new={"0": "/ainative.batch"})),
     None),
    (line(change(4)), None),
    (line({"op": "close", "seq": 4, "reason": "undone"}), None),
]


def test_garbage_lines_are_counted_and_valid_records_kept(tmp_path: Path) -> None:
    with open(tmp_path / "journal.jsonl", "wb") as fh:
        for raw, _ in CASES:
            fh.write(raw)
        fh.write(b'{"op":"change","seq":5,"proc":{"pid":1')  # torn tail: not garbage
    j = Journal(str(tmp_path), validate=validator())
    assert [(c.seq, c.knob, c.new) for c in j.in_force()] == [
        (1, "nice", 5), (2, "affinity", [1]), (3, "cgroup", {"0": "/ainative.batch"})]
    bad = [(i, why) for i, (_, why) in enumerate(CASES, start=1) if why is not None]
    assert j.unusable_count == len(bad)
    assert len(j.unusable) == len(bad)
    for (lineno, why), msg in zip(bad, j.unusable, strict=True):
        assert msg.startswith(f"line {lineno}: "), msg
        assert why in msg, (why, msg)
        assert "\n" not in msg and len(msg) <= 240
    assert j.torn_tail
    # New sequence numbers follow the accepted records only.
    (c,) = j.record([(TaskId(100, 5000), TaskId(100, 5000), "nice", 0, 1)])
    assert c.seq == 5
    j.shutdown()
    j2 = Journal(str(tmp_path), validate=validator())
    assert [c.seq for c in j2.in_force()] == [1, 2, 3, 5]
    assert not j2.torn_tail


def test_seqs_near_the_limit_are_renumbered(tmp_path: Path) -> None:
    (tmp_path / "journal.jsonl").write_bytes(line(change(7)) + line(change(2**63 - 1)))
    j = Journal(str(tmp_path))
    assert [(c.seq, c.new) for c in j.in_force()] == [(1, 5), (2, 5)]
    (c,) = j.record([(TaskId(100, 5000), TaskId(100, 5000), "nice", 0, 1)])
    assert c.seq == 3
    j.shutdown()
    assert [c.seq for c in Journal(str(tmp_path)).in_force()] == [1, 2, 3]


def test_without_a_validator_only_the_shape_is_checked(tmp_path: Path) -> None:
    (tmp_path / "journal.jsonl").write_bytes(
        line(change(1, knob="policy", old=[1, 50], new=[0, 0])) + b"[]\n")
    j = Journal(str(tmp_path))
    assert [c.seq for c in j.in_force()] == [1]
    assert j.unusable_count == 1


def test_a_failing_validator_rejects_the_record_not_the_replay(tmp_path: Path) -> None:
    (tmp_path / "journal.jsonl").write_bytes(line(change(1)) + line(change(2)))

    def boom(c: Change) -> str | None:
        if c.seq == 2:
            raise KeyError("oops")
        return None

    j = Journal(str(tmp_path), validate=boom)
    assert [c.seq for c in j.in_force()] == [1]
    assert j.unusable == ["line 2: change 2 (nice of process 100): validator failed: "
                          "KeyError: 'oops'"]


def test_the_list_of_unusable_lines_is_bounded_but_the_count_is_not(tmp_path: Path) -> None:
    n = MAX_UNUSABLE_KEPT + 50
    (tmp_path / "journal.jsonl").write_bytes(b"x\n" * n + line(change(1)))
    j = Journal(str(tmp_path))
    assert j.unusable_count == n
    assert len(j.unusable) == MAX_UNUSABLE_KEPT
    assert [c.seq for c in j.in_force()] == [1]


def test_make_validator() -> None:
    v = make_validator("ainative", in_scope=lambda t: t.pid == 100)
    p, q = TaskId(100, 1), TaskId(200, 1)
    assert v(Change(1, p, p, "nice", 0, 5)) is None
    assert v(Change(1, q, q, "nice", 0, 5)) == "outside the daemon's scope (process 200)"
    assert v(Change(1, p, p, "nice", 0, 50)) == "nice must be an integer -20..19, not 50"
    assert v(Change(1, p, p, "slice", 0, 100_000)) is None
    assert v(Change(1, p, p, "slice", 100_000, 0)) is None  # back to the kernel's default
    assert "slice must be 0" in str(v(Change(1, p, p, "slice", 0, 50_000)))
    assert v(Change(1, p, p, "cgroup", {"0": "/"}, {"0": "/ainative.x"})) is None
    assert "not one of ainative's groups" in str(
        v(Change(1, p, p, "cgroup", {"0": "/"}, {"0": "/other.x"})))
    assert make_validator("ainative")(Change(1, q, q, "nice", 0, 5)) is None


# --- arbitrary bytes ---

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(), kids, max_size=4),
    max_leaves=12)
record_like = st.fixed_dictionaries(
    {"op": st.sampled_from(["change", "close", "other"]),
     "seq": st.one_of(st.integers(-3, 2**64), st.text(max_size=3), st.none()),
     "proc": st.one_of(json_values, st.fixed_dictionaries(
         {"pid": st.integers(-1, 2**23), "start_time": st.integers(-1, 2**64)})),
     "knob": st.sampled_from(["nice", "policy", "ioprio", "slice", "affinity", "cgroup",
                              "x"]),
     "old": json_values, "new": json_values},
    optional={"task": json_values, "reason": st.sampled_from(["gone", "x"])})
garbage_line = st.one_of(
    st.binary(max_size=120),
    st.text(max_size=60).map(lambda s: s.encode("utf-8", "surrogatepass")),
    json_values.map(lambda v: json.dumps(v).encode()),
    record_like.map(lambda v: json.dumps(v).encode()),
)

VALID = [change(1), change(2, knob="affinity", old=[0, 1], new=[0]),
         change(3, knob="cgroup", old={"0": "/"}, new={"0": "/ainative.batch"})]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(garbage=st.lists(garbage_line, max_size=8), newline_at_end=st.booleans(),
       at_front=st.booleans())
def test_arbitrary_lines_never_raise_nor_lose_valid_records(
        garbage: list[bytes], newline_at_end: bool, at_front: bool) -> None:
    body = b"\n".join(garbage)
    if garbage and newline_at_end:
        body += b"\n"
    valid = b"".join(line(r) for r in VALID)
    if at_front and garbage:
        # Garbage before the valid records: a trailing partial line becomes whole.
        data = body + (b"" if body.endswith(b"\n") else b"\n") + valid
    else:
        data = valid + body
    with tempfile.TemporaryDirectory() as d:
        Path(d, "journal.jsonl").write_bytes(data)
        j = Journal(d, validate=validator())
        seqs = {c.seq for c in j.in_force()}
        if not any(b"close" in g for g in garbage):
            # Only a close record may end a change; a garbage line that happens to be a
            # valid change with the same seq wins only when it comes first.
            assert {1, 2, 3} <= seqs
            if not at_front:
                assert [(c.seq, c.knob, c.new) for c in j.in_force()][:3] == [
                    (r["seq"], r["knob"], r["new"]) for r in VALID]
        assert j.unusable_count >= len(j.unusable)
        (c,) = j.record([(TaskId(5, 5), TaskId(5, 5), "nice", 0, 1)])
        j.shutdown()
        # What was recorded after replay is read back, whatever came before it.
        assert c.seq in {x.seq for x in Journal(d, validate=validator()).in_force()}
