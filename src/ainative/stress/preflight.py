"""Checks of a stress run's arguments that must fail before the run, not after it: a
report directory that cannot be written would lose the whole run's summary at the end,
and a pinned pool too small for one request fails every request."""

from __future__ import annotations

import math
import os
import tempfile

from ainative.stress.batch import InputSpec, nbytes
from ainative.units import parse_size


class PreflightError(Exception):
    """An argument the run cannot work with; the message names the flag and the fix."""


def check_report_dir(directory: str) -> None:
    """The directory exists (or is made now) and a file can be written in it."""
    try:
        os.makedirs(directory, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".ainative-probe-"):
            pass
    except OSError as e:
        why = e.strerror or str(e)
        raise PreflightError(f"--report {directory}: cannot write there ({why}); give a "
                             "directory you can write to") from None


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.2f} MiB" if n >= 1 << 20 else f"{n / 1024:.1f} KiB"


def check_pool(size_text: str, specs: list[InputSpec], workers: int) -> None:
    """A pinned pool of size_text can hold one request's inputs for each of the workers
    at once (each stages its request there while it runs). Tried on a real pool when the
    size is near the need, since the allocator's size classes and slabs take more than
    the bytes asked for; a pool many times the need is not mapped twice."""
    size = parse_size(size_text)
    need = [nbytes(s) for s in specs if nbytes(s) > 0]
    total = sum(need) * workers
    suggest = f"--pool {max(64, math.ceil(4 * total / (1 << 20)))}M"
    what = (f"one request's inputs take {_mib(sum(need))} and up to {workers} request(s) "
            f"are staged at once ({_mib(total)})")
    if size < total:
        raise PreflightError(f"--pool {size_text}: too small: {what}; use {suggest}")
    if size >= 16 * total + (16 << 20):
        return
    from ainative.mem import PinnedPool

    pool = PinnedPool(size, lock="never", hugepages="never", cuda_register=False,
                      name="stress-preflight", report_to_daemon=False)
    bufs = []
    try:
        for _ in range(workers):
            for n in need:
                bufs.append(pool.alloc(n))
    except MemoryError:
        raise PreflightError(f"--pool {size_text}: too small: {what}, and the pool's "
                             f"size classes need more than that; use {suggest}") from None
    finally:
        for b in bufs:
            b.free()
        pool.close()
