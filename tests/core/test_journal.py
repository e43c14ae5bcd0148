"""The write-ahead journal survives crashes: replay, torn writes, compaction."""

from __future__ import annotations

import os
from pathlib import Path

from ainative.core.journal import Journal
from ainative.platform.base import TaskId

P = TaskId(100, 5000)
T = TaskId(101, 5001)


def test_changes_are_durable_before_they_are_made(tmp_path: Path) -> None:
    j = Journal(str(tmp_path))
    (c1, c2) = j.record([(P, P, "nice", 0, -10), (P, T, "nice", 0, -10)])
    # A second reader (the next daemon after kill -9) sees both without any close().
    j2 = Journal(str(tmp_path))
    assert [(c.task, c.knob, c.old, c.new) for c in j2.in_force()] == [
        (P, "nice", 0, -10), (T, "nice", 0, -10)]
    j.close([c1.seq], "undone")
    j3 = Journal(str(tmp_path))
    assert [c.seq for c in j3.in_force()] == [c2.seq]


def test_torn_last_line_is_ignored(tmp_path: Path) -> None:
    j = Journal(str(tmp_path))
    j.record([(P, P, "ioprio", [2, 4], [2, 0])])
    j.shutdown()
    with open(os.path.join(tmp_path, "journal.jsonl"), "a") as fh:
        fh.write('{"op":"change","seq":2,"proc":{"pid":1')
    j2 = Journal(str(tmp_path))
    assert len(j2.in_force()) == 1
    # Sequence numbers keep increasing after a replay.
    (c,) = j2.record([(P, P, "nice", 0, -10)])
    assert c.seq == 2


def test_compaction_keeps_only_changes_in_force(tmp_path: Path) -> None:
    j = Journal(str(tmp_path))
    done = j.record([(P, P, "nice", 0, i) for i in range(50)])
    j.close([c.seq for c in done[:-1]], "undone")
    j.compact()
    lines = Path(tmp_path, "journal.jsonl").read_text().splitlines()
    assert len(lines) == 1
    j2 = Journal(str(tmp_path))
    assert [c.new for c in j2.in_force()] == [49]
    # Appending after compaction still works and is replayed.
    j.record([(P, T, "affinity", [0, 1], [1])])
    assert len(Journal(str(tmp_path)).in_force()) == 2


def test_state_dir_is_private(tmp_path: Path) -> None:
    d = tmp_path / "state"
    Journal(str(d))
    assert (d.stat().st_mode & 0o777) == 0o700
    assert (Path(d, "journal.jsonl").stat().st_mode & 0o777) == 0o600
