"""The event store: every event type round-trips, queries filter, retention is bounded
and runs on a timer, and a file that is not a whole ainative trace is refused with one
line that names it."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import pytest

from ainative.telemetry.events import (
    AiTaskRegistered,
    Event,
    GpuUtilization,
    InferenceLatency,
    PolicyApplied,
    PolicyRestored,
    RanInstead,
    RunqueueLatency,
)
from ainative.telemetry.store import EventStore, TraceFileError, TraceMeta

NOW = time.time_ns()


def one_of_each(ts: int = NOW) -> list[Event]:
    return [
        InferenceLatency(ts_ns=ts, pid=10, tid=11, name="infer", duration_ns=5000,
                         request="r1"),
        RunqueueLatency(ts_ns=ts + 1, pid=10, tid=11, wait_ns=700, cpu=1,
                        ran_instead=(RanInstead(99, "stress-ng", 700),)),
        AiTaskRegistered(ts_ns=ts + 2, pid=10, tid=10, cls="inference", comm="server",
                         signals=("library:onnxruntime", "listening")),
        GpuUtilization(ts_ns=ts + 3, pid=1, tid=1, gpu=0, utilization_gpu=37.5,
                       memory_used=1 << 30, memory_total=80 << 30),
        PolicyApplied(ts_ns=ts + 4, pid=20, tid=21, knob="nice", old="0", new="19",
                      cls="background"),
        PolicyRestored(ts_ns=ts + 5, pid=20, tid=21, knob="nice", value="0",
                       why="restored: stop"),
    ]


def test_every_event_type_round_trips_and_queries_filter(tmp_path: Path) -> None:
    path = str(tmp_path / "s.db")
    evs = one_of_each()
    with EventStore(path) as s:
        assert s.add(evs) == 6
        assert list(s.query()) == evs
        assert list(s.query(types=["policy_applied", "policy_restored"])) == evs[4:]
        assert list(s.query(pid=10)) == evs[:3]
        assert list(s.query(pid=10, tid=11)) == evs[:2]
        assert list(s.query(since_ns=NOW + 2, until_ns=NOW + 3)) == evs[2:4]
        assert list(s.query(types=[])) == []
        assert s.counts()["inference_latency"] == 1
        assert s.max_value("runqueue_latency", 10) == 700
    assert os.listdir(tmp_path) == ["s.db"]  # closed: one file, no WAL beside it
    with EventStore(path, readonly=True) as r:
        assert list(r.query()) == evs
        assert r.slowest(5) == [evs[0]]


def test_trace_meta_round_trips(tmp_path: Path) -> None:
    path = str(tmp_path / "t.db")
    m = TraceMeta(host="h", kernel="6.18", started_ns=1, ended_ns=2,
                  runqueue_source="schedstat", runqueue_why="tracefs is not mounted",
                  processes={42: "server"}, extra={"socket": "/tmp/x.sock"})
    with EventStore(path, retention_s=None, max_rows=None) as s:
        s.write_trace_meta(m)
    with EventStore(path, readonly=True) as r:
        assert r.trace_meta() == m


def test_retention_by_age_and_by_rows_runs_on_a_timer(tmp_path: Path) -> None:
    # "Now" of this test, not of the module's import: add() prunes by the real clock, and
    # the whole suite runs for longer than the 60 s retention.
    NOW = time.time_ns()
    s = EventStore(str(tmp_path / "r.db"), retention_s=60, max_rows=100,
                   prune_interval_s=3600)
    old = [InferenceLatency(ts_ns=NOW - 120 * 10**9 + i, pid=1, tid=1, name="old",
                            duration_ns=1) for i in range(50)]
    new = [InferenceLatency(ts_ns=NOW + i, pid=1, tid=1, name="new", duration_ns=1)
           for i in range(150)]
    s.add(old)
    s.add(new)
    assert sum(s.counts().values()) == 200  # not pruned per insert
    assert s.prune(now_ns=NOW) == 100  # 50 too old, then 50 more beyond the newest 100
    left = list(s.query())
    assert len(left) == 100 and {e.name for e in left} == {"new"}
    assert [e.ts_ns for e in left] == [NOW + i for i in range(50, 150)]
    # When the timer is due, add() prunes by itself.
    s.prune_interval_s = 0
    s.add([InferenceLatency(ts_ns=NOW + 1000, pid=1, tid=1, name="new", duration_ns=1)])
    assert sum(s.counts().values()) == 100
    s.close()


def _store_bytes(tmp_path: Path) -> bytes:
    path = tmp_path / "good.db"
    with EventStore(str(path), retention_s=None, max_rows=None) as s:
        s.add([InferenceLatency(ts_ns=NOW + i, pid=1, tid=1, name="n" * 100,
                                duration_ns=i) for i in range(3000)])
    return path.read_bytes()


def _refused(path: Path) -> str:
    with pytest.raises(TraceFileError) as e:
        EventStore(str(path), readonly=True)
    msg = str(e.value)
    assert str(path) in msg and "\n" not in msg
    return msg


def test_what_is_not_a_trace_is_refused_in_one_line(tmp_path: Path) -> None:
    good = _store_bytes(tmp_path)
    cases = {
        "empty": (b"", "empty"),
        "random": (os.urandom(8192), "not an SQLite database"),
        "text": (b"hello, I am a text file\n" * 10, "not an SQLite database"),
        "half": (good[:len(good) // 2], "truncated"),
        "header-only": (good[:60], "truncated"),
    }
    for name, (data, why) in cases.items():
        p = tmp_path / name
        p.write_bytes(data)
        assert why in _refused(p), name
    corrupt = bytearray(good)
    corrupt[4096 * 3:4096 * 3 + 3000] = os.urandom(3000)
    (tmp_path / "corrupt").write_bytes(bytes(corrupt))
    assert "corrupt" in _refused(tmp_path / "corrupt")
    assert "does not exist" in _refused(tmp_path / "missing")
    # Another application's SQLite file, and a future schema version.
    other = tmp_path / "other.db"
    db = sqlite3.connect(other)
    db.execute("CREATE TABLE t (x)")
    db.commit()
    db.close()
    assert "not an ainative trace" in _refused(other)
    newer = tmp_path / "newer.db"
    newer.write_bytes(good)
    db = sqlite3.connect(newer)
    db.execute("PRAGMA user_version = 99")
    db.commit()
    db.close()
    assert "newer than this ainative reads" in _refused(newer)


def test_a_row_that_is_not_a_valid_event_is_named(tmp_path: Path) -> None:
    path = tmp_path / "bad-row.db"
    with EventStore(str(path), retention_s=None, max_rows=None) as s:
        s.add(one_of_each())
    db = sqlite3.connect(path)
    db.execute("UPDATE events SET payload = '{\"type\": \"inference_latency\"}' WHERE id = 3")
    db.commit()
    db.close()
    with EventStore(str(path), readonly=True) as r, \
            pytest.raises(TraceFileError, match=r"row 3 is not a valid event"):
        list(r.query())


def test_a_writable_store_is_never_a_symlink(tmp_path: Path) -> None:
    target = tmp_path / "target.db"
    target.write_bytes(b"precious")
    link = tmp_path / "link.db"
    link.symlink_to(target)
    with pytest.raises(TraceFileError, match="symlink"):
        EventStore(str(link))
    assert target.read_bytes() == b"precious"
