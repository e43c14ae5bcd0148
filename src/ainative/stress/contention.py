"""Contention to run the workload against: CPU hogs, memory pressure, disk I/O.

stress-ng is used when installed; otherwise small internal hogs named ``ainative-hog``
stand in (Python processes, so CPU and memory only). Whatever is started is checked to
really run before a contended figure is trusted, and always stopped.
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

from ainative.core.classes import parse_size


class ContentionError(Exception):
    pass


@dataclass(frozen=True)
class Scenario:
    kind: str  # cpu, mem, io
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
        if kind == "cpu":
            n = int(arg or "4")
        elif kind == "io":
            n = int(arg or "1")
        elif kind == "mem":
            n = parse_size(arg or "512M")
        else:
            raise ValueError
    except ValueError:
        raise ContentionError(f"bad contention {text!r}: use cpu:N, mem:SIZE or io:N "
                              "(for example cpu:4, mem:1G, io:2)") from None
    if n <= 0:
        raise ContentionError(f"bad contention {text!r}: the amount must be positive")
    return Scenario(kind, n)


_INTERNAL_CPU = ("import ctypes\nctypes.CDLL(None).prctl(15, b'ainative-hog', 0, 0, 0)\n"
                 "x = 0\nwhile True:\n    x = (x * 1103515245 + 12345) & 0xffffffff\n")
_INTERNAL_MEM = ("import ctypes, sys\nctypes.CDLL(None).prctl(15, b'ainative-hog', 0, 0, 0)\n"
                 "n = int(sys.argv[1]); b = bytearray(n)\n"
                 "while True:\n    for i in range(0, n, 4096): b[i] = (b[i] + 1) & 255\n")


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

    def _spawn(self, argv: list[str]) -> None:
        self.procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                                           stderr=subprocess.DEVNULL, start_new_session=True))

    def start(self) -> None:
        for s in self.scenarios:
            if self.stress_ng:
                if s.kind == "cpu":
                    self._spawn([self.stress_ng, "--cpu", str(s.amount), "--cpu-method",
                                 "int64"])
                elif s.kind == "mem":
                    self._spawn([self.stress_ng, "--vm", "1", "--vm-bytes", str(s.amount),
                                 "--vm-keep"])
                else:
                    self.tmpdir = self.tmpdir or tempfile.mkdtemp(prefix="ainative-io-")
                    self._spawn([self.stress_ng, "--hdd", str(s.amount), "--hdd-bytes", "64M",
                                 "--temp-path", self.tmpdir])
            elif s.kind == "cpu":
                for _ in range(s.amount):
                    self._spawn([sys.executable, "-c", _INTERNAL_CPU])
            elif s.kind == "mem":
                self._spawn([sys.executable, "-c", _INTERNAL_MEM, str(s.amount)])
            else:
                raise ContentionError("io contention needs stress-ng (apt-get install stress-ng)")
        self.verify()

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

    def verify(self, wait_s: float = 0.6) -> None:
        """The hogs exist and burn CPU; a hog that exited at once (a bad argument) fails."""
        time.sleep(wait_s)
        dead = [p.args for p in self.procs if p.poll() is not None]
        if dead:
            self.stop()
            raise ContentionError(f"contention did not start (exited at once): {dead}")
        before = self.cpu_seconds()
        time.sleep(0.4)
        if self.cpu_seconds() - before < 0.05:
            self.stop()
            raise ContentionError("contention started but uses no CPU; results would lie")

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
