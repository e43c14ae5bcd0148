"""Process events on Windows by polling: psutil's process list every poll_interval,
each process known by (pid, creation time), differences turned into fork/exec/exit.

Windows offers process-start events only through WMI (Win32_ProcessStartTrace, which
needs COM and administrator rights) or a kernel ETW session; polling needs neither and
works under Wine, so it is the one source here (``fallback_reason`` says so).

select() on Windows takes only sockets, so the ticker thread wakes the daemon through a
socket pair rather than a pipe.
"""

from __future__ import annotations

import socket
import threading
import time

import psutil

from ainative.platform.base import ProcEvent
from ainative.platform.windows.procs import KERNEL_PIDS


def snapshot() -> dict[int, tuple[float, int]]:
    """pid -> (creation time, parent pid) for every process now."""
    out: dict[int, tuple[float, int]] = {}
    for p in psutil.process_iter(["create_time", "ppid"]):
        if p.pid in KERNEL_PIDS:
            continue
        ct, ppid = p.info.get("create_time"), p.info.get("ppid")
        out[p.pid] = (float(ct or 0.0), int(ppid or 0))
    return out


class WindowsPollSource:
    """An EventSource (platform.base) over process snapshots."""

    name = "poll"
    overruns = 0

    def __init__(self, poll_interval: float = 0.5) -> None:
        self.interval = poll_interval
        self.fallback_reason: str | None = (
            f"polling the process list every {poll_interval:g} s (process-start events on "
            "Windows need WMI or a kernel ETW session)")
        self._r, self._w = socket.socketpair()
        self._r.setblocking(False)
        self._w.setblocking(False)
        self._stop = threading.Event()
        self._prev = snapshot()
        self._thread = threading.Thread(target=self._tick, name="ainative-poll", daemon=True)
        self._thread.start()

    def _tick(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._w.send(b".")
            except BlockingIOError:
                pass  # a wake-up is already pending
            except OSError:
                return

    def fileno(self) -> int:
        return self._r.fileno()

    def read(self) -> list[ProcEvent]:
        try:
            while self._r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass
        now = snapshot()
        ts = time.monotonic_ns()
        out: list[ProcEvent] = []
        for pid, (born, _ppid) in self._prev.items():
            still = now.get(pid)
            if still is None or still[0] != born:
                out.append(ProcEvent("exit", pid, pid, 0, ts))
        for pid, (born, ppid) in now.items():
            old = self._prev.get(pid)
            if old is None or old[0] != born:
                # Windows has no exec: a new process is both at once.
                out.append(ProcEvent("fork", pid, pid, ppid, ts))
                out.append(ProcEvent("exec", pid, pid, 0, ts))
        self._prev = now
        return out

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._r.close()
        self._w.close()
