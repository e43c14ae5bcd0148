"""Contention to run the workload against: CPU hogs, memory pressure, disk I/O.

stress-ng is used when installed; otherwise small internal hogs named ``ainative-hog``
stand in (Python processes). ``loop:N`` starts N busy shell loops (``sh -c 'while :; do
:; done'``) that no rule knows: the contention a machine really has is mostly programs
nobody wrote a rule for, and only the closed loop (core/guard.py) reaches those.
Whatever is started is checked to really run before a contended figure is trusted, and
always stopped.

The hogs get their own process group (so one signal stops all of them, and a Ctrl-C on
the terminal does not reach them) but stay in the caller's session: a new session would
put them in their own scheduler autogroup, where four hogs together weigh no more than
the workload alone, and the "contended" case would quietly not be.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import psutil

from ainative.units import parse_size


class ContentionError(Exception):
    pass


@dataclass(frozen=True)
class Scenario:
    kind: str  # cpu, loop, mem, io
    amount: int  # hogs (cpu, io) or bytes (mem)

    @property
    def label(self) -> str:
        return f"{self.kind}:{self.amount if self.kind != 'mem' else _fmt(self.amount)}"


def _fmt(n: int) -> str:
    return f"{n >> 20}M" if n % (1 << 30) else f"{n >> 30}G"


def parse_scenario(text: str) -> Scenario:
    kind, _, arg = text.partition(":")
    kind = kind.strip().lower()
    try:
        if kind in ("cpu", "loop"):
            n = int(arg or "4")
        elif kind == "io":
            n = int(arg or "1")
        elif kind == "mem":
            n = parse_size(arg or "512M")
        else:
            raise ValueError
    except ValueError:
        raise ContentionError(f"bad contention {text!r}: use cpu:N, loop:N, mem:SIZE or io:N "
                              "(for example cpu:4, mem:1G, io:2)") from None
    if n <= 0:
        raise ContentionError(f"bad contention {text!r}: the amount must be positive")
    return Scenario(kind, n)


_INTERNAL_CPU = ("import ctypes\nctypes.CDLL(None).prctl(15, b'ainative-hog', 0, 0, 0)\n"
                 "x = 0\nwhile True:\n    x = (x * 1103515245 + 12345) & 0xffffffff\n")
_INTERNAL_MEM = ("import ctypes, sys\nctypes.CDLL(None).prctl(15, b'ainative-hog', 0, 0, 0)\n"
                 "n = int(sys.argv[1]); b = bytearray(n)\n"
                 "while True:\n    for i in range(0, n, 4096): b[i] = (b[i] + 1) & 255\n")
# Writes and syncs 64 MiB over and over: the page cache and the disk stay busy.
_INTERNAL_IO = ("import ctypes, os, sys\nctypes.CDLL(None).prctl(15, b'ainative-hog', 0, 0, 0)\n"
                "buf = os.urandom(1 << 20)\n"
                "fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)\n"
                "while True:\n    os.lseek(fd, 0, 0)\n"
                "    for _ in range(64): os.write(fd, buf)\n    os.fsync(fd)\n")


def _die_with_parent() -> None:
    # A hog must not outlive a stress run that was killed outright (stress-ng passes the
    # same on to its workers).
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


# stress-ng stops by itself after a day unless told otherwise; a 24 h run plus its
# warm-up would outlive that.
_FOREVER = ("--timeout", "0")


class Hogs:
    """Starts the hogs as children of this process (so a daemon scoped to it sees them)."""

    def __init__(self, scenarios: list[Scenario], use_stress_ng: bool | None = None) -> None:
        self.scenarios = scenarios
        self.stress_ng = shutil.which("stress-ng") if use_stress_ng is not False else None
        if use_stress_ng and not self.stress_ng:
            raise ContentionError("stress-ng is not installed (apt-get install stress-ng)")
        self.procs: list[subprocess.Popen[bytes]] = []
        self.tmpdir: str | None = None
        self.tool = "stress-ng" if self.stress_ng else "internal"
        self.verified: dict[str, float] = {}

    def _spawn(self, argv: list[str]) -> None:
        self.procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                                           stderr=subprocess.DEVNULL, process_group=0,
                                           preexec_fn=_die_with_parent))

    def start(self) -> None:
        """Start and verify (about a second)."""
        self.spawn()
        self.verify()

    def spawn(self) -> None:
        """Start without waiting; call verify() before trusting a contended figure."""
        for s in self.scenarios:
            if s.kind == "loop":
                for _ in range(s.amount):
                    self._spawn(["/bin/sh", "-c", "while :; do :; done"])
            elif self.stress_ng:
                if s.kind == "cpu":
                    self._spawn([self.stress_ng, "--cpu", str(s.amount), "--cpu-method",
                                 "int64", *_FOREVER])
                elif s.kind == "mem":
                    self._spawn([self.stress_ng, "--vm", "1", "--vm-bytes", str(s.amount),
                                 "--vm-keep", *_FOREVER])
                else:
                    self.tmpdir = self.tmpdir or tempfile.mkdtemp(prefix="ainative-io-")
                    self._spawn([self.stress_ng, "--hdd", str(s.amount), "--hdd-bytes", "64M",
                                 "--temp-path", self.tmpdir, *_FOREVER])
            elif s.kind == "cpu":
                for _ in range(s.amount):
                    self._spawn([sys.executable, "-c", _INTERNAL_CPU])
            elif s.kind == "mem":
                self._spawn([sys.executable, "-c", _INTERNAL_MEM, str(s.amount)])
            else:
                self.tmpdir = self.tmpdir or tempfile.mkdtemp(prefix="ainative-io-")
                for k in range(s.amount):
                    self._spawn([sys.executable, "-c", _INTERNAL_IO,
                                 os.path.join(self.tmpdir, f"hog-{k}")])

    def pids(self) -> list[int]:
        """Every hog process, stress-ng's workers included."""
        out = []
        for p in self.procs:
            try:
                ps = psutil.Process(p.pid)
                out.append(p.pid)
                out += [c.pid for c in ps.children(recursive=True)]
            except psutil.NoSuchProcess:
                continue
        return out

    def cpu_seconds(self) -> float:
        total = 0.0
        for pid in self.pids():
            try:
                t = psutil.Process(pid).cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                continue
        return total

    def expected_processes(self) -> int:
        """How many hog processes must exist: stress-ng's parent plus one worker per
        stressor (at least), or one internal hog per unit."""
        n = 0
        for s in self.scenarios:
            units = 1 if s.kind == "mem" else s.amount
            n += units + (1 if self.stress_ng and s.kind != "loop" else 0)
        return n

    def verify(self, window_s: float = 0.5, start_timeout_s: float = 5.0) -> dict[str, float]:
        """Every hog process exists and the hogs burn CPU; a hog that exited at once (a bad
        argument) or never got going fails, and everything is stopped."""
        want = self.expected_processes()
        deadline = time.monotonic() + start_timeout_s
        while True:
            dead = [p.args for p in self.procs if p.poll() is not None]
            if dead:
                self.stop()
                raise ContentionError(f"contention did not start (exited at once): {dead}")
            have = len(self.pids())
            if have >= want:
                break
            if time.monotonic() > deadline:
                self.stop()
                raise ContentionError(f"contention did not start: {have} of {want} hog "
                                      f"processes after {start_timeout_s:.0f} s")
            time.sleep(0.05)
        before = self.cpu_seconds()
        time.sleep(window_s)
        used = self.cpu_seconds() - before
        dead = [p.args for p in self.procs if p.poll() is not None]
        if dead:
            self.stop()
            raise ContentionError(f"contention did not keep running (exited at once): {dead}")
        # CPU hogs must be seen burning CPU. The bar is low on purpose: this runs while the
        # workload loads, possibly at a raised priority, on a machine that may be busy with
        # other things; what the hogs got during the measurement is reported on its own.
        # Memory and I/O hogs only need to be doing something.
        cpu_hogs = sum(s.amount for s in self.scenarios if s.kind in ("cpu", "loop"))
        cpus = len(os.sched_getaffinity(0))
        need = 0.05 * window_s * min(cpu_hogs, cpus) if cpu_hogs else 0.01
        if used < need:
            self.stop()
            raise ContentionError(f"contention started but its hogs used {used:.2f} s of CPU "
                                  f"in {window_s:.1f} s (expected at least {need:.2f}); "
                                  "results would lie")
        self.verified = {"processes": float(have), "cpu_s": round(used, 3),
                         "window_s": window_s}
        return self.verified

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self.procs.clear()
        if self.tmpdir:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None

    def __enter__(self) -> Hogs:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
