"""Pinned pool benchmark: alloc+free latency (pool vs numpy.empty vs fresh mmap), page
faults of a hot fill loop, allocator overhead for a realistic mix, and host-to-device
bandwidth on a GPU machine.

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
