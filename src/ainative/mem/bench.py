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

SIZES = {"small (16 KiB)": 16 << 10, "medium (256 KiB)": 256 << 10, "large (8 MiB)": 8 << 20}


def _ns_per_op(fn: Callable[[], None], n: int) -> float:
    best = float("inf")
    for _ in range(3):  # best of three: the machine is shared and noisy
        t = time.perf_counter_ns()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter_ns() - t) / n)
    return best


def alloc_latency(pool: PinnedPool) -> list[dict[str, Any]]:
    rows = []
    for label, size in SIZES.items():
        n = 2000 if size < (1 << 20) else 300

        def pool_op(size: int = size) -> None:
            pool.alloc(size).free()

        def numpy_op(size: int = size) -> None:
            a = np.empty(size, np.uint8)
            a[::4096] = 1  # memory is only real once touched
            del a

        def mmap_op(size: int = size) -> None:
            m = mmap.mmap(-1, size)
            m[::4096] = b"\1" * len(range(0, size, 4096))
            m.close()

        rows.append({"size": label, "pool_ns": _ns_per_op(pool_op, n),
                     "numpy_empty_ns": _ns_per_op(numpy_op, n),
                     "fresh_mmap_ns": _ns_per_op(mmap_op, n)})
    return rows


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
    # What a cache that rounds every request up to a power of two would hold for the
    # same buffers (the 2x criticism of PyTorch's and CuPy's pinned allocators).
    pow2 = sum(1 << (b.nbytes - 1).bit_length() for b in bufs)
    out = {"buffers": len(bufs), "requested": s["requested"], "reserved": s["used"],
           "overhead_pct": round(100 * (s["used"] - s["requested"]) / s["requested"], 2),
           "pool_filled_pct": round(100 * s["requested"] / s["total"], 1),
           "pow2_reserved": pow2,
           "pow2_overhead_pct": round(100 * (pow2 - s["requested"]) / s["requested"], 2)}
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
                "alloc_free": alloc_latency(pool),
                "page_faults": [page_faults(pool, 4 << 20, 50), page_faults(pool, 64 << 20, 10)],
                "overhead": overhead(pool), "h2d": h2d(pool)}


def format_report(r: dict[str, Any]) -> str:
    p = r["pool"]
    lines = [f"pool {p['total'] >> 20} MiB, locked={p['locked']} ({p['lock']}), "
             f"hugepages={p['hugepages']}, cuda_registered={p['cuda_registered']}", "",
             "alloc+free latency (best of 3; numpy/mmap include touching every page):",
             f"  {'size':18s} {'pool':>10s} {'numpy.empty':>12s} {'fresh mmap':>12s}"]
    for row in r["alloc_free"]:
        lines.append(f"  {row['size']:18s} {row['pool_ns'] / 1000:8.2f}us "
                     f"{row['numpy_empty_ns'] / 1000:10.2f}us "
                     f"{row['fresh_mmap_ns'] / 1000:10.2f}us")
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
