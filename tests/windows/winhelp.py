"""Helpers for tests/windows (run by a Windows CPython under Wine, scripts/windows-tests):
real Windows Python children that load onnxruntime and run a model, and the hand-shake
with the Linux side, which reads /proc for the effects Wine really applies (affinity,
locked memory). Inside Wine, Z:/proc/self is resolved by wineserver, so a Linux process
does the reading: tests/winhost/linux_responder.py, started by scripts/windows-tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

# A serving model process: onnxruntime's own example model (shipped in the wheel), run
# in a loop on a worker thread so the process has threads and uses CPU, until stdin
# closes. Prints "ready" once the model has answered.
# A class the tests' child is put in by its marker: priorities only Windows has.
WINSERVE_RULES = """
[classes.winserve]
priority_class = "high"
thread_priority = "highest"
[[rule]]
name = "the test's child"
cmdline = "{marker}"
class = "winserve"
"""


def wait_for(what: str, check: Callable[[], Any], timeout: float = 30.0) -> Any:
    """check()'s first true value within timeout; an OSError or EOFError (a pipe not
    there yet) is a 'not yet'. AssertionError naming what and the last answer otherwise."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except (OSError, EOFError) as e:
            last = e
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout} s (last: {last!r})")


ORT_CHILD = r'''
import sys, threading, time
import numpy as np
import onnxruntime as ort
from onnxruntime.datasets import get_example

opts = ort.SessionOptions()
opts.intra_op_num_threads = 2
sess = ort.InferenceSession(get_example("sigmoid.onnx"), opts,
                            providers=["CPUExecutionProvider"])
name = sess.get_inputs()[0].name
x = np.random.rand(3, 4, 5).astype(np.float32)
out = sess.run(None, {name: x})[0]
assert out.shape == (3, 4, 5) and abs(float(out[0, 0, 0]) - 1 / (1 + np.exp(-x[0, 0, 0]))) < 1e-5
stop = threading.Event()

def serve():
    while not stop.is_set():
        sess.run(None, {name: x})
        time.sleep(0.002)

t = threading.Thread(target=serve, daemon=True)
t.start()
print("ready", flush=True)
sys.stdin.readline()
stop.set()
t.join()
'''

# A process holding a locked pinned pool of the size in argv[2] until stdin closes; it
# prints the pool's stats as one JSON line.
POOL_CHILD = r'''
import json, sys
from ainative.mem import PinnedPool
pool = PinnedPool(int(sys.argv[2]), lock=True, report_to_daemon=False)
print(json.dumps({"locked": pool.locked, "capacity": pool.capacity}), flush=True)
sys.stdin.readline()
pool.close()
print("closed", flush=True)
sys.stdin.readline()
'''


class Child:
    """A Windows Python child with a unique marker in its command line (how the Linux
    side finds its Linux pid)."""

    def __init__(self, tmp: Path, code: str, *args: str) -> None:
        self.marker = f"ainative-wine-{uuid.uuid4().hex[:12]}"
        script = tmp / f"{self.marker}.py"
        script.write_text(code)
        self.proc = subprocess.Popen([sys.executable, str(script), self.marker, *args],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.pid = self.proc.pid

    def line(self) -> str:
        assert self.proc.stdout is not None
        got = self.proc.stdout.readline()
        if not got:
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise AssertionError(f"child {self.pid} ended: {err[-2000:]}")
        return got.strip()

    def send(self, text: str = "\n") -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text)
        self.proc.stdin.flush()

    def close(self) -> None:
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=20)


def linux_side(checkpoint: str, marker: str, **expect: Any) -> dict[str, Any] | None:
    """Ask the Linux side to read /proc/<pid>/status (and each task's) of the Linux
    process whose command line holds ``marker``; its answer, or None when no Linux side
    is running (AINATIVE_LINUX_SIDE unset: the test then checks only what Windows
    reads back). ``expect`` travels with the request for the Linux test's log."""
    where = os.environ.get("AINATIVE_LINUX_SIDE")
    if not where:
        return None
    d = Path(where)
    req = d / f"{checkpoint}-{marker}.req.json"
    rep = d / f"{checkpoint}-{marker}.rep.json"
    tmp = req.with_suffix(".tmp")
    tmp.write_text(json.dumps({"checkpoint": checkpoint, "marker": marker,
                               "expect": expect}))
    os.replace(tmp, req)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if rep.exists():
            try:
                return dict(json.loads(rep.read_text()))
            except ValueError:
                pass  # being written
        time.sleep(0.05)
    raise AssertionError(f"the Linux side did not answer {req.name} within 60 s")
