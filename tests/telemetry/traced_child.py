"""A real traced onnxruntime process, run by the telemetry tests as a script.

    python traced_child.py N [--fork] [--sleep-us U]

Builds a tiny model with onnx.helper (a 256x256 MatMul), wraps its InferenceSession with
traced_session, runs it N times (request ids r0..r{N-1}) plus a ``with ainative.span``
block around a short sleep each time, flushes, and prints one JSON line: its pid, the
native id of the thread that ran the spans, the wall time the loop took, the span
stats, and (with --fork) the same from a forked child that ran spans too.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

import ainative
from ainative.telemetry.span import flush, stats, traced_session


def session() -> ort.InferenceSession:
    w = numpy_helper.from_array(
        np.random.default_rng(0).standard_normal((256, 256)).astype(np.float32), "w")
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 256])], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])


def work(n: int, sleep_us: float) -> dict[str, object]:
    s = traced_session(session())
    x = np.ones((8, 256), np.float32)
    t0 = time.perf_counter_ns()
    for i in range(n):
        s.run(None, {"x": x}, request=f"r{i}")
        with ainative.span("block", request=i):
            if sleep_us:
                time.sleep(sleep_us / 1e6)
    wall = time.perf_counter_ns() - t0
    flush(5.0)
    st = stats()
    return {"pid": os.getpid(), "tid": threading.get_native_id(), "wall_ns": wall,
            "recorded": st.recorded, "sent": st.sent, "dropped": st.dropped,
            "reasons": st.dropped_by_reason, "pending": st.pending}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("n", type=int)
    ap.add_argument("--fork", action="store_true")
    ap.add_argument("--sleep-us", type=float, default=100.0)
    args = ap.parse_args()
    if not args.fork:
        print(json.dumps(work(args.n, args.sleep_us)), flush=True)
        return
    with ainative.span("before-fork"):
        pass  # the parent's sender thread exists before the fork
    r, w = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(r)
        out = json.dumps(work(args.n, args.sleep_us)).encode()
        os.write(w, out)
        os._exit(0)
    os.close(w)
    mine = work(args.n, args.sleep_us)
    with os.fdopen(r, "rb") as f:
        theirs = json.loads(f.read())
    os.waitpid(child, 0)
    print(json.dumps({**mine, "child": theirs}), flush=True)


if __name__ == "__main__":
    main()
