"""The write-ahead journal survives crashes: replay, torn writes, compaction."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ainative.core.journal import Journal, JournalError
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


# --- torn tails, compaction and planted files ---


def test_torn_tail_is_cut_so_the_next_record_is_readable(tmp_path: Path) -> None:
    j = Journal(str(tmp_path))
    j.record([(P, P, "nice", 0, 5)])
    j.shutdown()
    with open(tmp_path / "journal.jsonl", "a") as fh:
        fh.write('{"op":"change","seq":2,"pr')
    j2 = Journal(str(tmp_path))
    assert j2.torn_tail and j2.unusable_count == 0
    j2.record([(P, T, "nice", 0, 7)])
    j2.shutdown()
    # Without the cut, the new record would continue the torn line and be lost.
    j3 = Journal(str(tmp_path))
    assert [c.new for c in j3.in_force()] == [5, 7]
    assert not j3.torn_tail and j3.unusable_count == 0


def test_unusable_count_survives_compaction_until_taken(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    j = Journal(str(tmp_path))
    j.record([(P, P, "nice", 0, 5)])
    j.shutdown()
    with open(path, "a") as fh:
        fh.write("not json\n[]\n")
    j2 = Journal(str(tmp_path))
    assert j2.unusable_count == 2
    j2.compact()
    assert path.read_text().count("\n") == 1  # the garbage left the file ...
    assert j2.unusable_count == 2 and len(j2.unusable) == 2  # ... but not the report
    assert j2.take_unusable() == (2, ["line 2: not JSON (Expecting value: line 1 column 1 "
                                      "(char 0))", "line 3: not a JSON object ([])"])
    assert j2.unusable_count == 0 and j2.unusable == []
    assert Journal(str(tmp_path)).unusable_count == 0


def _precious(tmp_path: Path) -> Path:
    target = tmp_path / "elsewhere" / "precious"
    target.parent.mkdir()
    target.write_bytes(b"precious data\n")
    os.chmod(target, 0o600)
    return target


def _unchanged(target: Path) -> None:
    assert target.read_bytes() == b"precious data\n"
    assert target.stat().st_size == len(b"precious data\n")


def test_symlink_planted_as_journal_is_refused(tmp_path: Path) -> None:
    target = _precious(tmp_path)
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    os.symlink(target, state / "journal.jsonl")
    with pytest.raises(JournalError, match=r"state/journal.jsonl is a symbolic link"):
        Journal(str(state))
    _unchanged(target)


def test_symlink_planted_as_journal_tmp_is_refused(tmp_path: Path) -> None:
    target = _precious(tmp_path)
    state = tmp_path / "state"
    j = Journal(str(state))
    j.record([(P, P, "nice", 0, 5)])
    os.symlink(target, state / "journal.jsonl.tmp")
    with pytest.raises(JournalError, match=r"journal.jsonl.tmp is a symbolic link"):
        j.compact()
    _unchanged(target)
    # The journal itself is untouched and still works.
    j.record([(P, T, "nice", 0, 6)])
    assert [c.new for c in j.in_force()] == [5, 6]
    j.shutdown()
    # A new start refuses it at once, not at its first compaction.
    with pytest.raises(JournalError, match=r"journal.jsonl.tmp is a symbolic link"):
        Journal(str(state))
    _unchanged(target)


def test_hard_link_planted_as_journal_is_refused(tmp_path: Path) -> None:
    target = _precious(tmp_path)
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    os.link(target, state / "journal.jsonl")
    with pytest.raises(JournalError, match=r"has 2 hard links"):
        Journal(str(state))
    _unchanged(target)


def test_hard_link_planted_as_journal_tmp_is_not_truncated(tmp_path: Path) -> None:
    target = _precious(tmp_path)
    state = tmp_path / "state"
    j = Journal(str(state))
    os.link(target, state / "journal.jsonl.tmp")
    with pytest.raises(JournalError, match=r"has 2 hard links"):
        j.compact()  # opens with O_TRUNC: the truncation must come after the check
    _unchanged(target)


def test_fifo_planted_as_journal_is_refused_without_blocking(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    os.mkfifo(state / "journal.jsonl")
    with pytest.raises(JournalError, match=r"journal.jsonl is a FIFO"):
        Journal(str(state))


def test_journal_writable_by_others_is_refused(tmp_path: Path) -> None:
    Journal(str(tmp_path)).shutdown()
    os.chmod(tmp_path / "journal.jsonl", 0o666)
    with pytest.raises(JournalError, match=r"mode 0666.*chmod 600"):
        Journal(str(tmp_path))


def test_journal_through_a_dir_fd(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    dfd = os.open(state, os.O_RDONLY | os.O_DIRECTORY)
    try:
        j = Journal(str(state), dir_fd=dfd)
        j.record([(P, P, "nice", 0, 5)])
        j.compact()
        j.record([(P, T, "nice", 0, 6)])
        j.shutdown()
        # The caller's fd is its own: the journal closed only its copy.
        os.fstat(dfd)
        assert [c.new for c in Journal(str(state), dir_fd=dfd).in_force()] == [5, 6]
    finally:
        os.close(dfd)
