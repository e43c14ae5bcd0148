"""The embedded event store, which is also the trace file of ``ainative trace record``.

One SQLite file (stdlib sqlite3, WAL while open, nothing to install), two tables:

- ``events``: one row per event: ``id`` (insertion order), the columns every query
  filters on (``ts_ns``, ``type``, ``pid``, ``tid``), two the report aggregates without
  decoding (``name``: a span's name; ``value``: a span's duration or a run-queue wait, in
  ns) and ``payload``, the event's wire form (``events.encode``).
- ``meta``: key/value text: the schema version, and for a trace the host, kernel,
  start/end, the run-queue source and why it is what it is, the traced processes.

Why one table with a JSON payload rather than a table per event type: the schema lives in
one place (events.py) and a field added there needs no migration here; every row is
decoded with ``events.decode`` on the way out, so a trace file from elsewhere is checked
as strictly as a datagram; and the questions asked of a store ("this process between
then and then", "spans, slowest first") are all answered by the indexed columns:
``(ts_ns)``, ``(type, ts_ns)`` and ``(pid, ts_ns)``. A tid always comes with its pid, so
tids are filtered within a pid's rows rather than indexed.

Bounded: rows older than ``retention_s`` and beyond the newest ``max_rows`` are deleted
by ``prune()``, which ``add()`` runs at most every ``prune_interval_s`` (not per insert).
A trace file is opened with neither bound.

What is not a store is refused before anything trusts it, with one line naming the file
(``TraceFileError``): missing, empty, not SQLite, truncated (shorter than its header
says), another application's database, a schema version this code does not read, and
for reading, any corruption ``PRAGMA quick_check`` finds. Closing a store checkpoints
the WAL and leaves one self-contained file that can be copied elsewhere.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import struct
import threading
import time
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ainative.telemetry import events
from ainative.telemetry.events import Event, EventError, InferenceLatency, RunqueueLatency

SCHEMA_VERSION = 1
APPLICATION_ID = 0x61694E54  # "aiNT", in the SQLite header: this file is ainative's
SQLITE_MAGIC = b"SQLite format 3\x00"
DEFAULT_STORE_NAME = "events.db"  # in the daemon's state dir
DEFAULT_RETENTION_S = 7 * 86400.0
DEFAULT_MAX_ROWS = 2_000_000  # ~400 MB at the size of a span row with its indexes

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE events (
    id INTEGER PRIMARY KEY,
    ts_ns INTEGER NOT NULL,
    type TEXT NOT NULL,
    pid INTEGER NOT NULL,
    tid INTEGER NOT NULL,
    name TEXT,
    value INTEGER,
    payload TEXT NOT NULL
);
CREATE INDEX events_ts ON events (ts_ns);
CREATE INDEX events_type_ts ON events (type, ts_ns);
CREATE INDEX events_pid_ts ON events (pid, ts_ns);
"""


class TraceFileError(Exception):
    """A file that is not a usable ainative store or trace; one line naming the file."""


@dataclass(frozen=True)
class TraceMeta:
    """What a trace file says about its recording (the ``meta`` table, typed)."""

    schema_version: int = SCHEMA_VERSION
    host: str = ""
    kernel: str = ""
    started_ns: int | None = None
    ended_ns: int | None = None
    runqueue_source: str = "none"  # "ebpf", "schedstat" or "none"
    runqueue_why: str = ""  # why the source is not eBPF ("" when it is)
    processes: dict[int, str] = field(default_factory=dict)  # pid -> comm
    extra: dict[str, str] = field(default_factory=dict)  # anything else, as stored


def _row(ev: Event) -> tuple[int, str, int, int, str | None, int | None, str]:
    name: str | None = None
    value: int | None = None
    if isinstance(ev, InferenceLatency):
        name, value = ev.name, ev.duration_ns
    elif isinstance(ev, RunqueueLatency):
        value = ev.wait_ns
    return (ev.ts_ns, ev.TYPE, ev.pid, ev.tid, name, value, events.encode(ev).decode())


def _header_problem(path: str, head: bytes, size: int) -> str | None:
    """Why the first bytes of ``path`` are not a whole SQLite database, or None."""
    if size == 0:
        return f"{path} is empty (0 bytes): not an ainative trace; record one with " \
               "`ainative trace record -o FILE`"
    if not head.startswith(SQLITE_MAGIC):
        return (f"{path} is not an ainative trace (not an SQLite database: it starts with "
                f"{head[:16]!r}); give a file written by `ainative trace record`")
    if len(head) < 100:
        return f"{path} is truncated ({size} bytes, shorter than its own header)"
    page_size = struct.unpack_from(">H", head, 16)[0]
    page_size = 65536 if page_size == 1 else page_size
    change, pages, valid_for = struct.unpack_from(">I", head, 24)[0], struct.unpack_from(
        ">I", head, 28)[0], struct.unpack_from(">I", head, 92)[0]
    if page_size < 512 or page_size & (page_size - 1):
        return f"{path} is corrupt (its header gives a page size of {page_size})"
    if change == valid_for and pages and size < pages * page_size:
        return (f"{path} is truncated: its header says {pages * page_size} bytes, the file "
                f"has {size}; the copy or the recording was cut short")
    return None


class EventStore:
    """Events in an SQLite file at ``path``.

    ``readonly``: open an existing file for reading (``trace report``); it is checked in
    full first. Otherwise the file is created when absent (``create``) and must be a
    regular file, not a symlink. ``retention_s``/``max_rows`` None: keep everything.
    One instance is used by one thread at a time.
    """

    def __init__(self, path: str, *, retention_s: float | None = DEFAULT_RETENTION_S,
                 max_rows: int | None = DEFAULT_MAX_ROWS, readonly: bool = False,
                 create: bool = True, prune_interval_s: float = 10.0) -> None:
        self.path = path
        self.retention_s = retention_s
        self.max_rows = max_rows
        self.readonly = readonly
        self.prune_interval_s = prune_interval_s
        self._last_prune = time.monotonic()
        self._lock = threading.Lock()
        new = self._check_file(create)
        try:
            if readonly:
                uri = f"file:{urllib.parse.quote(os.path.abspath(path))}?mode=ro"
                self._db = sqlite3.connect(uri, uri=True, isolation_level=None,
                                           check_same_thread=False)
            else:
                self._db = sqlite3.connect(path, isolation_level=None,
                                           check_same_thread=False)
        except sqlite3.Error as e:
            raise TraceFileError(f"cannot open {path}: {e}") from None
        try:
            if new:
                self._create()
            else:
                self._check_schema()
            if not readonly:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
        except TraceFileError:
            self._db.close()
            raise
        except sqlite3.DatabaseError as e:
            self._db.close()
            raise TraceFileError(f"{path} is not a readable ainative trace: {e}") from None

    # --- opening ---

    def _check_file(self, create: bool) -> bool:
        """Whether the file is new (to be created); raises TraceFileError otherwise."""
        path = self.path
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            if self.readonly or not create:
                raise TraceFileError(f"{path} does not exist") from None
            return True
        except OSError as e:
            raise TraceFileError(f"cannot read {path}: {e.strerror}") from None
        if stat.S_ISLNK(st.st_mode):
            if not self.readonly:
                raise TraceFileError(f"{path} is a symlink; give the real file's path")
            try:
                st = os.stat(path)
            except OSError as e:
                raise TraceFileError(f"cannot read {path}: {e.strerror}") from None
        if not stat.S_ISREG(st.st_mode):
            raise TraceFileError(f"{path} is not a regular file")
        if st.st_size == 0 and not self.readonly:
            return True  # an empty file we may write: make it a store
        try:
            with open(path, "rb") as f:
                head = f.read(100)
        except OSError as e:
            raise TraceFileError(f"cannot read {path}: {e.strerror}") from None
        why = _header_problem(path, head, st.st_size)
        if why:
            raise TraceFileError(why)
        return False

    def _create(self) -> None:
        # One transaction: a file is either a whole empty store or not ours at all.
        self._db.executescript(
            f"BEGIN;\n{_SCHEMA}\nPRAGMA application_id = {APPLICATION_ID};\n"
            f"PRAGMA user_version = {SCHEMA_VERSION};\n"
            f"INSERT INTO meta VALUES ('schema_version', '{SCHEMA_VERSION}');\nCOMMIT;")

    def _check_schema(self) -> None:
        db, path = self._db, self.path
        app = db.execute("PRAGMA application_id").fetchone()[0]
        if app != APPLICATION_ID:
            raise TraceFileError(
                f"{path} is an SQLite database but not an ainative trace (application id "
                f"{app:#x}); give a file written by `ainative trace record`")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise TraceFileError(f"{path} has trace schema {version}, newer than this "
                                 f"ainative reads ({SCHEMA_VERSION}): upgrade ainative")
        if version != SCHEMA_VERSION:
            raise TraceFileError(f"{path} has trace schema {version}, which this ainative "
                                 f"does not read (it reads {SCHEMA_VERSION})")
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not {"meta", "events"} <= tables:
            raise TraceFileError(f"{path} is missing its tables (has: "
                                 f"{', '.join(sorted(tables)) or 'none'}): not a whole trace")
        if self.readonly:
            problems = [r[0] for r in db.execute("PRAGMA quick_check(3)")]
            if problems != ["ok"]:
                lines = [ln.strip() for p in problems for ln in str(p).splitlines()
                         if ln.strip() and not ln.startswith("***")]
                raise TraceFileError(f"{path} is corrupt: {'; '.join(lines)[:200]}")

    # --- writing ---

    def _fail(self, e: sqlite3.Error) -> TraceFileError:
        return TraceFileError(f"{self.path}: {e}")

    def add(self, evs: Iterable[Event]) -> int:
        """Insert events in one transaction; returns how many. Prunes when it is time."""
        rows = [_row(ev) for ev in evs]
        if rows:
            with self._lock:
                try:
                    self._db.execute("BEGIN")
                    self._db.executemany(
                        "INSERT INTO events (ts_ns, type, pid, tid, name, value, payload) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
                    self._db.execute("COMMIT")
                except sqlite3.Error as e:
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                    raise self._fail(e) from None
        if time.monotonic() - self._last_prune >= self.prune_interval_s:
            self.prune()
        return len(rows)

    def prune(self, now_ns: int | None = None) -> int:
        """Delete rows beyond the retention and the row limit; returns how many."""
        self._last_prune = time.monotonic()
        if self.readonly or (self.retention_s is None and self.max_rows is None):
            return 0
        deleted = 0
        with self._lock:
            try:
                self._db.execute("BEGIN")
                if self.retention_s is not None:
                    cutoff = (now_ns if now_ns is not None else time.time_ns()) - int(
                        self.retention_s * 1e9)
                    deleted += self._db.execute("DELETE FROM events WHERE ts_ns < ?",
                                                (cutoff,)).rowcount
                if self.max_rows is not None:
                    top = self._db.execute("SELECT max(id) FROM events").fetchone()[0]
                    if top is not None and top > self.max_rows:
                        deleted += self._db.execute("DELETE FROM events WHERE id <= ?",
                                                    (top - self.max_rows,)).rowcount
                self._db.execute("COMMIT")
            except sqlite3.Error as e:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise self._fail(e) from None
        return deleted

    def set_meta(self, values: Mapping[str, str]) -> None:
        with self._lock:
            try:
                self._db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                                     [(k, str(v)) for k, v in values.items()])
            except sqlite3.Error as e:
                raise self._fail(e) from None

    def write_trace_meta(self, m: TraceMeta) -> None:
        values = {"schema_version": str(m.schema_version), "host": m.host,
                  "kernel": m.kernel, "runqueue_source": m.runqueue_source,
                  "runqueue_why": m.runqueue_why,
                  "processes": json.dumps({str(k): v for k, v in sorted(m.processes.items())})}
        if m.started_ns is not None:
            values["started_ns"] = str(m.started_ns)
        if m.ended_ns is not None:
            values["ended_ns"] = str(m.ended_ns)
        values.update(m.extra)
        self.set_meta(values)

    # --- reading ---

    def _execute(self, sql: str, args: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        try:
            return self._db.execute(sql, args)
        except sqlite3.Error as e:
            raise self._fail(e) from None

    def meta(self) -> dict[str, str]:
        return {str(k): str(v) for k, v in self._execute("SELECT key, value FROM meta")}

    def trace_meta(self) -> TraceMeta:
        """The meta table as a TraceMeta (missing keys take their defaults)."""
        raw = self.meta()
        known = {"schema_version", "host", "kernel", "started_ns", "ended_ns",
                 "runqueue_source", "runqueue_why", "processes"}

        def num(key: str) -> int | None:
            v = raw.get(key)
            try:
                return int(v) if v is not None else None
            except ValueError:
                raise TraceFileError(f"{self.path}: meta {key} is not a number: "
                                     f"{v!r:.40}") from None

        procs: dict[int, str] = {}
        try:
            loaded = json.loads(raw.get("processes", "{}"))
            if isinstance(loaded, dict):
                procs = {int(k): str(v)[:64] for k, v in loaded.items()}
        except (ValueError, TypeError):
            raise TraceFileError(f"{self.path}: meta processes is not a JSON object") from None
        return TraceMeta(schema_version=num("schema_version") or SCHEMA_VERSION,
                         host=raw.get("host", ""), kernel=raw.get("kernel", ""),
                         started_ns=num("started_ns"), ended_ns=num("ended_ns"),
                         runqueue_source=raw.get("runqueue_source", "none"),
                         runqueue_why=raw.get("runqueue_why", ""), processes=procs,
                         extra={k: v for k, v in raw.items() if k not in known})

    def counts(self) -> dict[str, int]:
        """Rows per event type."""
        return {str(t): int(n) for t, n in self._execute(
            "SELECT type, count(*) FROM events GROUP BY type ORDER BY type")}

    def time_range(self) -> tuple[int, int] | None:
        lo, hi = self._execute("SELECT min(ts_ns), max(ts_ns) FROM events").fetchone()
        return None if lo is None else (int(lo), int(hi))

    def values(self, type_: str) -> Iterator[tuple[int, int, str, int]]:
        """(ts_ns, pid, name or "", value) of every row of ``type_`` with a value, in
        insertion order: the spans' durations or the run-queue waits, without decoding
        payloads."""
        cur = self._execute("SELECT ts_ns, pid, name, value FROM events WHERE type = ? AND "
                            "value IS NOT NULL ORDER BY id", (type_,))
        try:
            for ts, pid, name, value in cur:
                if not (isinstance(ts, int) and isinstance(pid, int) and isinstance(value, int)
                        and value >= 0):
                    raise TraceFileError(f"{self.path}: a {type_} row has a bad ts_ns, pid "
                                         "or value")
                yield ts, pid, name if isinstance(name, str) else "", value
        except sqlite3.Error as e:
            raise self._fail(e) from None

    def max_value(self, type_: str, pid: int | None = None) -> int:
        """The largest value of ``type_`` (of ``pid``), 0 when none."""
        sql = "SELECT max(value) FROM events WHERE type = ?"
        args: list[Any] = [type_]
        if pid is not None:
            sql += " AND pid = ?"
            args.append(pid)
        v = self._execute(sql, tuple(args)).fetchone()[0]
        return v if isinstance(v, int) and v > 0 else 0

    def first_start(self, type_: str, pid: int) -> int | None:
        """The earliest ``ts_ns - value`` of ``type_`` rows of ``pid``: for run-queue
        events, the first wakeup the source saw, i.e. since when it watched the process."""
        v = self._execute("SELECT min(ts_ns - value) FROM events WHERE type = ? AND pid = ? "
                          "AND value IS NOT NULL", (type_, pid)).fetchone()[0]
        return v if isinstance(v, int) else None

    def _decode(self, rid: Any, payload: Any) -> Event:
        try:
            if not isinstance(payload, str):
                raise EventError("payload is not text")
            return events.decode(payload.encode())
        except EventError as e:
            raise TraceFileError(f"{self.path}: row {rid} is not a valid event: {e}") from None

    def slowest(self, n: int, type_: str = InferenceLatency.TYPE) -> list[Event]:
        """The ``n`` rows of ``type_`` with the largest value, largest first."""
        cur = self._execute("SELECT id, payload FROM events WHERE type = ? AND value IS NOT "
                            "NULL ORDER BY value DESC LIMIT ?", (type_, n))
        return [self._decode(rid, p) for rid, p in cur.fetchall()]

    def query(self, types: Iterable[str] | None = None, pid: int | None = None,
              since_ns: int | None = None, until_ns: int | None = None,
              tid: int | None = None) -> Iterator[Event]:
        """Events in time order; ``types``/``pid``/``tid`` filter, ``since_ns`` and
        ``until_ns`` bound ``ts_ns`` (both inclusive)."""
        where: list[str] = []
        args: list[Any] = []
        if types is not None:
            ts = list(types)
            where.append(f"type IN ({', '.join('?' * len(ts))})" if ts else "0")
            args += ts
        for col, v, op in (("pid", pid, "="), ("tid", tid, "="), ("ts_ns", since_ns, ">="),
                           ("ts_ns", until_ns, "<=")):
            if v is not None:
                where.append(f"{col} {op} ?")
                args.append(v)
        sql = "SELECT id, payload FROM events"
        if where:
            sql += " WHERE " + " AND ".join(where)
        cur = self._execute(sql + " ORDER BY ts_ns, id", tuple(args))
        try:
            for rid, payload in cur:
                yield self._decode(rid, payload)
        except sqlite3.Error as e:
            raise self._fail(e) from None

    # --- closing ---

    def close(self) -> None:
        """Checkpoint and close: the file is then whole on its own (no -wal beside it)."""
        try:
            if not self.readonly:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                self._db.execute("PRAGMA journal_mode=DELETE")
        except sqlite3.Error:
            pass  # another connection still reads it: its WAL stays, nothing is lost
        finally:
            self._db.close()

    def __enter__(self) -> EventStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
