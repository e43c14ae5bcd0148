"""`ainative demo`: the daemon, scoped to a real ONNX Runtime process it launches.

It shows, on this machine, in a few seconds: the inference process found from its mapped
libraries, the knobs applied to every thread, and every value back as it was on stop.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from typing import Any

from ainative.ipc.client import Client, DaemonError
from ainative.ipc.launcher import LaunchError, ScopedDaemon

# A real inference loop: a small MLP built in code, run continuously.
INFERENCE_CHILD = r"""
import numpy as np, onnx, onnxruntime as ort, sys, time
from onnx import helper, TensorProto, numpy_helper
rng = np.random.default_rng(0)
w1 = numpy_helper.from_array(rng.standard_normal((256, 1024)).astype(np.float32), "w1")
w2 = numpy_helper.from_array(rng.standard_normal((1024, 256)).astype(np.float32), "w2")
g = helper.make_graph(
    [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
     helper.make_node("MatMul", ["r", "w2"], ["y"])], "demo_mlp",
    [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 256])],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, 256])], [w1, w2])
m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
so = ort.SessionOptions(); so.intra_op_num_threads = 2
s = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
x = rng.standard_normal((8, 256)).astype(np.float32)
print("ready", flush=True)
end = time.time() + float(sys.argv[1])
while time.time() < end:
    s.run(None, {"x": x}); time.sleep(0.002)
"""


def _nice_of_threads(pid: int) -> dict[int, int]:
    out: dict[int, int] = {}
    for tid in sorted(int(t) for t in os.listdir(f"/proc/{pid}/task")):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as fh:
                out[tid] = int(fh.read().rsplit(")", 1)[1].split()[16])
        except (OSError, IndexError, ValueError):
            pass
    return out


def _wait_for(cl: Client, pid: int, timeout: float) -> dict[str, Any] | None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            st = cl.status()
        except DaemonError:
            time.sleep(0.1)
            continue
        for t in st["tasks"]:
            if t["pid"] == pid and t["active"]:
                return st
        time.sleep(0.1)
    return None


def run_demo(seconds: float) -> int:
    if os.geteuid() != 0:
        print("ainative demo changes priorities and cgroups: run it as root (sudo).",
              file=sys.stderr)
        return 2
    tmp = tempfile.mkdtemp(prefix="ainative-demo-")
    life = seconds + 20
    child = subprocess.Popen([sys.executable, "-c", INFERENCE_CHILD, str(life)],
                             stdout=subprocess.PIPE, text=True)
    daemon = ScopedDaemon(tmp, scope_pid=os.getpid(), log_format="text",
                          cgroup_root=f"ainative-demo-{os.getpid()}")
    try:
        assert child.stdout is not None
        child.stdout.readline()
        before = _nice_of_threads(child.pid)
        print(f"launched an ONNX Runtime inference process: pid {child.pid}, "
              f"{len(before)} threads, nice {sorted(set(before.values()))}")
        try:
            daemon.start()
        except LaunchError as e:
            print(f"ainative demo: {e}", file=sys.stderr)
            return 1
        cl = daemon.client
        st = _wait_for(cl, child.pid, 15)
        if st is None:
            print("the daemon did not classify the process in 15 s; log:", file=sys.stderr)
            print(open(daemon.log_path).read(), file=sys.stderr)
            return 1
        from ainative.cli.views import render_explain, render_status

        render_status(st)
        render_explain({k: v for k, v in cl.explain(child.pid).items() if k != "ok"})
        during = _nice_of_threads(child.pid)
        print(f"nice of every thread while managed: {sorted(set(during.values()))}")
        time.sleep(seconds)
        daemon.stop()
        after = _nice_of_threads(child.pid)
        same = all(after.get(t) == v for t, v in before.items() if t in after)
        print(f"daemon stopped; nice of every thread now: {sorted(set(after.values()))} "
              f"({'restored' if same else 'NOT restored'})")
        print(f"daemon log: {daemon.log_path}")
        return 0 if same else 1
    finally:
        daemon.close()
        child.kill()
        child.wait()


if __name__ == "__main__":
    sys.exit(run_demo(float(sys.argv[1]) if len(sys.argv) > 1 else 4.0))

