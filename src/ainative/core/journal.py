"""The change journal: every change is written (and fsynced) with the value it replaces
before it is made, so that a later start can undo it even after kill -9.

Format: JSON lines in ``<state_dir>/journal.jsonl``. A ``change`` line records
(process identity, thread identity, knob, old, new); a ``close`` line ends one change
(undone, released to a person who overrode it, gone with its process, or failed).
A change with no close line is "in force". A torn last line (crash mid-write) is ignored.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ainative.platform.base import TaskId

CLOSE_REASONS = ("undone", "released", "gone", "failed", "skipped")


@dataclass
class Change:
    seq: int
    proc: TaskId
    task: TaskId
    knob: str
    old: Any
    new: Any

    def to_json(self) -> dict[str, Any]:
        return {"op": "change", "seq": self.seq, "proc": self.proc.to_json(),
                "task": self.task.to_json(), "knob": self.knob, "old": self.old, "new": self.new}


class Journal:
    def __init__(self, state_dir: str) -> None:
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
        self.path = os.path.join(state_dir, "journal.jsonl")
        self._lock = threading.Lock()
        self._open: dict[int, Change] = {}
        self._seq = 0
        self._lines = 0
        self._replay()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def _replay(self) -> None:
        try:
            with open(self.path, encoding="utf-8") as fh:
                for line in fh:
                    self._lines += 1
                    try:
                        rec = json.loads(line)
                    except ValueError:
                        continue  # torn write from a crash: the change it began never ran
                    if rec.get("op") == "change":
                        ch = Change(int(rec["seq"]), TaskId.from_json(rec["proc"]),
                                    TaskId.from_json(rec["task"]), rec["knob"], rec["old"],
                                    rec["new"])
                        self._open[ch.seq] = ch
                        self._seq = max(self._seq, ch.seq)
                    elif rec.get("op") == "close":
                        self._open.pop(int(rec["seq"]), None)
        except FileNotFoundError:
            pass

    def _write(self, recs: Iterable[dict[str, Any]]) -> None:
        data = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in recs).encode()
        if not data:
            return
        os.write(self._fd, data)
        os.fsync(self._fd)
        self._lines += data.count(b"\n")

    def record(self, items: list[tuple[TaskId, TaskId, str, Any, Any]]) -> list[Change]:
        """Write ahead: journal every change of one batch with a single fsync."""
        with self._lock:
            out: list[Change] = []
            for proc, task, knob, old, new in items:
                self._seq += 1
                out.append(Change(self._seq, proc, task, knob, old, new))
            self._write(c.to_json() for c in out)
            for c in out:
                self._open[c.seq] = c
            return out

    def close(self, seqs: Iterable[int], reason: str) -> None:
        assert reason in CLOSE_REASONS, reason
        with self._lock:
            todo = [s for s in seqs if s in self._open]
            self._write({"op": "close", "seq": s, "reason": reason} for s in todo)
            for s in todo:
                del self._open[s]

    def in_force(self) -> list[Change]:
        with self._lock:
            return sorted(self._open.values(), key=lambda c: c.seq)

    def compact(self) -> None:
        """Rewrite the file with only the changes in force (atomically)."""
        with self._lock:
            tmp = self.path + ".tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                data = "".join(json.dumps(c.to_json(), separators=(",", ":")) + "\n"
                               for c in sorted(self._open.values(), key=lambda c: c.seq))
                os.write(fd, data.encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            dfd = os.open(os.path.dirname(self.path), os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
            os.close(self._fd)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
            self._lines = len(self._open)

    def maybe_compact(self, max_lines: int = 10000) -> None:
        if self._lines > max_lines and self._lines > 4 * len(self._open):
            self.compact()

    def shutdown(self) -> None:
        try:
            os.close(self._fd)
        except OSError:
            pass
