"""The cost of an in-process span, as the traced code pays it.

For each case a fresh Python process times ``--runs`` rounds of ``--spans`` iterations
of ``with ainative.span("infer"):`` around nothing (the span is all there is) and prints
the median ns per span, beside an empty ``with`` block of the same loop for reference;
then it flushes and prints what became of the spans (sent, dropped by reason):

- drop: no collector listening (AINATIVE_EVENTS names a path where nothing is bound);
- listen: an EventReceiver in another process receives every datagram;
- listen, paced: the same, with spans 20 us apart (50,000/s, what a busy server
  sends), so the sender keeps up and nothing is dropped for overflow.

A tight loop of spans is far faster than the sender can ship datagrams (each is a
send(2)), so in the unpaced cases the bounded ring overflows: that is the design (drop
and count, never block), and the figures say how many. Run:
python benchmarks/bench_span_cost.py
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def child(spans: int, runs: int, pace_us: float) -> None:
    import ainative
    from ainative.telemetry import span as sp

    class Empty:
        def __enter__(self) -> None:
            return None

        def __exit__(self, *exc: object) -> None:
            return None

    def loop(cm: object, n: int) -> float:
        if pace_us:
            gap = int(pace_us * 1000)
            busy = 0
            nxt = time.perf_counter_ns()
            for _ in range(n):
                while time.perf_counter_ns() < nxt:
                    pass
                t0 = time.perf_counter_ns()
                with ainative.span("infer"):
                    pass
                busy += time.perf_counter_ns() - t0
                nxt += gap
            return busy / n
        t0 = time.perf_counter_ns()
        if cm is None:
            for _ in range(n):
                with ainative.span("infer"):
                    pass
        else:
            for _ in range(n):
                with cm:  # type: ignore[attr-defined]
                    pass
        return (time.perf_counter_ns() - t0) / n

    loop(None, 1000)  # starts the sender thread, warms the caches
    sp.flush(2.0)
    empty = statistics.median(loop(Empty(), spans) for _ in range(runs)) if not pace_us else 0
    per = []
    for _ in range(runs):
        per.append(loop(None, spans))
        sp.flush(5.0)
    st = sp.stats()
    print(json.dumps({"ns_per_span": statistics.median(per), "min": min(per), "max": max(per),
                      "empty_with_ns": empty, "recorded": st.recorded, "sent": st.sent,
                      "dropped": st.dropped, "dropped_by_reason": st.dropped_by_reason}))


def receiver(path: str) -> None:
    from ainative.telemetry.collector import EventReceiver

    stop = threading.Event()
    n = [0]

    def on_event(_ev: object) -> None:
        n[0] += 1

    r = EventReceiver(path, on_event)
    print("ready", flush=True)
    t = threading.Thread(target=r.run, args=(stop,), daemon=True)
    t.start()
    sys.stdin.readline()  # the parent says when to stop
    stop.set()
    t.join()
    r.handle_readable()
    st = r.stats()
    print(json.dumps({"accepted": st.accepted, "rejected": st.rejected}), flush=True)
    r.close()


def run_case(label: str, env_path: str, args: argparse.Namespace, pace_us: float = 0.0,
             listen: bool = False) -> None:
    rx = None
    if listen:
        rx = subprocess.Popen([sys.executable, __file__, "--receiver", env_path],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert rx.stdout is not None and rx.stdin is not None
        assert rx.stdout.readline().strip() == "ready"
    env = dict(os.environ, AINATIVE_EVENTS=env_path)
    spans = args.spans if not pace_us else min(args.spans, 20000)
    out = subprocess.run([sys.executable, __file__, "--child", str(spans), str(args.runs),
                          str(pace_us)], env=env, capture_output=True, text=True, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    got = ""
    if rx is not None:
        assert rx.stdin is not None and rx.stdout is not None
        rx.stdin.write("stop\n")
        rx.stdin.flush()
        got = rx.stdout.readline().strip()
        rx.wait(10)
        got = f", collector accepted {json.loads(got)['accepted']}"
    ref = f" (empty with-block {res['empty_with_ns']:.0f} ns)" if res["empty_with_ns"] else ""
    print(f"{label:<24} {res['ns_per_span']:7.0f} ns/span median of {args.runs} x {spans} "
          f"[{res['min']:.0f}-{res['max']:.0f}]{ref}")
    print(f"{'':<24} recorded {res['recorded']}, sent {res['sent']}, dropped "
          f"{res['dropped']} {res['dropped_by_reason'] or ''}{got}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--spans", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--child", nargs=3, metavar=("SPANS", "RUNS", "PACE_US"))
    ap.add_argument("--receiver", metavar="PATH")
    args = ap.parse_args()
    if args.child:
        child(int(args.child[0]), int(args.child[1]), float(args.child[2]))
        return
    if args.receiver:
        receiver(args.receiver)
        return
    with tempfile.TemporaryDirectory(prefix="bench-span-") as d:
        print(f"span cost, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
        run_case("drop (no collector)", os.path.join(d, "nobody.sock"), args)
        run_case("listen", os.path.join(d, "events.sock"), args, listen=True)
        run_case("listen, 50k spans/s", os.path.join(d, "events2.sock"), args, pace_us=20.0,
                 listen=True)


if __name__ == "__main__":
    main()
