"""Pinned pool benchmark, in one run: alloc+free of a buffer and pool.empty against
numpy.empty (and a fresh mmap) at 256 B, 16 KiB, 64 KiB, 1 MiB and 8 MiB with the ratios;
the cost of staging one request's input through the pool; page faults of a hot fill
loop; allocator overhead for a realistic mix; host-to-device bandwidth on a GPU machine.

    .venv/bin/python benchmarks/bench_pool.py [--capacity 256MiB] [--json]
"""

from __future__ import annotations

import argparse
import json

from ainative.mem.bench import format_report, run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--capacity", default="256MiB")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    r = run(args.capacity)
    print(json.dumps(r, indent=2) if args.json else format_report(r))


if __name__ == "__main__":
    main()
