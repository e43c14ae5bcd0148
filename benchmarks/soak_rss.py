"""Soak: a long stress run reporting its RSS slope (leak detection) and latency.

    .venv/bin/python benchmarks/soak_rss.py [--duration 10m] [--rate 1000] [--model mlp]

A flat slope (a few MiB/h at most, within sampling noise) means nothing grows with run
length; every structure in the run is bounded (HDR histogram, RSS ring), so a 24 h run
holds.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", default="10m")
    ap.add_argument("--rate", default="1000")
    ap.add_argument("--model", default="mlp")
    args = ap.parse_args()
    r = subprocess.run([sys.executable, "-m", "ainative", "stress", "--model", args.model,
                        "--rate", args.rate, "--duration", args.duration, "--json"],
                       capture_output=True, text=True, check=True)
    run = json.loads(r.stdout)["scenarios"]["run"]
    res, lat = run["resources"], run["latency"]
    print(f"soak {args.duration} at {args.rate}/s ({args.model}): {run['completed']} "
          f"inferences, late {run['late']}, dropped {run['dropped']}")
    print(f"  latency ms: p50 {lat['p50_ms']:.3f}  p99 {lat['p99_ms']:.3f}  "
          f"p99.9 {lat['p99_9_ms']:.3f}  max {lat['max_ms']:.3f}")
    print(f"  RSS: peak {res['peak_rss_mib']} MiB, last {res['rss_mib_last']} MiB, slope "
          f"{res['rss_slope_mib_per_hour']} MiB/h over {res['rss_samples']} samples "
          "(first 20% skipped as warm-up)")


if __name__ == "__main__":
    main()
