"""Live progress: a rich bar with current p50/p99 and throughput on a terminal, plain
report lines otherwise."""

from __future__ import annotations

import sys
from typing import TextIO

from ainative.stress.loadgen import Progress


def line(p: Progress, duration: float) -> str:
    return (f"[{p.elapsed_s:6.1f}/{duration:.0f}s] done {p.completed}  "
            f"{p.interval_throughput:7.1f} req/s  p50 {p.interval['p50_ms']:.3f} ms  "
            f"p99 {p.interval['p99_ms']:.3f} ms  late {p.late}  dropped {p.dropped}")


class PlainProgress:
    def __init__(self, duration: float, interval: float, out: TextIO = sys.stderr) -> None:
        self.duration = duration
        self.interval = interval
        self.out = out
        self._last = -1e9

    def __call__(self, p: Progress) -> None:
        if p.elapsed_s - self._last >= self.interval - 1e-6:
            self._last = p.elapsed_s
            print(line(p, self.duration), file=self.out, flush=True)

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class LiveProgress:
    """A rich progress bar whose description carries the last interval's figures."""

    def __init__(self, duration: float) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        self.duration = duration
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(),
                            TimeRemainingColumn(), transient=False,
                            console=Console(stderr=True),
                            # No refresh thread of its own: rendering holds the GIL, and
                            # the workers measured share it; we redraw once per tick.
                            auto_refresh=False)
        self.task = self.bar.add_task("starting", total=duration)

    def __call__(self, p: Progress) -> None:
        desc = (f"{p.interval_throughput:7.1f} req/s  p50 {p.interval['p50_ms']:.3f} ms  "
                f"p99 {p.interval['p99_ms']:.3f} ms  late {p.late}  dropped {p.dropped}")
        self.bar.update(self.task, completed=min(p.elapsed_s, self.duration), description=desc,
                        refresh=True)

    def __enter__(self) -> LiveProgress:
        self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()


def make_progress(duration: float, interval: float, mode: str = "auto"
                  ) -> PlainProgress | LiveProgress | None:
    """mode: auto (a bar on a terminal, plain lines otherwise), bar, plain or none."""
    if mode == "none":
        return None
    if mode == "bar" or (mode == "auto" and sys.stderr.isatty()):
        return LiveProgress(duration)
    return PlainProgress(duration, interval)
