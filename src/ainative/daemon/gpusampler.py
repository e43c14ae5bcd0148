"""The daemon's GPU sampler: NVML read in a thread of its own, every few seconds.

NVML calls cost milliseconds per GPU (tens with many GPUs and processes), too long for
the daemon's one loop, which must react to a serving process within a second, and too
long to make every Prometheus scrape wait for. So one thread reads every GPU each
``interval_s`` and keeps the latest report; a scrape reads that cached report
(``latest``), and reads NVML itself only when no sample is recent (the sampler stalled
or has not run yet). The loop turns each new sample into GpuUtilization events
(``drain``), so the event sinks are only ever called from the loop's thread.

Without a driver or a GPU, every read returns an unavailable report at once (nvml.py
remembers why NVML could not start), and no event is emitted.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

from ainative.gpu.nvml import NvmlReader
from ainative.gpu.report import GpuReport
from ainative.telemetry.events import GpuUtilization

DEFAULT_INTERVAL_S = 5.0


class GpuSampler:
    def __init__(self, reader: Callable[[], GpuReport] | None = None,
                 interval_s: float = DEFAULT_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        # A reader of its own: NVML's per-process samples are consumed by the reader
        # that asks (gpu/nvml.py), and `ainative status` reads through the module's one.
        self.reader = reader if reader is not None else NvmlReader()
        self.interval_s = interval_s
        self.clock = clock
        self._read_lock = threading.Lock()  # one NVML read at a time
        # (monotonic when, sequence number, report, wall-clock ns when)
        self._latest: tuple[float, int, GpuReport, int] | None = None
        self._drained = 0
        self._seq = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.tid = 0  # the sampler thread's id, for the events it causes

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="ainative-gpu", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)  # an NVML call that hangs must not hang shutdown

    def _run(self) -> None:
        self.tid = threading.get_native_id()
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval_s)

    def sample(self) -> GpuReport:
        """Read every GPU now and keep the report."""
        with self._read_lock:
            try:
                rep = self.reader()
            except Exception as e:  # the reader should not raise; a sampler never dies
                rep = GpuReport(False, f"GPU reader failed: {e!r}")
            self._seq += 1
            self._latest = (self.clock(), self._seq, rep, time.time_ns())
            return rep

    def latest(self) -> GpuReport:
        """The latest report if it is recent (two intervals), else one read now."""
        cur = self._latest
        if cur is not None and self.clock() - cur[0] <= 2 * self.interval_s:
            return cur[2]
        return self.sample()

    def drain(self) -> list[GpuUtilization]:
        """GpuUtilization events for the sample taken since the last drain (none if no
        new one); called from the daemon's loop."""
        cur = self._latest
        if cur is None or cur[1] == self._drained:
            return []
        self._drained = cur[1]
        _, _, rep, ts = cur
        return [GpuUtilization(ts, os.getpid(), self.tid or os.getpid(), g.index,
                               g.utilization_gpu, g.memory_used, g.memory_total)
                for g in rep.gpus]
