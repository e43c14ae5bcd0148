"""The change journal: every change is written (and fsynced) with the value it replaces
before it is made, so that a later start can undo it even after kill -9.

Format: JSON lines in ``<state_dir>/journal.jsonl``. A ``change`` line records
(process identity, thread identity, knob, old, new); a ``close`` line ends one change
(undone, released to a person who overrode it, gone with its process, or failed).
A change with no close line is "in force".

The file is read back by root and its old values are written into live processes, so
replay trusts nothing: a line that is not a well-formed record, or that ``validate``
refuses, is skipped, counted and remembered (``unusable``, ``unusable_count``) so the
daemon can report it, and never stops the replay. A torn last line (a crash mid-write;
no trailing newline) is expected: it is reported as ``torn_tail`` and cut off the file so
the next record starts on a line of its own.

The files are opened relative to a directory fd with O_NOFOLLOW, and an opened file must
be a regular file with one link, owned by this process's euid and writable by no one
else: a symlink or hard link planted in the state directory is refused, never written.
On Windows (no directory fds, no O_NOFOLLOW, no uids) the files are opened by path and
must be regular files with one link; who may write the state directory is its ACL's
business (%ProgramData%\\ainative inherits an administrators-only ACL).
"""

from __future__ import annotations

import errno
import json
import os
import stat
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ainative.core import knobs
from ainative.fsnames import file_kind, user_label
from ainative.platform.base import TaskId

WINDOWS = sys.platform == "win32"
if not WINDOWS:
    import fcntl

CLOSE_REASONS = ("undone", "released", "gone", "failed", "skipped")
JOURNAL_NAME = "journal.jsonl"
TMP_NAME = JOURNAL_NAME + ".tmp"

MAX_SEQ = (1 << 63) - 1  # a seq must fit a signed 64-bit integer
_RENUMBER_ABOVE = 1 << 62  # replayed seqs this high are renumbered so new ones still fit
MAX_PID = 1 << 22  # PID_MAX_LIMIT on 64-bit Linux
MAX_START_TIME = (1 << 63) - 1
MAX_UNUSABLE_KEPT = 100  # unusable lines remembered with their reason (all are counted)
_MAX_REASON = 240


class JournalError(Exception):
    """The journal cannot be used safely (one line: the path, the problem, the fix)."""


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


Validator = Callable[[Change], str | None]


def make_validator(cgroup_root: str,
                   in_scope: Callable[[TaskId], bool] | None = None) -> Validator:
    """The daemon's check of a replayed change: a value ainative itself could have written
    (core.knobs.check_change) for a process inside the daemon's scope."""

    def validate(c: Change) -> str | None:
        why = knobs.check_change(c.knob, c.old, c.new, cgroup_root)
        if why is not None:
            return why
        if in_scope is not None and not in_scope(c.proc):
            return f"outside the daemon's scope (process {c.proc.pid})"
        return None

    return validate


# --- opening files safely ---


def fd_path(dir_fd: int) -> str:
    """The path of an open directory, for messages."""
    try:
        return os.readlink(f"/proc/self/fd/{dir_fd}")
    except OSError:
        return f"<directory fd {dir_fd}>"


def check_private_file(st: os.stat_result, shown: str) -> str | None:
    """Why an opened file must not be used (None when it may): it must be a regular file
    with a single link, owned by our euid, writable by no one else."""
    if not stat.S_ISREG(st.st_mode):
        return f"{shown} is {file_kind(st.st_mode)}, not a regular file: remove it"
    euid = os.geteuid()
    if st.st_uid != euid:
        return (f"{shown} is owned by {user_label(st.st_uid)}, not by {user_label(euid)}: someone "
                f"else put it there; remove it and check who can write its directory")
    if st.st_mode & 0o022:
        return (f"{shown} has mode {stat.S_IMODE(st.st_mode):04o}, writable by group or "
                f"others: chmod 600 it")
    if st.st_nlink != 1:
        return (f"{shown} has {st.st_nlink} hard links (another name for the same file "
                f"exists, perhaps planted): remove it")
    return None


def open_private(dir_fd: int, name: str, flags: int, mode: int = 0o600, *,
                 where: str | None = None) -> int:
    """os.open(name, flags | O_NOFOLLOW | O_CLOEXEC, mode, dir_fd=dir_fd), then fstat: the
    file must pass check_private_file. O_TRUNC is applied only after the checks (a
    planted hard link is never truncated) and the open never blocks on a planted FIFO.
    Raises JournalError (one line) when the file is unsafe; FileNotFoundError as is."""
    if not name or "/" in name or name in (".", ".."):
        raise JournalError(f"bad file name {name!r}: must be a plain name inside the directory")
    shown = os.path.join(where if where is not None else fd_path(dir_fd), name)
    trunc = bool(flags & os.O_TRUNC)
    want_nonblock = bool(flags & os.O_NONBLOCK)
    oflags = (flags & ~os.O_TRUNC) | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        fd = os.open(name, oflags, mode, dir_fd=dir_fd)
    except FileNotFoundError:
        raise
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise JournalError(f"{shown} is a symbolic link (planted?): remove it; ainative "
                               f"never follows links in its state directory") from None
        raise JournalError(f"cannot open {shown}: {e.strerror}") from None
    try:
        why = check_private_file(os.fstat(fd), shown)
        if why is not None:
            raise JournalError(why)
        if not want_nonblock:
            fl = fcntl.fcntl(fd, fcntl.F_GETFL)
            fcntl.fcntl(fd, fcntl.F_SETFL, fl & ~os.O_NONBLOCK)
        if trunc:
            os.ftruncate(fd, 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_private_windows(path: str, flags: int) -> int:
    """Windows' open_private: by path, binary, not inherited by children; the file must be
    a regular file (not a directory or device) with one link."""
    trunc = bool(flags & os.O_TRUNC)
    oflags = (flags & ~os.O_TRUNC) | getattr(os, "O_BINARY", 0) | getattr(os, "O_NOINHERIT", 0)
    try:
        fd = os.open(path, oflags, 0o600)
    except FileNotFoundError:
        raise
    except OSError as e:
        raise JournalError(f"cannot open {path}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise JournalError(f"{path} is {file_kind(st.st_mode)}, not a regular file: "
                               "remove it")
        if st.st_nlink != 1:
            raise JournalError(f"{path} has {st.st_nlink} hard links (another name for the "
                               "same file exists, perhaps planted): remove it")
        if trunc:
            os.ftruncate(fd, 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


# --- parsing one line ---


class _Bad(Exception):
    pass


def _int_field(rec: dict[str, Any], key: str, lo: int, hi: int, what: str) -> int:
    if key not in rec:
        raise _Bad(f"{what} has no {key!r}")
    v = rec[key]
    if isinstance(v, bool) or not isinstance(v, int):
        raise _Bad(f"{what}: {key!r} is not an integer ({_short(v)})")
    if not lo <= v <= hi:
        raise _Bad(f"{what}: {key!r} out of range ({_short(v)})")
    return v


def _task_field(rec: dict[str, Any], key: str) -> TaskId:
    if key not in rec:
        raise _Bad(f"change record has no {key!r}")
    d = rec[key]
    if not isinstance(d, dict):
        raise _Bad(f"change record: {key!r} is not an object ({_short(d)})")
    return TaskId(_int_field(d, "pid", 1, MAX_PID, f"change record {key}"),
                  _int_field(d, "start_time", 0, MAX_START_TIME, f"change record {key}"))


def _short(v: Any) -> str:
    try:
        s = json.dumps(v)
    except (TypeError, ValueError):
        s = repr(v)
    return s if len(s) <= 40 else s[:37] + "..."


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _parse(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        raise _Bad("empty line")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _Bad(f"not UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})") from None
    try:
        rec = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as e:
        raise _Bad(f"not JSON ({str(e).splitlines()[0] if str(e) else type(e).__name__})") \
            from None
    if not isinstance(rec, dict):
        raise _Bad(f"not a JSON object ({_short(rec)})")
    return rec


def _one_line(s: str) -> str:
    s = " ".join(s.split())
    return s if len(s) <= _MAX_REASON else s[:_MAX_REASON - 3] + "..."


class Journal:
    def __init__(self, state_dir: str, *, dir_fd: int | None = None,
                 validate: Validator | None = None) -> None:
        self.state_dir = state_dir
        self.path = os.path.join(state_dir, JOURNAL_NAME)
        self._validate = validate
        self._lock = threading.Lock()
        self._open: dict[int, Change] = {}
        self._seq = 0
        self._lines = 0
        # What replay could not use: every such line is counted; the first
        # MAX_UNUSABLE_KEPT are remembered as "line N: reason". Kept across compaction
        # until the daemon takes them (take_unusable).
        self.unusable: list[str] = []
        self.unusable_count = 0
        self.torn_tail = False
        if WINDOWS:
            os.makedirs(state_dir, mode=0o700, exist_ok=True)
            self._dfd = -1  # no directory fds on Windows: files are opened by path
        elif dir_fd is None:
            os.makedirs(state_dir, mode=0o700, exist_ok=True)
            try:
                self._dfd = os.open(state_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError as e:
                raise JournalError(f"cannot open state dir {state_dir}: {e.strerror}") from None
        else:
            self._dfd = os.dup(dir_fd)
        try:
            self._fd = self._open_file(JOURNAL_NAME, os.O_RDWR | os.O_APPEND | os.O_CREAT)
            try:
                self._replay()
                self._check_tmp()
                if self._seq > _RENUMBER_ABOVE:
                    self._renumber()
            except BaseException:
                os.close(self._fd)
                raise
        except BaseException:
            if self._dfd >= 0:
                os.close(self._dfd)
            raise

    def _open_file(self, name: str, flags: int) -> int:
        if WINDOWS:
            return open_private_windows(os.path.join(self.state_dir, name), flags)
        return open_private(self._dfd, name, flags, 0o600, where=self.state_dir)

    def _check_tmp(self) -> None:
        """A leftover journal.jsonl.tmp (a crash mid-compaction) is normal; a planted link
        there is refused now rather than at the first compaction."""
        try:
            os.close(self._open_file(TMP_NAME, os.O_RDONLY))
        except FileNotFoundError:
            pass

    def _read_all(self) -> bytes:
        chunks: list[bytes] = []
        off = 0
        if WINDOWS:  # no pread: the file is O_APPEND, so moving the offset is harmless
            os.lseek(self._fd, 0, os.SEEK_SET)
        while True:
            b = os.read(self._fd, 1 << 20) if WINDOWS else os.pread(self._fd, 1 << 20, off)
            if not b:
                return b"".join(chunks)
            chunks.append(b)
            off += len(b)

    def _bad(self, lineno: int, why: str) -> None:
        self.unusable_count += 1
        if len(self.unusable) < MAX_UNUSABLE_KEPT:
            self.unusable.append(_one_line(f"line {lineno}: {why}"))

    def _replay(self) -> None:
        data = self._read_all()
        lines = data.split(b"\n")
        tail = lines.pop()  # b"" when the file ends with a newline
        if tail:
            # Torn write from a crash: the change it began was never made. Cut it off so
            # the next record does not continue it on the same line.
            self.torn_tail = True
            os.ftruncate(self._fd, len(data) - len(tail))
            os.fsync(self._fd)
        first_line: dict[int, int] = {}  # seq of each accepted change -> its line
        for i, raw in enumerate(lines, start=1):
            self._lines += 1
            try:
                self._apply(raw, i, first_line)
            except _Bad as e:
                self._bad(i, str(e))

    def _apply(self, raw: bytes, lineno: int, first_line: dict[int, int]) -> None:
        rec = _parse(raw)
        op = rec.get("op")
        if op == "close":
            seq = _int_field(rec, "seq", 1, MAX_SEQ, "close record")
            reason = rec.get("reason")
            if reason not in CLOSE_REASONS:
                raise _Bad(f"close record for seq {seq}: unknown reason {_short(reason)}")
            self._open.pop(seq, None)  # a close for an unknown seq is harmless
            return
        if op != "change":
            raise _Bad(f"unknown op {_short(op)}" if "op" in rec else "record has no 'op'")
        seq = _int_field(rec, "seq", 1, MAX_SEQ, "change record")
        proc = _task_field(rec, "proc")
        task = _task_field(rec, "task")
        if not isinstance(rec.get("knob"), str):
            raise _Bad(f"change record {seq}: 'knob' is missing or not a string")
        for key in ("old", "new"):
            if key not in rec:
                raise _Bad(f"change record {seq} has no {key!r}")
        if seq in first_line:
            raise _Bad(f"duplicate seq {seq} (first at line {first_line[seq]}); kept the first")
        ch = Change(seq, proc, task, rec["knob"], rec["old"], rec["new"])
        if self._validate is not None:
            try:
                why = self._validate(ch)
            except Exception as e:  # a validator bug must not stop a recovery
                why = f"validator failed: {type(e).__name__}: {e}"
            if why is not None:
                raise _Bad(f"change {seq} ({ch.knob} of process {proc.pid}): {why}")
        first_line[seq] = lineno
        self._open[seq] = ch
        self._seq = max(self._seq, seq)

    def _renumber(self) -> None:
        """Seqs near the 64-bit limit (only a damaged or forged file has them): number the
        changes in force 1..n and rewrite the file, before anyone holds a Change."""
        old = sorted(self._open.values(), key=lambda c: c.seq)
        self._open = {}
        for i, c in enumerate(old, start=1):
            c.seq = i
            self._open[i] = c
        self._seq = len(old)
        self.compact()

    def take_unusable(self) -> tuple[int, list[str]]:
        """The count and the remembered lines replay could not use, then forget them (the
        daemon calls this once it has reported them)."""
        with self._lock:
            out = (self.unusable_count, self.unusable)
            self.unusable_count, self.unusable = 0, []
            return out

    def _write(self, recs: Iterable[dict[str, Any]]) -> None:
        data = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in recs).encode()
        if not data:
            return
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
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
        """Rewrite the file with only the changes in force (atomically). Unusable lines are
        dropped from the file; their count stays in memory (unusable_count)."""
        with self._lock:
            fd = self._open_file(TMP_NAME, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            try:
                data = "".join(json.dumps(c.to_json(), separators=(",", ":")) + "\n"
                               for c in sorted(self._open.values(), key=lambda c: c.seq))
                view = memoryview(data.encode())
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                os.fsync(fd)
            finally:
                os.close(fd)
            if WINDOWS:
                # An open file cannot be replaced on Windows: close it first. NTFS journals
                # the rename itself (a directory cannot be fsynced there).
                os.close(self._fd)
                self._fd = -1
                os.replace(os.path.join(self.state_dir, TMP_NAME),
                           os.path.join(self.state_dir, JOURNAL_NAME))
            else:
                os.replace(TMP_NAME, JOURNAL_NAME, src_dir_fd=self._dfd, dst_dir_fd=self._dfd)
                os.fsync(self._dfd)
            new_fd = self._open_file(JOURNAL_NAME, os.O_RDWR | os.O_APPEND)
            if self._fd >= 0:
                os.close(self._fd)
            self._fd = new_fd
            self._lines = len(self._open)

    def maybe_compact(self, max_lines: int = 10000) -> None:
        if self._lines > max_lines and self._lines > 4 * len(self._open):
            self.compact()

    def shutdown(self) -> None:
        fds, self._fd, self._dfd = (self._fd, self._dfd), -1, -1
        for fd in fds:
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
