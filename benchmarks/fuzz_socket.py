"""Fuzz the daemon's control socket from root and from uid 65534, seeded and bounded.

Against a fresh daemon (``--dry-run``, scoped to this process: nothing on the machine
changes) it sends a seeded random mix of requests: random bytes, truncated and garbled
JSON, JSON of wrong types, unknown ops, lines up to and over the 64 KiB limit, NULs and
invalid UTF-8, deep nesting, NaN and lone surrogates; one per connection, many pipelined
on one connection, half-closed connections and connections closed mid-request. Requests
go in batches, each batch from a forked child running as root or as uid 65534; after
every batch the daemon must be alive and answer ``ping`` (a dead daemon is a crash, one
that stays silent 10 s a hang: it is restarted and the run goes on). Exit status 1 if
the daemon crashed or hung.

    python benchmarks/fuzz_socket.py [--requests 20000] [--seed 1] [--duration 600] [--json]

A batch replays alone with ``--seed S --only-batch B`` (the failing batch is printed).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import selectors
import signal
import socket
import sys
import time
from collections import Counter
from typing import Any

from bench_socket_abuse import (
    NOBODY,
    Daemon,
    fork_as,
    proc_status,
    read_json_line,
    reap,
    rpc,
    write_json,
)

PING = b'{"op":"ping"}\n'
OPS = ["ping", "status", "explain", "register", "restore", "resume", "reload", "report_pool"]
CLASSES = ["inference", "training", "background"]
LIMIT = 64 * 1024
BATCH = 250


# --- payloads: each returns the bytes of one request, without the final newline ---

def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _rand_str(rng: random.Random, n: int | None = None) -> str:
    n = rng.randint(0, 40) if n is None else n
    pools = ["abcxyz_-", "\x00\n\t\"\\", "éü中文🙂", "\ud800\udfff", "pingstatus"]
    alphabet = rng.choice(pools) + rng.choice(pools)
    return "".join(rng.choice(alphabet) for _ in range(n))


def _weird_value(rng: random.Random) -> Any:
    return rng.choice([
        "12", "-1", "", 1.5, -1, 0, 2**70, -(2**70), 1 << 22, (1 << 22) + 1, True, False,
        None, [], [1], {"a": 1}, 1e308, float("nan"), float("inf"), "x" * rng.choice([65, 4000]),
        {"nested": {"deeper": [1, {"x": None}]}}, _rand_str(rng),
    ])


def _valid(rng: random.Random, me: int) -> bytes:
    op = rng.choice(OPS)
    req: dict[str, Any] = {"op": op}
    pid = rng.choice([me, os.getppid(), 1, 2, rng.randint(1, 1 << 22)])
    if op in ("explain", "register", "report_pool"):
        req["pid"] = pid
    if op == "register":
        req["class"] = rng.choice([*CLASSES, "nope", ""])
    if op == "report_pool":
        req["pool"] = rng.choice([
            {"name": _rand_str(rng, 8), "total": rng.randint(0, 1 << 40), "used": 1},
            {"name": "p", "closed": True},
            {"name": "nan", "used": float("nan"), "peak": float("inf")},
            {"name": "\ud800"},
            "not a dict", {"big": "y" * 9000},
        ])
        req["pid"] = me
    if op in ("restore", "resume", "reload") and rng.random() < 0.8:
        req["op"] = rng.choice(["ping", "status"])  # keep the daemon mostly unpaused
    return json.dumps(req).encode()


def _random_bytes(rng: random.Random, me: int) -> bytes:
    return rng.randbytes(rng.choice([rng.randint(1, 64), rng.randint(64, 4096)]))


def _truncated(rng: random.Random, me: int) -> bytes:
    b = _valid(rng, me)
    return b[: rng.randint(0, max(0, len(b) - 1))]


def _garbled(rng: random.Random, me: int) -> bytes:
    b = bytearray(_valid(rng, me))
    for _ in range(rng.randint(1, 5)):
        b[rng.randrange(len(b))] = rng.randrange(256)
    return bytes(b)


def _wrong_types(rng: random.Random, me: int) -> bytes:
    kind = rng.randrange(4)
    if kind == 0:
        req: Any = {"op": rng.choice([5, -1, 1.5, [], ["ping"], None, {}, {"op": "ping"}, True])}
    elif kind == 1:
        req = {"op": rng.choice(["explain", "register", "report_pool"]), "pid": _weird_value(rng),
               "class": rng.choice(CLASSES)}
    elif kind == 2:
        req = {"op": "register", "pid": me, "class": rng.choice(
            ["z" * rng.choice([65, 1000, 60000]), {"nested": {"obj": 1}}, [], 5, None, ""])}
    else:
        req = rng.choice([[], [{"op": "ping"}], "ping", 1, None, True, {"OP": "ping"}, {}])
    return json.dumps(req).encode()


def _unknown_op(rng: random.Random, me: int) -> bytes:
    op = rng.choice(["PING", "ping ", " status", "", "pong", "shutdown", "exec", "__class__",
                     _rand_str(rng), "q" * rng.choice([100, 5000])])
    return json.dumps({"op": op}).encode()


def _long_line(rng: random.Random, me: int) -> bytes:
    size = rng.choice([LIMIT - 100, LIMIT - 1, LIMIT, LIMIT + 1, LIMIT + 2, 70000, 2 * LIMIT,
                       5 * LIMIT, 1 << 20 if rng.random() < 0.1 else 3 * LIMIT])
    if rng.random() < 0.7:
        head = b'{"op":"ping","pad":"'
        return head + b"x" * max(0, size - len(head) - 2) + b'"}'
    return bytes([rng.choice(b"a{[ \x00")]) * size


# Built here, in the parent: a child running as uid 65534 may not be able to import the
# codecs these need (the interpreter's files may be unreadable to it).
_NUL_UTF8 = [
    b'{"op":"ping\x00"}', b'{"op":"ping"}\x00', b"\x00" * 7, b"\x00" * 100,
    b'{"op":"\xff\xfe"}', b'{"op":"\xc0\xaf"}', b'\xef\xbb\xbf{"op":"ping"}',
    '{"op":"ping"}'.encode("utf-16"), '{"op":"ping"}'.encode("utf-32-le"),
    b'{"op":"\\ud800"}', b'{"op":"ping","x":"\\udfff\\u0000"}', b'{"op":"\xed\xa0\x80"}',
    b'{"op":"ping","pid":NaN}', b'{"op":"explain","pid":Infinity}', b"\r\n\r\n",
    b'{"op":"ping"}\r', b"\x1b[2J\x07", b'{"op": "ping", "op": "status"}',
]


def _nul_utf8(rng: random.Random, me: int) -> bytes:
    return rng.choice(_NUL_UTF8[:2]) if rng.random() < 0.1 else rng.choice(_NUL_UTF8)


def _deep(rng: random.Random, me: int) -> bytes:
    k = rng.choice([100, 1000, 5000, 20000, 32000])
    if rng.random() < 0.5:
        return b"[" * k + b"]" * k if 2 * k <= LIMIT else b"[" * k
    return b'{"op":"ping","x":' + b'{"a":' * k + b"1" + b"}" * k + b"}"


GENERATORS = [(_valid, 20), (_random_bytes, 12), (_truncated, 10), (_garbled, 10),
              (_wrong_types, 14), (_unknown_op, 8), (_long_line, 4), (_nul_utf8, 10),
              (_deep, 4)]
MODES = [("single", 40), ("pipelined", 25), ("half_close", 15), ("mid_close", 10),
         ("close_unread", 5), ("big_pipeline", 5)]


def _pick(rng: random.Random, table: list[tuple[Any, int]]) -> Any:
    return rng.choices([x for x, _ in table], weights=[w for _, w in table])[0]


def _expected(data: bytes) -> int:
    """Replies the daemon owes for newline-terminated lines (blank lines get none)."""
    return sum(1 for line in data.split(b"\n")[:-1] if line.strip())


# --- one connection ---

def exchange(path: str, data: bytes, *, read: bool, shut_wr: bool, expect: int | None,
             timeout: float = 3.0) -> dict[str, Any]:
    out: dict[str, Any] = {"fail": None, "replies": [], "eof": False}
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.setblocking(False)
    end = time.monotonic() + timeout
    try:
        while True:
            try:
                s.connect(path)
                break
            except BlockingIOError:  # backlog full
                if time.monotonic() > end:
                    out["fail"] = "connect_eagain"
                    return out
                time.sleep(0.002)
            except (FileNotFoundError, ConnectionRefusedError):
                out["fail"] = "refused"
                return out
        view, off, buf, shut = memoryview(data), 0, bytearray(), False
        sel = selectors.DefaultSelector()
        sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE)
        while True:
            if off >= len(data) and not shut and shut_wr:
                s.shutdown(socket.SHUT_WR)
                shut = True
            if off >= len(data) and not read:
                break
            if expect is not None and len(out["replies"]) >= expect and off >= len(data):
                break
            want = (selectors.EVENT_READ if read else 0) | (
                selectors.EVENT_WRITE if off < len(data) else 0)
            sel.modify(s, want)
            left = end - time.monotonic()
            if left <= 0:
                out["fail"] = "timeout"
                break
            ev = sel.select(left)
            if not ev:
                continue
            mask = ev[0][1]
            if mask & selectors.EVENT_WRITE:
                try:
                    off += s.send(view[off:off + 65536])
                except BlockingIOError:
                    pass
                except (BrokenPipeError, ConnectionResetError):
                    out["fail"] = "reset_on_send"
                    off = len(data)  # stop sending; read what came back
            if mask & selectors.EVENT_READ:
                try:
                    chunk = s.recv(1 << 20)
                except BlockingIOError:
                    continue
                except ConnectionResetError:
                    out["fail"] = out["fail"] or "reset"
                    break
                if not chunk:
                    out["eof"] = True
                    break
                buf += chunk
                while b"\n" in buf:
                    line, _, rest = bytes(buf).partition(b"\n")
                    buf = bytearray(rest)
                    out["replies"].append(line)
        sel.close()
    except OSError as e:
        out["fail"] = out["fail"] or f"oserror:{type(e).__name__}"
    finally:
        s.close()
    return out


def _strict_ok(line: bytes) -> str | None:
    """Why a reply line is not strict JSON (NaN/Infinity, lone surrogates), else None."""
    def no_const(c: str) -> Any:
        raise ValueError(f"non-standard constant {c}")

    try:
        obj = json.loads(line, parse_constant=no_const)
    except ValueError as e:
        return str(e)[:60]
    stack = [obj]
    while stack:
        x = stack.pop()
        if isinstance(x, str):
            try:
                x.encode("utf-8")
            except UnicodeEncodeError:
                return "lone surrogate in a string"
        elif isinstance(x, dict):
            stack.extend(x.keys())
            stack.extend(x.values())
        elif isinstance(x, list):
            stack.extend(x)
    return None


# --- one batch, in a child as root or uid 65534 ---

def run_batch(path: str, seed: int, batch: int, n: int, w: int) -> None:
    rng = random.Random(f"{seed}:{batch}")
    me = os.getpid()
    c: Counter[str] = Counter()
    samples: dict[str, str] = {}
    sent = 0
    while sent < n:
        mode = _pick(rng, MODES)
        if mode == "big_pipeline":
            reqs = [rng.choice([b'{"op":"ping"}', b'{"op":"status"}', b"garbage"])
                    for _ in range(rng.randint(200, 1000))]
        elif mode in ("pipelined", "close_unread"):
            reqs = [_pick(rng, GENERATORS)(rng, me) for _ in range(rng.randint(2, 40))]
        else:
            reqs = [_pick(rng, GENERATORS)(rng, me)]
        reqs = reqs[: max(1, n - sent)]
        sent += len(reqs)
        c["requests"] += len(reqs)
        c[f"mode_{mode}"] += 1
        data = b"".join(r + b"\n" for r in reqs)
        if mode == "half_close":
            data = data[:-1]  # the last request is unterminated, then SHUT_WR
            r = exchange(path, data, read=True, shut_wr=True, expect=None)
        elif mode == "mid_close":
            cut = rng.randint(0, max(0, len(data) - 2))
            r = exchange(path, data[:cut], read=False, shut_wr=False, expect=None)
        elif mode == "close_unread":
            r = exchange(path, data, read=False, shut_wr=False, expect=None)
        else:
            r = exchange(path, data, read=True, shut_wr=False, expect=_expected(data))
            if r["fail"] == "timeout" and not r["eof"]:
                c["missing_replies"] += _expected(data) - len(r["replies"])
                samples.setdefault("missing_reply", repr(data[:160]))
        c["connections"] += 1
        if r["fail"]:
            c[f"fail_{r['fail']}"] += 1
            c["conn_failures"] += 1
        for line in r["replies"]:
            c["replies"] += 1
            try:
                rep = json.loads(line)
            except ValueError:
                c["garbled_replies"] += 1
                samples.setdefault("garbled_reply", repr(line[:160]))
                continue
            why = _strict_ok(line)
            if why:
                c["nonstrict_json_replies"] += 1
                samples.setdefault(f"nonstrict: {why}", repr(line[:200]))
            if not isinstance(rep, dict) or rep.get("ok") is not True:
                c["error_replies"] += 1
                err = str(rep.get("error", "")) if isinstance(rep, dict) else ""
                if err.startswith("internal error"):
                    c["internal_error_replies"] += 1
                    samples.setdefault(f"internal: {err[:60]}", err[:200])
    write_json(w, {"counts": dict(c), "samples": samples})


# --- the run ---

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--duration", type=float, default=600.0, help="stop after this many s")
    ap.add_argument("--batch", type=int, default=BATCH, help="requests between liveness checks")
    ap.add_argument("--only-batch", type=int, default=None, help="replay one batch")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: batches run as root and as uid 65534")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    t0 = time.monotonic()
    totals: Counter[str] = Counter()
    samples: dict[str, str] = {}
    incidents: list[dict[str, Any]] = []
    d = Daemon()
    rss_before = proc_status(d.pid).get("VmRSS", 0)
    peak = 0
    batches = range(math.ceil(args.requests / args.batch))
    if args.only_batch is not None:
        batches = range(args.only_batch, args.only_batch + 1)
    done_batches = 0
    try:
        for b in batches:
            if time.monotonic() - t0 > args.duration:
                totals["stopped_by_duration"] = 1
                break
            uid = 0 if random.Random(f"{args.seed}:{b}:uid").random() < 0.5 else NOBODY
            n = min(args.batch, args.requests - b * args.batch)
            if args.only_batch is not None:
                n = args.batch
            path = d.sock
            pid, r = fork_as(uid, lambda w, b=b, n=n, path=path: run_batch(
                path, args.seed, b, n, w))
            res = read_json_line(r, 300.0)
            os.close(r)
            reap(pid, 5.0)
            done_batches += 1
            totals[f"batches_uid{uid}"] += 1
            if res is None or "child_error" in (res or {}):
                totals["batch_errors"] += 1
                samples.setdefault(f"batch_error b{b}", str(res)[:300])
            else:
                totals.update(res["counts"])
                for k, v in res["samples"].items():
                    samples.setdefault(k, v)
            peak = max(peak, proc_status(d.pid).get("VmHWM", 0))
            # liveness: alive and answering ping
            if not d.alive():
                log = d.log_tail(800)
                rc = d.stop()
                incidents.append({"kind": "crash", "batch": b, "uid": uid, "rc": rc,
                                  "seed": args.seed, "log": log})
                d = Daemon()
                continue
            t_ping = time.monotonic()
            while True:
                out, _, _ = rpc(d.sock, PING, 5.0)
                if out == "ok" or time.monotonic() - t_ping > 10 or not d.alive():
                    break
                time.sleep(0.2)
            if out != "ok":
                kind = "crash" if not d.alive() else "hang"
                log = d.log_tail(800)
                rc = d.stop()
                incidents.append({"kind": kind, "batch": b, "uid": uid, "rc": rc,
                                  "seed": args.seed, "ping": out, "log": log})
                d = Daemon()
    finally:
        after = proc_status(d.pid)
        peak = max(peak, after.get("VmHWM", 0))
        d.stop()
    elapsed = time.monotonic() - t0
    crashes = sum(1 for i in incidents if i["kind"] == "crash")
    hangs = sum(1 for i in incidents if i["kind"] == "hang")
    rep = {
        "seed": args.seed, "batches": done_batches, "elapsed_s": round(elapsed, 1),
        "requests_sent": totals["requests"], "connections": totals["connections"],
        "replies": totals["replies"], "error_replies": totals["error_replies"],
        "internal_error_replies": totals["internal_error_replies"],
        "nonstrict_json_replies": totals["nonstrict_json_replies"],
        "garbled_replies": totals["garbled_replies"],
        "missing_replies": totals["missing_replies"],
        "connection_failures": totals["conn_failures"],
        "failure_kinds": {k[5:]: v for k, v in totals.items() if k.startswith("fail_")},
        "modes": {k[5:]: v for k, v in totals.items() if k.startswith("mode_")},
        "batches_by_uid": {k[8:]: v for k, v in totals.items() if k.startswith("batches_")},
        "daemon_crashes": crashes, "daemon_hangs": hangs, "incidents": incidents,
        "rss_before_mib": round(rss_before / 1024, 1),
        "rss_after_mib": round(after.get("VmRSS", 0) / 1024, 1),
        "rss_peak_mib": round(peak / 1024, 1),
        "stopped_by_duration": bool(totals["stopped_by_duration"]),
        "batch_errors": totals["batch_errors"], "samples": samples,
    }
    if args.json:
        print(json.dumps(rep, indent=1))
    else:
        print(f"fuzz seed {args.seed}: {done_batches} batches "
              f"(uid 0: {rep['batches_by_uid'].get('uid0', 0)}, "
              f"uid 65534: {rep['batches_by_uid'].get('uid65534', 0)}) in {elapsed:.1f} s"
              + ("  [stopped by --duration]" if rep["stopped_by_duration"] else ""))
        print(f"  requests sent        {rep['requests_sent']:>8}   connections "
              f"{rep['connections']} ({', '.join(f'{k} {v}' for k, v in rep['modes'].items())})")
        print(f"  replies received     {rep['replies']:>8}   error replies {rep['error_replies']}"
              f" (internal errors {rep['internal_error_replies']}), not strict JSON "
              f"{rep['nonstrict_json_replies']}, garbled {rep['garbled_replies']}, "
              f"missing {rep['missing_replies']}")
        print(f"  connection failures  {rep['connection_failures']:>8}   {rep['failure_kinds']}")
        print(f"  daemon crashes       {crashes:>8}   hangs {hangs}")
        print(f"  daemon RSS           before {rep['rss_before_mib']} MiB, after "
              f"{rep['rss_after_mib']} MiB, peak {rep['rss_peak_mib']} MiB")
        if rep["batch_errors"]:
            print(f"  batch errors (fuzzer side) {rep['batch_errors']}")
        for k, v in samples.items():
            print(f"  sample {k}: {v[:160]}")
        for i in incidents:
            print(f"  {i['kind'].upper()} after batch {i['batch']} (uid {i['uid']}); replay: "
                  f"--seed {i['seed']} --only-batch {i['batch']}; log: {i['log'][-300:]!r}")
    return 1 if crashes or hangs else 0


if __name__ == "__main__":
    sys.exit(main())
