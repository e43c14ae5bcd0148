"""Fixtures for end-to-end tests: a real daemon scoped to this test process's children,
and real child processes (plain, threaded, ONNX Runtime) whose values are read back from
/proc, the ioprio syscall and the cgroup files.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ainative.ipc.client import Client, DaemonError
from ainative.ipc.launcher import LaunchError, ScopedDaemon

ROOT = os.geteuid() == 0
# Waits for the daemon are multiplied by this: tests/vm runs some of these tests in a VM
# under software emulation (TCG), 10-16x slower than a host.
TIME_SCALE = float(os.environ.get("AINATIVE_TEST_TIME_SCALE", "1"))
needs_root = pytest.mark.skipif(not ROOT, reason="changes priorities and cgroups: needs root")

_libc = ctypes.CDLL(None, use_errno=True)


def thread_ids(pid: int) -> list[int]:
    return sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))


def nice_of(pid: int, tid: int) -> int:
    with open(f"/proc/{pid}/task/{tid}/stat") as fh:
        return int(fh.read().rsplit(")", 1)[1].split()[16])


def policy_of(pid: int, tid: int) -> int:
    with open(f"/proc/{pid}/task/{tid}/stat") as fh:
        return int(fh.read().rsplit(")", 1)[1].split()[38])


def ioprio_of(tid: int) -> tuple[int, int]:
    v = _libc.syscall(252, 1, tid)  # ioprio_get(IOPRIO_WHO_PROCESS, tid)
    assert v >= 0, os.strerror(ctypes.get_errno())
    return v >> 13, v & 0x7


def slice_of(pid: int, tid: int) -> int | None:
    """The thread's EEVDF slice in ns as the kernel's own account prints it (se.slice in
    /proc/PID/task/TID/sched), None where it prints none (kernels before 6.6)."""
    with open(f"/proc/{pid}/task/{tid}/sched") as fh:
        for line in fh:
            if line.startswith("se.slice"):
                return int(line.split(":", 1)[1].strip().split(".")[0])
    return None


def affinity_of(pid: int, tid: int) -> str:
    with open(f"/proc/{pid}/task/{tid}/status") as fh:
        for line in fh:
            if line.startswith("Cpus_allowed_list:"):
                return line.split(":", 1)[1].strip()
    raise AssertionError("no Cpus_allowed_list")


def cgroups_of(pid: int) -> dict[str, str]:
    out = {}
    with open(f"/proc/{pid}/cgroup") as fh:
        for line in fh:
            _, ctrl, path = line.rstrip("\n").split(":", 2)
            out[ctrl or "0"] = path
    return out


def snapshot(pid: int) -> dict[int, tuple[Any, ...]]:
    """Every value ainative may touch, per thread, plus the process's cgroups."""
    snap: dict[int, tuple[Any, ...]] = {}
    for tid in thread_ids(pid):
        snap[tid] = (nice_of(pid, tid), policy_of(pid, tid), ioprio_of(tid),
                     affinity_of(pid, tid), slice_of(pid, tid))
    snap[-1] = tuple(sorted(cgroups_of(pid).items()))
    return snap


THREADED_CHILD = textwrap.dedent("""
    import sys, threading, time
    n = int(sys.argv[1])
    ev = threading.Event()
    def spin():
        ev.wait()
    for _ in range(n):
        threading.Thread(target=spin, daemon=True).start()
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() == "more":
            for _ in range(2):
                threading.Thread(target=spin, daemon=True).start()
            print("more", flush=True)
""")

# A process that imported ONNX Runtime, ran one inference and now sleeps: a notebook.
ONNX_IDLE_CHILD = textwrap.dedent("""
    import sys, numpy as np, onnxruntime as ort
    from onnx import helper, TensorProto
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    so = ort.SessionOptions(); so.intra_op_num_threads = 2
    s = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    s.run(None, {"x": np.ones(4, np.float32)})
    print("ready", flush=True)
    sys.stdin.read()
""")

# A model server: ONNX Runtime behind a Unix socket (abstract name, so a killed child
# leaves no file), one thread per connection, one inference per request line. Its argv:
# "listen" (listen at once) or "later" (listen when stdin says "listen"), then "busy"
# (also run inference continuously, as a server under steady load would) or "idle".
# On stdin, "fork" forks a child that execs sleep and prints its pid.
SERVING_CHILD = textwrap.dedent("""
    import os, socket, sys, threading, time, numpy as np, onnxruntime as ort
    from onnx import helper, TensorProto, numpy_helper
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((256, 256)).astype(np.float32), "w")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["h"]),
                           helper.make_node("Relu", ["h"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [16, 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [16, 256])], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    so = ort.SessionOptions(); so.intra_op_num_threads = 2
    s = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    x = rng.standard_normal((16, 256)).astype(np.float32)
    s.run(None, {"x": x})
    name = "\\0ainative-test-serve-%d" % os.getpid()
    def handle(c):
        f = c.makefile("rwb")
        for line in f:
            s.run(None, {"x": x}); f.write(b"ok\\n"); f.flush()
    def serve():
        # Bound and listening before this returns: "listening" (and a client's connect)
        # must never race the accept thread's start.
        ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        ls.bind(name); ls.listen(16)
        def accept():
            while True:
                c, _ = ls.accept()
                threading.Thread(target=handle, args=(c,), daemon=True).start()
        threading.Thread(target=accept, daemon=True).start()
    def busy():
        while True:
            s.run(None, {"x": x}); time.sleep(0.002)
    args = sys.argv[1:] or ["listen", "busy"]
    if args[0] == "listen":
        serve()
    if args[1] == "busy":
        threading.Thread(target=busy, daemon=True).start()
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() == "listen":
            serve()
            print("listening", flush=True)
        elif line.strip() == "fork":  # a child that execs an unrelated program
            pid = os.fork()
            if pid == 0:
                os.execvp("sleep", ["sleep", "30"])
            print(pid, flush=True)
""")
# With no arguments: a busy model server, listening from the start (serving, boosted).
ONNX_CHILD = SERVING_CHILD


def serving_socket(pid: int) -> str:
    """The abstract socket name SERVING_CHILD of pid listens on."""
    return f"\0ainative-test-serve-{pid}"


@dataclass
class Children:
    procs: list[subprocess.Popen[str]] = field(default_factory=list)

    def spawn(self, argv: list[str], env: dict[str, str] | None = None,
              wait_ready: bool = True) -> subprocess.Popen[str]:
        p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             env={**os.environ, **(env or {})})
        self.procs.append(p)
        if wait_ready:
            assert p.stdout is not None
            line = p.stdout.readline()
            assert line.strip() == "ready", f"child did not start: {line!r}"
        return p

    def python(self, code: str, *args: str, env: dict[str, str] | None = None,
               argv0: str | None = None) -> subprocess.Popen[str]:
        exe = sys.executable
        argv = [exe, "-c", code, *args]
        if argv0:
            # exec -a gives the process another argv[0] (and a name for rules to see).
            return self.spawn(["bash", "-c", f'exec -a {argv0} "$@"', "bash", *argv], env=env)
        return self.spawn(argv, env=env)

    def kill_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait()


@pytest.fixture
def children() -> Iterator[Children]:
    c = Children()
    yield c
    c.kill_all()


@dataclass
class DaemonProc:
    proc: subprocess.Popen[bytes]
    sock: str
    state_dir: str
    log_path: str
    cgroup_root: str

    @property
    def client(self) -> Client:
        return Client(self.sock)

    def log(self) -> list[dict[str, Any]]:
        out = []
        for line in Path(self.log_path).read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    def wait_task(self, pid: int, *, cls: str | None = None, active: bool = True,
                  timeout: float = 10.0) -> dict[str, Any]:
        end = time.monotonic() + timeout * TIME_SCALE
        last: Any = None
        while time.monotonic() < end:
            try:
                st = self.client.status()
                for t in st["tasks"]:
                    if t["pid"] == pid and t["active"] == active and (cls is None or
                                                                       t["class"] == cls):
                        return t
                last = st["tasks"]
            except DaemonError as e:
                last = str(e)
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited: {Path(self.log_path).read_text()}")
            time.sleep(0.05)
        raise AssertionError(f"pid {pid} never managed as {cls}: {last}")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(20)


# Most end-to-end tests are about applying, following and undoing knobs, not about when:
# their daemon applies every class whether or not a serving process is busy (settings an
# operator may choose too), and their inference class raises the CPU priority the way an
# operator whose clients are remote would set it, and their background class uses the idle
# policy and cpu.idle, so that every knob has something per thread and per group to
# follow. Activity and the defaults are tested with always_on=False.
# The background class with every demotion knob (the built-in one sets neither: README,
# "Why background is not SCHED_IDLE"), for tests of those knobs under the built-in activity.
IDLE_BACKGROUND = """
[classes.background]
policy = "idle"
cpu_idle = true
"""

ALWAYS_ON_RULES = """
[classes.inference]
serving = false
nice = -10
cgroup = true
cpu_weight = 10000
[classes.training]
only_while_serving_active = false
[classes.background]
only_while_serving_active = false
policy = "idle"
cpu_idle = true
"""


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[Callable[..., DaemonProc]]:
    started: list[ScopedDaemon] = []

    def start(*extra: str, scope: int | None = None, state: str = "state",
              rules_text: str | None = None, wait: bool = True,
              sock: str | None = None, always_on: bool = True,
              metrics: str = "off") -> DaemonProc:
        """always_on: ALWAYS_ON_RULES go on top of the built-in rules and rules_text;
        tests of activity and of the defaults turn it off. metrics: --metrics-address
        ("127.0.0.1:0" for a free port; status says which)."""
        n = len(started)
        if always_on:
            extra_rules = tmp_path / f"always-on{n}.toml"
            extra_rules.write_text(ALWAYS_ON_RULES)
            extra = ("--rules", str(extra_rules), *extra)
        cg_root = f"ainative-test-{os.getpid()}"
        sd = ScopedDaemon(str(tmp_path), scope_pid=scope or os.getpid(), cgroup_root=cg_root,
                          rules_text=rules_text, rules_file=str(tmp_path / f"rules{n}.toml"),
                          extra_args=("--reconcile-interval", "0.2", *extra),
                          state_dir=str(tmp_path / state),
                          socket_path=sock or str(tmp_path / f"d{n}.sock"),
                          log_path=str(tmp_path / f"daemon{n}.log"),
                          metrics_address=metrics)
        started.append(sd)
        try:
            sd.start(wait=wait, timeout=15 * TIME_SCALE)
        except LaunchError as e:
            raise AssertionError(str(e)) from None
        assert sd.proc is not None
        return DaemonProc(sd.proc, sd.sock, sd.state_dir, sd.log_path, cg_root)

    yield start
    for sd in started:
        sd.close()
    # Remove any test cgroups left by a failed test (rmdir fails while processes remain).
    for base in [Path("/sys/fs/cgroup"), *Path("/sys/fs/cgroup").glob("*")]:
        for group in base.glob(f"ainative-test-{os.getpid()}*.*"):
            try:
                group.rmdir()
            except OSError:
                pass


def stress_hog(children: Children, tmp_path: Path) -> int:
    """A busy single-threaded process named like a load generator: background by the
    built-in rules."""
    exe = tmp_path / "stress-ng"
    if not exe.exists():
        exe.symlink_to(sys.executable)
    return children.spawn([str(exe), "-c", "import sys\nprint('ready', flush=True)\n"
                           "while True: pass"]).pid
