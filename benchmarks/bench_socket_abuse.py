"""How the daemon's control socket holds against a local user: three measurements.

1. Pipelined flood: one client sends ``{"op":"status"}`` lines as fast as it can (default
   3 MiB of them) and never reads a reply, then keeps the connection open ~2 s. Reports the
   daemon's VmRSS before / peak (VmHWM) / after, the longest a root ``ping`` waited meanwhile,
   and whether a fresh ``ping`` is answered afterwards. Run as root and as uid 65534.
2. Idle connections: a child running as uid 65534 opens 64 (then 100) connections and
   keeps them open without sending (re-opening any the daemon drops, as an attacker
   would) while root sends ``status`` 50 times. Reports p50/p99/max latency and failures
   (refused / reset / closed without a reply / timeout at 5 s), and what a client over the
   limit gets: an error line, a close, a reset or nothing.
3. A nested-quantifier rule (``cmdline = '(a+)+$'``) and a process of uid 65534 whose
   command line holds N a's and a '!': how long root's ``status`` waits right after the
   spawn (cap 60 s), per N.

Each measurement runs against a fresh daemon (``--dry-run``, scoped to this process: it
changes nothing on the machine), over a Unix socket only, bounded in time and bytes, and
everything started is stopped and removed at the end. Run as root:

    python benchmarks/bench_socket_abuse.py [--quick] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import inspect
import json
import os
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from _daemon import BenchDaemon

NOBODY = 65534
PING = b'{"op":"ping"}\n'
STATUS = b'{"op":"status"}\n'
NESTED_RULE = """
[[rule]]
name = "nested"
cmdline = '(a+)+$'
class = "background"
"""


# --- shared helpers (fuzz_socket.py uses them too) ---

def proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM (KiB) of a process, {} once it is gone."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                k, _, v = line.partition(":")
                if k in ("VmRSS", "VmHWM"):
                    out[k] = int(v.split()[0])
    except OSError:
        pass
    return out


def mib(kib: int | None) -> float | None:
    return None if kib is None else round(kib / 1024, 1)


def drop_privileges(uid: int) -> None:
    """In a child: become ``uid`` (group = uid, no supplementary groups); die with the parent."""
    if uid != os.geteuid():
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    # PR_SET_PDEATHSIG (cleared by the credential change, so set it afterwards).
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)


def fork_as(uid: int, fn: Callable[[int], None]) -> tuple[int, int]:
    """Run ``fn(write_fd)`` in a forked child as ``uid``; return (pid, read_fd)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        code = 0
        try:
            os.close(r)
            drop_privileges(uid)
            fn(w)
        except BaseException as e:  # report, never return into the parent's code
            with contextlib.suppress(Exception):
                os.write(w, (json.dumps({"child_error": f"{type(e).__name__}: {e}"}) + "\n")
                         .encode())
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    return pid, r


def write_json(fd: int, obj: Any) -> None:
    data = (json.dumps(obj) + "\n").encode()
    while data:
        n = os.write(fd, data)
        data = data[n:]


def read_json_line(fd: int, timeout: float) -> dict[str, Any] | None:
    """One JSON line from a child's pipe, None on timeout or EOF."""
    buf = b""
    end = time.monotonic() + timeout
    while b"\n" not in buf:
        left = end - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return None
        chunk = os.read(fd, 65536)
        if not chunk:
            return None
        buf += chunk
    out: dict[str, Any] = json.loads(buf.split(b"\n", 1)[0])
    return out


def reap(pid: int, timeout: float = 5.0) -> None:
    """Wait for a child; SIGKILL it if it does not end in time."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return
        if done:
            return
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def rpc(path: str, payload: bytes, timeout: float = 5.0) -> tuple[str, float, Any]:
    """Send one request on a new connection, read one reply line.

    Returns (outcome, seconds, reply): outcome is "ok", "error_reply", "refused",
    "reset", "closed" (EOF before a reply line), "timeout", "garbled" or "oserror:NAME".
    """
    t0 = time.perf_counter()
    end = t0 + timeout
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(timeout)
        try:
            s.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            return "refused", time.perf_counter() - t0, None
        s.sendall(payload)
        buf = bytearray()
        while b"\n" not in buf:
            left = end - time.perf_counter()
            if left <= 0:
                return "timeout", time.perf_counter() - t0, None
            s.settimeout(left)
            chunk = s.recv(1 << 20)
            if not chunk:
                return "closed", time.perf_counter() - t0, bytes(buf[:200]) or None
            buf += chunk
        dt = time.perf_counter() - t0
        line = bytes(buf.split(b"\n", 1)[0])
        try:
            rep = json.loads(line)
        except ValueError:
            return "garbled", dt, line[:200]
        if isinstance(rep, dict) and rep.get("ok") is True:
            return "ok", dt, rep
        return "error_reply", dt, rep
    except (ConnectionResetError, BrokenPipeError):
        return "reset", time.perf_counter() - t0, None
    except TimeoutError:
        return "timeout", time.perf_counter() - t0, None
    except OSError as e:
        name = errno.errorcode.get(e.errno or 0, str(e.errno))
        return f"oserror:{name}", time.perf_counter() - t0, None
    finally:
        s.close()


class Daemon:
    """A BenchDaemon reachable by other users, always stopped and removed afterwards.

    Works with both shapes of ``_daemon.BenchDaemon`` (scope as an argument or a flag)."""

    def __init__(self, rules_text: str | None = None, extra: tuple[str, ...] = ()) -> None:
        self.error: str | None = None
        args = ["--dry-run", "--no-cgroups", *extra]
        kw: dict[str, Any] = {"rules_text": rules_text}
        params = inspect.signature(BenchDaemon.__init__).parameters
        if "scope_pid" in params:
            kw["scope_pid"] = os.getpid()
        else:
            args += ["--scope-descendants", str(os.getpid())]
        if "shared_socket" in params:
            kw["shared_socket"] = True
        bd = BenchDaemon.__new__(BenchDaemon)
        self.bd = bd
        try:
            BenchDaemon.__init__(bd, *args, **kw)
        except SystemExit as e:
            self.error = f"{e}: {self.log_tail()}"
            self.stop()
            raise RuntimeError(self.error) from None
        # mkdtemp makes 0700 directories: let uid 65534 reach the socket.
        for path in (bd.tmp, os.path.dirname(bd.sock)):
            os.chmod(path, 0o755)

    @property
    def sock(self) -> str:
        return str(self.bd.sock)

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        inner = getattr(self.bd, "daemon", None)
        return getattr(self.bd, "proc", None) or getattr(inner, "proc", None)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def mem(self) -> dict[str, int]:
        return proc_status(self.pid)

    def cpu_s(self) -> float:
        try:
            return float(self.bd.cpu_seconds())
        except OSError:
            return float("nan")

    def log_tail(self, n: int = 600) -> str:
        inner = getattr(self.bd, "daemon", None)
        path = getattr(inner, "log_path", None) or os.path.join(
            getattr(self.bd, "tmp", "/nonexistent"), "daemon.log")
        try:
            with open(path, errors="replace") as fh:
                return fh.read()[-n:]
        except OSError:
            return ""

    def stop(self) -> int | None:
        """Stop it and remove its directory; returns its exit status (None if killed)."""
        proc = self.proc
        rc: int | None = None
        if proc is not None and proc.poll() is None:
            proc.terminate()
        with contextlib.suppress(Exception):
            inner = getattr(self.bd, "daemon", None)
            if inner is not None:
                inner.close()
        if proc is not None:
            try:
                rc = proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log = getattr(self.bd, "log", None)
        if log is not None:
            log.close()
        tmp = getattr(self.bd, "tmp", None)
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
        return rc


@contextlib.contextmanager
def daemon(rules_text: str | None = None) -> Iterator[Daemon]:
    d = Daemon(rules_text)
    try:
        yield d
    finally:
        d.stop()


def pct(xs: list[float], p: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))]


def ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1e3:.1f}"


# --- 1. pipelined flood ---

def _flood_child(path: str, total: int, hold_s: float, send_cap_s: float, w: int) -> None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(path)
    s.setblocking(False)
    stream = STATUS * (65536 // len(STATUS) + 2)
    sent, how, t0 = 0, "all sent", time.monotonic()
    while sent < total:
        if time.monotonic() - t0 > send_cap_s:
            how = f"send cap {send_cap_s:.0f} s reached"
            break
        if not select.select([], [s], [], 0.2)[1]:
            continue
        off = sent % len(STATUS)
        try:
            n = s.send(stream[off:off + min(65536, total - sent)])
        except BlockingIOError:
            continue
        except OSError as e:
            how = f"send failed: {e}"
            break
        sent += n
    write_json(w, {"sent": sent, "send_s": round(time.monotonic() - t0, 2), "how": how})
    time.sleep(hold_s)  # keep it open, never read
    s.close()


def measure_flood(uid: int, total: int, hold_s: float, send_cap_s: float,
                  rss_cap_mib: int) -> dict[str, Any]:
    res: dict[str, Any] = {"uid": uid, "bytes": total}
    with daemon() as d:
        before = d.mem()
        pings: list[tuple[str, float]] = []
        stop = threading.Event()

        def pinger() -> None:
            while not stop.is_set():
                out, dt, _ = rpc(d.sock, PING, 5.0)
                pings.append((out, dt))
                stop.wait(0.25)

        th = threading.Thread(target=pinger, daemon=True)
        cpu0 = d.cpu_s()
        pid, r = fork_as(uid, lambda w: _flood_child(d.sock, total, hold_s, send_cap_s, w))
        th.start()
        peak_rss, cap_hit, sent_info = 0, False, None
        end = time.monotonic() + send_cap_s + hold_s + 15
        try:
            while time.monotonic() < end:
                peak_rss = max(peak_rss, d.mem().get("VmRSS", 0))
                if peak_rss > rss_cap_mib * 1024:
                    cap_hit = True
                    os.kill(pid, signal.SIGKILL)
                    break
                if sent_info is None:
                    if select.select([r], [], [], 0.05)[0]:
                        sent_info = read_json_line(r, 1.0) or {"how": "child gave no report"}
                        res["ping_during_send"] = pings[:]
                else:
                    time.sleep(0.05)
                done, _ = os.waitpid(pid, os.WNOHANG)
                if done:
                    pid = 0
                    break
        finally:
            if pid:
                os.kill(pid, signal.SIGKILL)
                reap(pid)
            os.close(r)
            stop.set()
            th.join(10)
        during = res.pop("ping_during_send", pings)
        hold = pings[len(during):]
        cpu1 = d.cpu_s()
        time.sleep(1.0)  # let it notice the close
        out, dt, _ = rpc(d.sock, PING, 5.0)
        after = d.mem()
        res.update(
            sent=(sent_info or {}).get("sent"), send_s=(sent_info or {}).get("send_s"),
            how=(sent_info or {}).get("how", "no report"),
            rss_before_mib=mib(before.get("VmRSS")), rss_peak_mib=mib(after.get("VmHWM")),
            rss_peak_sampled_mib=mib(peak_rss), rss_after_mib=mib(after.get("VmRSS")),
            rss_cap_hit=cap_hit, daemon_cpu_s=round(cpu1 - cpu0, 2),
            ping_max_s_during_send=round(max((p[1] for p in during), default=0.0), 3),
            ping_fail_during_send=sum(1 for p in during if p[0] != "ok"),
            ping_max_s_during_hold=round(max((p[1] for p in hold), default=0.0), 3),
            ping_fail_during_hold=sum(1 for p in hold if p[0] != "ok"),
            ping_after=out, ping_after_s=round(dt, 4), daemon_alive=d.alive())
    return res


# --- 2. idle connections by another user ---

def _open(path: str, timeout: float = 2.0) -> socket.socket:
    """Connect; a full listen backlog answers EAGAIN at once on a Unix socket: retry."""
    end = time.monotonic() + timeout
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.connect(path)
            return s
        except BlockingIOError:
            s.close()
            if time.monotonic() > end:
                raise
            time.sleep(0.005)
        except OSError:
            s.close()
            raise


def _dead(s: socket.socket) -> bool:
    try:
        return s.recv(4096) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def _idle_child(path: str, n: int, max_s: float, reconnect: bool, ctl: int, w: int) -> None:
    conns: list[socket.socket | None] = []
    open_err = Counter[str]()
    for _ in range(n):
        try:
            conns.append(_open(path))
        except OSError as e:
            conns.append(None)
            open_err[type(e).__name__] += 1
    time.sleep(0.3)  # let the daemon accept them
    # A client over the limit (this one is number n+1 of this user's): what does it get?
    out, dt, rep = rpc(path, PING, 5.0)
    over = {"outcome": out, "s": round(dt, 4),
            "reply": rep if isinstance(rep, dict | type(None)) else repr(rep)}
    dropped = sum(1 for s in conns if s is not None and _dead(s))
    write_json(w, {"ready": True, "open_errors": dict(open_err), "over_limit": over,
                   "dropped_at_start": dropped})
    reopened = 0
    end = time.monotonic() + max_s
    while time.monotonic() < end:
        if select.select([ctl], [], [], 0.5)[0]:
            break  # the parent says stop (or died)
        if not reconnect:
            continue
        for i, s in enumerate(conns):
            if s is None or _dead(s):
                if s is not None:
                    s.close()
                try:
                    conns[i] = _open(path)
                    reopened += 1
                except OSError:
                    conns[i] = None
    alive = sum(1 for s in conns if s is not None and not _dead(s))
    write_json(w, {"reopened": reopened, "alive_at_end": alive})
    for s in conns:
        if s is not None:
            s.close()


def measure_idle(n: int, requests: int, interval: float, phase_cap_s: float,
                 reconnect: bool) -> dict[str, Any]:
    res: dict[str, Any] = {"idle_conns": n, "uid": NOBODY}
    with daemon() as d:
        base = [rpc(d.sock, STATUS, 5.0) for _ in range(5)]
        res["baseline_status_ms"] = round(statistics.median(b[1] for b in base) * 1e3, 2)
        ctl_r, ctl_w = os.pipe()
        pid, r = fork_as(NOBODY, lambda w: (os.close(ctl_w), _idle_child(
            d.sock, n, phase_cap_s + 30, reconnect, ctl_r, w)))
        os.close(ctl_r)
        try:
            ready = read_json_line(r, 30.0) or {"ready": False}
            res["child"] = ready
            lat: list[float] = []
            fails = Counter[str]()
            t_end = time.monotonic() + phase_cap_s
            sent = 0
            for _ in range(requests):
                if time.monotonic() > t_end:
                    break
                out, dt, _ = rpc(d.sock, STATUS, 5.0)
                sent += 1
                if out == "ok":
                    lat.append(dt)
                else:
                    fails[out] += 1
                time.sleep(interval)
        finally:
            os.close(ctl_w)  # tells the child to stop
            end_info = read_json_line(r, 10.0)
            os.close(r)
            reap(pid, 10.0)
        res.update(sent=sent, answered=len(lat), failures=sum(fails.values()),
                   failure_kinds=dict(fails), p50_s=pct(lat, 50), p99_s=pct(lat, 99),
                   max_s=max(lat, default=None), child_end=end_info, daemon_alive=d.alive())
    return res


# --- 3. nested-quantifier rule vs a crafted command line ---

def measure_regex(n: int, window_s: float, cap_s: float) -> dict[str, Any]:
    res: dict[str, Any] = {"n": n}
    try:
        d = Daemon(NESTED_RULE)
    except RuntimeError as e:
        res.update(refused=True, error=str(e)[-400:])
        return res
    proc: subprocess.Popen[bytes] | None = None
    try:
        sleep = shutil.which("sleep") or "/bin/sleep"
        # GNU sleep rejects a non-numeric operand and exits at once (and a process that is
        # gone is never classified), so the a's go in argv[0]: the command line the rule
        # sees is "sleep 30 aaa…a! 30"; the search backtracks the same way at the '!'.
        argv = [f"sleep 30 {'a' * n}!", "30"]
        cpu0 = d.cpu_s()
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, executable=sleep, user=NOBODY, group=NOBODY,
                                extra_groups=[], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        spawn_s = time.perf_counter() - t0
        lats: list[float] = []
        outcomes = Counter[str]()
        cap_hit = False
        while True:
            elapsed = time.perf_counter() - t0
            if elapsed >= window_s and lats:
                break
            if elapsed >= cap_s:
                cap_hit = True
                break
            out, dt, _ = rpc(d.sock, STATUS, cap_s - elapsed)
            outcomes[out] += 1
            if out == "timeout":
                cap_hit = True
                lats.append(dt)
                break
            lats.append(dt)
            time.sleep(0.01)
        res.update(refused=False, spawn_s=round(spawn_s, 4),
                   first_status_s=round(lats[0], 4) if lats else None,
                   max_status_s=round(max(lats), 4) if lats else None,
                   until_answered_s=round(time.perf_counter() - t0, 3),
                   statuses=len(lats), outcomes=dict(outcomes), cap_hit=cap_hit,
                   daemon_cpu_s=round(d.cpu_s() - cpu0, 2),
                   daemon_alive=d.alive())
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()
        d.stop()
    return res


# --- report ---

def print_report(r: dict[str, Any]) -> None:
    print("\n== 1. pipelined status flood, never reading (fresh daemon each) ==")
    print(f"{'uid':>6} {'sent KiB':>9} {'send s':>7} {'RSS before':>11} {'peak(HWM)':>10} "
          f"{'after':>7} {'cpu s':>6} {'max ping s':>11} {'ping after':>11}  note")
    for f in r["flood"]:
        if "error" in f:
            print(f"{f['uid']:>6}  error: {f['error']}")
            continue
        mp = max(f["ping_max_s_during_send"], f["ping_max_s_during_hold"])
        nf = f["ping_fail_during_send"] + f["ping_fail_during_hold"]
        note = f["how"] + ("; RSS CAP HIT" if f["rss_cap_hit"] else "")
        if nf:
            note += f"; {nf} pings failed"
        print(f"{f['uid']:>6} {(f['sent'] or 0) / 1024:>9.0f} {f['send_s'] or 0:>7.1f} "
              f"{f['rss_before_mib']:>9} M {f['rss_peak_mib']:>8} M {f['rss_after_mib']:>5} M "
              f"{f['daemon_cpu_s']:>6} {mp:>11.3f} {f['ping_after']:>11}  {note}")
    print("\n== 2. idle connections held by uid 65534; root sends status ==")
    print(f"{'conns':>5} {'sent':>5} {'ok':>4} {'fail':>5} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'max ms':>8}  {'over-limit client gets':<40} failures")
    for i in r["idle"]:
        if "error" in i:
            print(f"{i['idle_conns']:>5}  error: {i['error']}")
            continue
        ov = (i.get("child") or {}).get("over_limit") or {}
        ovs = ov.get("outcome", "?")
        if ovs == "error_reply":
            ovs = "error line: " + str((ov.get("reply") or {}).get("error", ""))[:28]
        print(f"{i['idle_conns']:>5} {i['sent']:>5} {i['answered']:>4} {i['failures']:>5} "
              f"{ms(i['p50_s']):>8} {ms(i['p99_s']):>8} {ms(i['max_s']):>8}  {ovs:<40} "
              f"{i['failure_kinds'] or '-'}")
    print("\n== 3. rule cmdline='(a+)+$' vs a uid-65534 process with N a's + '!' ==")
    print(f"{'N':>3} {'1st status s':>13} {'max status s':>13} {'daemon cpu s':>13} "
          f"{'cap hit':>8}")
    for x in r["regex"]:
        if x.get("refused"):
            print(f"{x['n']:>3}  daemon refused the rule file: {x['error'][-120:]}")
            continue
        print(f"{x['n']:>3} {x['first_status_s']:>13} {x['max_status_s']:>13} "
              f"{x['daemon_cpu_s']:>13} {x['cap_hit']!s:>8}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--quick", action="store_true", help="smaller sizes (~40 s)")
    ap.add_argument("--flood-bytes", type=int, default=None, help="default 3 MiB (quick 512 KiB)")
    ap.add_argument("--hold", type=float, default=2.0)
    ap.add_argument("--send-cap", type=float, default=40.0, help="max seconds spent sending")
    ap.add_argument("--rss-cap-mib", type=int, default=4096,
                    help="kill the flooding client if the daemon's RSS passes this")
    ap.add_argument("--idle", type=int, nargs="+", default=None, help="default 64 100")
    ap.add_argument("--requests", type=int, default=None, help="root statuses (default 50)")
    ap.add_argument("--interval", type=float, default=0.25,
                    help="seconds between root's statuses (default 0.25: past the old 10 s "
                         "client expiry)")
    ap.add_argument("--no-reconnect", action="store_true",
                    help="the idle user does not re-open connections the daemon drops")
    ap.add_argument("--n", type=int, nargs="+", default=None, help="a's (default 20 24 26)")
    ap.add_argument("--regex-cap", type=float, default=60.0)
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: it starts processes as uid 65534")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    total = args.flood_bytes or ((512 << 10) if args.quick else (3 << 20))
    idle = args.idle or ([64] if args.quick else [64, 100])
    requests = args.requests or (20 if args.quick else 50)
    ns = args.n or ([16, 20] if args.quick else [20, 24, 26])
    t0 = time.monotonic()
    rep: dict[str, Any] = {"flood": [], "idle": [], "regex": []}
    for uid in (0, NOBODY):
        try:
            rep["flood"].append(measure_flood(uid, total, args.hold, args.send_cap,
                                              args.rss_cap_mib))
        except RuntimeError as e:
            rep["flood"].append({"uid": uid, "error": str(e)})
    for n in idle:
        try:
            rep["idle"].append(measure_idle(n, requests, args.interval, 40.0,
                                            not args.no_reconnect))
        except RuntimeError as e:
            rep["idle"].append({"idle_conns": n, "error": str(e)})
    for n in ns:
        rep["regex"].append(measure_regex(n, 2.0, args.regex_cap))
    rep["elapsed_s"] = round(time.monotonic() - t0, 1)
    if args.json:
        print(json.dumps(rep, indent=1))
    else:
        print_report(rep)
        print(f"\nelapsed {rep['elapsed_s']} s")


if __name__ == "__main__":
    main()
