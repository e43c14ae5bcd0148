"""The pool's benchmark: alloc+free latency against numpy.empty and a fresh mmap, page
faults of a hot fill loop, allocator overhead for a realistic size mix, and host-to-device
copy speed when a GPU is present. Used by `ainative pool bench` and benchmarks/."""

from __future__ import annotations

import mmap
import random
import resource
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ainative.mem.pool import PinnedPool

# The sizes the issue asked about: a small tensor, an input row, the largest size class,
# a medium batch, a large batch.
SIZES = {"256 B": 256, "16 KiB": 16 << 10, "64 KiB": 64 << 10, "1 MiB": 1 << 20,
         "8 MiB": 8 << 20}
# One request's input for the staging benchmark: a 1x4096 float32 row (16 KiB).
STAGE_SHAPE = (1, 4096)


def _ns_per_op(fns: dict[str, Callable[[], None]], n: int, rounds: int = 7
               ) -> dict[str, float]:
    """Best of `rounds` rounds of n calls each, the candidates interleaved round by round
    so that noise from other processes hits all of them alike. Timed in this thread's
    CPU time: on a shared machine wall time also counts other processes' turns."""
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(rounds):
        for name, fn in fns.items():
            t = time.thread_time_ns()
            for _ in range(n):
                fn()
            best[name] = min(best[name], (time.thread_time_ns() - t) / n)
    return best


def alloc_latency(pool: PinnedPool, n: int = 20000) -> list[dict[str, Any]]:
    """alloc+free of a buffer (handle API), pool.empty (an array given back when it
    dies), numpy.empty, and a fresh mmap, per size. Nothing is touched: numpy.empty
    does not touch its memory either (a pool's is touched once, when it is made)."""
    rows = []
    for label, size in SIZES.items():
        def pool_op(size: int = size) -> None:
            pool.alloc(size).free()

        def pool_empty(size: int = size) -> None:
            pool.empty(size, np.uint8)

        def numpy_op(size: int = size) -> None:
            np.empty(size, np.uint8)

        def mmap_op(size: int = size) -> None:
            mmap.mmap(-1, size).close()

        t = _ns_per_op({"pool_ns": pool_op, "pool_empty_ns": pool_empty,
                        "numpy_empty_ns": numpy_op, "fresh_mmap_ns": mmap_op},
                       n if size < (1 << 20) else n // 4)
        rows.append({"size": label, "bytes": size, **t,
                     "ratio_alloc_free": round(t["pool_ns"] / t["numpy_empty_ns"], 2),
                     "ratio_empty": round(t["pool_empty_ns"] / t["numpy_empty_ns"], 2)})
    return rows


def staging(pool: PinnedPool, n: int = 20000) -> dict[str, Any]:
    """One request's input staged: get memory, copy the request's bytes in, hand the
    array over (into a feeds dict, as a session.run call takes it), give the memory back.
    numpy.empty does the same in ordinary memory; `copy_only_ns` is the copy alone."""
    src = np.ones(STAGE_SHAPE, np.float32)
    dst = np.empty(STAGE_SHAPE, np.float32)
    nbytes = src.nbytes
    feeds: dict[str, np.ndarray] = {}

    def pool_empty() -> None:
        a = pool.empty(STAGE_SHAPE, np.float32)
        a[...] = src
        feeds["x"] = a
        feeds.clear()

    def pool_buffer() -> None:
        b = pool.alloc(nbytes)
        a = b.array(np.float32, STAGE_SHAPE)
        a[...] = src
        feeds["x"] = a
        feeds.clear()
        del a
        b.free()

    def numpy_empty() -> None:
        a = np.empty(STAGE_SHAPE, np.float32)
        a[...] = src
        feeds["x"] = a
        feeds.clear()

    def copy_only() -> None:
        dst[...] = src

    t = _ns_per_op({"pool_empty_ns": pool_empty, "pool_buffer_ns": pool_buffer,
                    "numpy_empty_ns": numpy_empty, "copy_only_ns": copy_only}, n)
    return {"shape": list(STAGE_SHAPE), "bytes": nbytes, **t}


def _minflt() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def page_faults(pool: PinnedPool, size: int = 4 << 20, rounds: int = 50) -> dict[str, int]:
    """Minor faults taken by a loop that gets a buffer, fills it, and gives it back."""

    def pool_round() -> None:
        with pool.alloc(size) as b:
            b.array(np.uint8).fill(7)

    def numpy_round() -> None:
        np.empty(size, np.uint8).fill(7)

    out: dict[str, int] = {"rounds": rounds, "bytes": size}
    for name, fn in (("pool", pool_round), ("numpy", numpy_round)):
        fn()  # one round first, so first-call costs of the Python code are not counted
        f0 = _minflt()
        for _ in range(rounds):
            fn()
        out[name] = _minflt() - f0
    return out


def overhead(pool: PinnedPool, seed: int = 1) -> dict[str, Any]:
    """Bytes reserved against bytes asked for, for a mix like an inference server's:
    many small tensors, some activations, a few large input/output batches."""
    rng = random.Random(seed)
    bufs = []
    mix = ([lambda: rng.randint(256, 64 << 10)] * 70 + [lambda: rng.randint(64 << 10, 1 << 20)]
           * 25 + [lambda: rng.randint(1 << 20, 6 << 20)] * 5)
    try:
        while True:
            bufs.append(pool.alloc(rng.choice(mix)()))
    except MemoryError:
        pass
    s = pool.stats()
    # Asked for and reserved, from the buffers themselves (the pool's stats count small
    # blocks at their size class).
    requested = sum(b.nbytes for b in bufs)
    reserved = sum(b.reserved for b in bufs)
    # What a cache that rounds every request up to a power of two would hold for the
    # same buffers (the 2x criticism of PyTorch's and CuPy's pinned allocators).
    pow2 = sum(1 << (b.nbytes - 1).bit_length() for b in bufs)
    out = {"buffers": len(bufs), "requested": requested, "reserved": reserved,
           "overhead_pct": round(100 * (reserved - requested) / requested, 2),
           "pool_filled_pct": round(100 * requested / s["total"], 1),
           "pow2_reserved": pow2,
           "pow2_overhead_pct": round(100 * (pow2 - requested) / requested, 2)}
    for b in bufs:
        b.free()
    return out


def h2d(pool: PinnedPool, size: int = 64 << 20) -> dict[str, Any]:
    from ainative.mem.cuda import h2d_bandwidth

    pageable = np.ones(size // 4, np.float32)
    slow, via = h2d_bandwidth(pageable)
    if slow is None:
        return {"skipped": via}
    with pool.alloc(size) as b:
        a = b.array(np.float32)
        a[:] = 1.0
        fast, _ = h2d_bandwidth(a)
    return {"bytes": size, "via": via, "pool_registered": pool.cuda_registered,
            "pool_detail": pool.cuda_reason, "pinned_gb_s": round(fast or 0.0, 2),
            "pageable_gb_s": round(slow, 2)}


MIN_CAPACITY = 64 << 20  # the largest buffers the benchmark takes


def run(capacity: int | str = "256MiB", lock: str | bool = "try") -> dict[str, Any]:
    """All of the benchmark on one pool. ValueError for a capacity too small to run it."""
    with PinnedPool(capacity, lock=lock, report_to_daemon=False, name="bench") as pool:
        if pool.capacity < MIN_CAPACITY:
            raise ValueError(f"the benchmark needs a pool of at least {MIN_CAPACITY >> 20} "
                             f"MiB, not {pool.capacity >> 20} MiB")
        return {"pool": {k: pool.stats()[k] for k in ("total", "locked", "lock", "hugepages",
                                                      "cuda_registered", "cuda_detail")},
                "alloc_free": alloc_latency(pool), "staging": staging(pool),
                "page_faults": [page_faults(pool, 4 << 20, 50), page_faults(pool, 64 << 20, 10)],
                "overhead": overhead(pool), "h2d": h2d(pool)}


def format_report(r: dict[str, Any]) -> str:
    p = r["pool"]
    lines = [f"pool {p['total'] >> 20} MiB, locked={p['locked']} ({p['lock']}), "
             f"hugepages={p['hugepages']}, cuda_registered={p['cuda_registered']}", "",
             "get + give back, per call (best of 7 interleaved rounds; nothing touched):",
             f"  {'size':8s} {'alloc+free':>11s} {'pool.empty':>11s} {'numpy.empty':>12s} "
             f"{'fresh mmap':>11s}   alloc+free/numpy  pool.empty/numpy"]
    for row in r["alloc_free"]:
        lines.append(f"  {row['size']:8s} {row['pool_ns'] / 1000:9.3f}us "
                     f"{row['pool_empty_ns'] / 1000:9.3f}us "
                     f"{row['numpy_empty_ns'] / 1000:10.3f}us "
                     f"{row['fresh_mmap_ns'] / 1000:9.3f}us   "
                     f"{row['ratio_alloc_free']:15.2f}x {row['ratio_empty']:16.2f}x")
    st = r["staging"]
    lines += ["", f"staging one request's input ({'x'.join(map(str, st['shape']))} float32, "
              f"{st['bytes'] >> 10} KiB: get, copy in, hand over, give back), per request:",
              f"  pool.empty         {st['pool_empty_ns'] / 1000:7.3f}us",
              f"  alloc + array      {st['pool_buffer_ns'] / 1000:7.3f}us",
              f"  numpy.empty        {st['numpy_empty_ns'] / 1000:7.3f}us",
              f"  the copy alone     {st['copy_only_ns'] / 1000:7.3f}us"]
    lines += ["", "minor page faults of a hot loop (get a buffer, fill it, release it):"]
    for pf in r["page_faults"]:
        lines.append(f"  {pf['rounds']} rounds x {pf['bytes'] >> 20} MiB: pool {pf['pool']}, "
                     f"numpy.empty {pf['numpy']}")
    o = r["overhead"]
    lines += ["", f"allocator overhead, realistic mix ({o['buffers']} buffers filling "
              f"{o['pool_filled_pct']}% of the pool): {o['overhead_pct']}% "
              f"({o['reserved'] - o['requested']} bytes over {o['requested']}); "
              f"power-of-two rounding would reserve {o['pow2_overhead_pct']}% more"]
    h = r["h2d"]
    lines += ["", "host-to-device: " + (f"skipped ({h['skipped']})" if "skipped" in h else
              f"pool {h['pinned_gb_s']} GB/s vs pageable numpy {h['pageable_gb_s']} GB/s "
              f"({h['bytes'] >> 20} MiB copies via {h['via']}; pool "
              f"{'registered' if h['pool_registered'] else 'NOT registered: '}"
              f"{'' if h['pool_registered'] else h['pool_detail']})")]
    return "\n".join(lines)
