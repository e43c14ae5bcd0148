"""Soak: a long stress run reporting its RSS slope (leak detection) and latency.

    .venv/bin/python benchmarks/soak_rss.py [--duration 10m] [--rate 1000] [--model mlp]

RSS is sampled once a second into a ring of at most 1,024 samples that halves its
resolution when full; the slope is a least-squares fit over all but the first fifth of the
run (warm-up). Every structure that grows with run length is bounded (HDR histogram, RSS
ring, interval buffer), so a 24 h run holds; a flat slope shows nothing else grows.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", default="10m")
    ap.add_argument("--rate", default="1000")
    ap.add_argument("--model", default="mlp")
    ap.add_argument("--progress-interval", default="60")
    args = ap.parse_args()
    cmd = [sys.executable, "-m", "ainative", "stress", "--model", args.model, "--rate",
           args.rate, "--duration", args.duration, "--json", "--progress-interval",
           args.progress_interval]
    # Progress lines go to stderr, straight through; the result comes as JSON on stdout.
    r = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True)
    run = json.loads(r.stdout)["scenarios"]["run"]
    res, lat = run["resources"], run["latency"]
    print(f"soak {run['elapsed_s']:.0f} s at {args.rate}/s ({args.model}): "
          f"{run['completed']} inferences, late {run['late']}, dropped {run['dropped']}")
    print(f"  latency ms: p50 {lat['p50_ms']:.3f}  p99 {lat['p99_ms']:.3f}  "
          f"p99.9 {lat['p99_9_ms']:.3f}  max {lat['max_ms']:.3f}")
    slope = res["rss_slope_mib_per_hour"]
    print(f"  RSS: peak {res['peak_rss_mib']} MiB, last {res['rss_mib_last']} MiB, "
          f"{res['rss_samples']} samples kept (one per {res['rss_sample_stride_s']:g} s)")
    if slope is None:
        print("  RSS slope: n/a (the run is too short for a slope)")
        return 0
    print(f"  RSS slope: {slope:+.3f} MiB/h (first 20% skipped as warm-up); "
          f"over 24 h that would be {slope * 24:+.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
