"""The stress workload is a real model server and a separate load client: the server
listens on a Unix socket (before its warm-up, visible in /proc as listening and held by
the server) and answers real ONNX Runtime requests framed as wire.py says; the client
maps no AI runtime; a short run returns latencies measured by the client and resource
figures of the server."""

from __future__ import annotations

import json
import os
import selectors
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import pytest

from ainative.stress import models, wire
from ainative.stress.config import WorkloadConfig
from ainative.stress.runner import Workload, WorkloadError, run_workload
from ainative.stress.wire import Kind

ACCEPTCON = 0x10000  # __SO_ACCEPTCON in /proc/net/unix's Flags column: listening


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> str:
    return models.materialise("mlp-small", str(tmp_path_factory.mktemp("model")))


def _listening(pid: int, path: str) -> dict[str, int] | None:
    """The socket at path as /proc/<pid>/net/unix lists it, if it is listening."""
    for line in Path(f"/proc/{pid}/net/unix").read_text().splitlines()[1:]:
        f = line.split()
        if len(f) >= 8 and f[7] == path and int(f[3], 16) & ACCEPTCON:
            return {"type": int(f[4], 16), "inode": int(f[6])}
    return None


def _socket_inodes(pid: int) -> set[int]:
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            out.add(int(target[len("socket:["):-1]))
    return out


def _maps_onnxruntime(pid: int) -> bool:
    return "onnxruntime" in Path(f"/proc/{pid}/maps").read_text()


def _has_line(proc: subprocess.Popen[str]) -> bool:
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)  # type: ignore[arg-type]
    try:
        return bool(sel.select(timeout=0))
    finally:
        sel.close()


@pytest.fixture
def sockdir(tmp_path: Path) -> Iterator[str]:
    # sockaddr_un holds 108 bytes: pytest's tmp paths can be longer than that.
    import tempfile

    d = tempfile.mkdtemp(prefix="ainative-test-", dir="/tmp")
    yield d
    import shutil

    shutil.rmtree(d, ignore_errors=True)


def test_server_listens_before_its_warmup_and_holds_the_socket(tiny: str, sockdir: str
                                                               ) -> None:
    path = os.path.join(sockdir, "model.sock")
    cfg = WorkloadConfig(tiny, "mlp-small", warmup_s=2.0)
    proc = subprocess.Popen([sys.executable, "-m", "ainative.stress.server", "--config",
                             json.dumps(asdict(cfg)), "--socket", path],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        seen = None
        while seen is None and time.monotonic() < deadline and proc.poll() is None:
            seen = _listening(proc.pid, path) if os.path.exists(path) else None
            time.sleep(0.02)
        assert seen is not None, "the server never listened on its socket"
        # Still warming up: no ready line yet, and what a daemon would see is all there:
        # an AI runtime mapped, a listening socket held, CPU in use.
        assert not _has_line(proc)
        assert seen["type"] == socket.SOCK_STREAM
        assert seen["inode"] in _socket_inodes(proc.pid)
        assert _maps_onnxruntime(proc.pid)
        t = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        cpu0 = int(t[11]) + int(t[12])
        time.sleep(0.3)
        t = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        assert int(t[11]) + int(t[12]) > cpu0  # the warm-up runs the model meanwhile
        assert proc.stdout is not None
        ready = proc.stdout.readline()
        assert ready.startswith("ready ") and json.loads(ready[6:])["pid"] == proc.pid

        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
            c.connect(path)
            hello = wire.call(c, Kind.HELLO)
            assert hello["pid"] == proc.pid and hello["service_s"] > 0
            assert hello["inputs"] == [{"name": "x", "dtype": "float32", "shape": [8, 256],
                                        "fill": {"kind": "random"}}]
            with pytest.raises(wire.ServerError, match="STOP before START"):
                wire.call(c, Kind.STOP)
            # A request's payload is the input tensor's bytes; the reply, the output's.
            x = bytes(8 * 256 * 4)
            wire.send_frame(c, Kind.INFER, x)
            head = bytearray(wire.HEADER.size)
            kind, length = wire.read_header(c, head)
            assert (kind, length) == (Kind.RESULT, 8 * 256 * 4)
            wire.read_payload(c, length, limit=length)
            # Any other length is refused unread, and the connection closed (reset, as its
            # payload was never read): the framing is lost.
            wire.send_frame(c, Kind.INFER, x[:-4])
            kind, length = wire.read_header(c, head)
            assert kind == Kind.ERROR
            assert b"this model's inputs take 8192" in wire.read_payload(c, length)
            with pytest.raises(ConnectionError):
                wire.read_header(c, head)
        proc.stdin.close()  # type: ignore[union-attr]
        assert proc.wait(timeout=10) == 0
        assert not os.path.exists(path)  # it removes its socket on the way out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_short_run_goes_through_the_socket(tiny: str, tmp_path: Path) -> None:
    cfg = WorkloadConfig(tiny, "mlp-small", rate=200, duration=1.0, warmup_s=0.2)
    with Workload(cfg, str(tmp_path)) as w:
        w.wait_ready()
        server, client = w.server_pid, w.client_pid
        # Only the server maps the AI runtime; the client is an ordinary process.
        assert _maps_onnxruntime(server)
        assert not _maps_onnxruntime(client)
        assert _listening(server, w.socket) is not None
        w.go()
        r = w.wait()
    assert "error" not in r, r
    assert r["completed"] == r["scheduled"] == 200 and r["errors"] == 0
    assert 0 < r["latency"]["p50_ms"] <= r["latency"]["p99_ms"] < 1000
    assert r["distribution"]
    # Every request was answered by the server, whose figures these are.
    assert r["pid"] == server and r["client"]["pid"] == client
    assert r["server"] == {"served": 200, "failed": 0}
    assert r["resources"]["cpu_user_s"] + r["resources"]["cpu_system_s"] > 0
    assert r["sched"]["policy"] == "other" and r["service_time_ms"] > 0
    assert r["workers"] >= 1 and r["pool"] is None
    assert not os.path.exists(w.socket)


def test_a_model_that_cannot_be_fed_fails_in_one_line(tmp_path: Path) -> None:
    from onnx import TensorProto, helper, save

    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "T"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "T"])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    save(m, str(tmp_path / "dyn.onnx"))
    cfg = WorkloadConfig(str(tmp_path / "dyn.onnx"), "dyn.onnx", duration=1.0, warmup_s=0.1)
    with pytest.raises(WorkloadError, match=r"^dyn.onnx: axis 1 of input 'x' \['N', 'T'\] is "
                       r"the dynamic dimension 'T'; give its size with --dim T=N"):
        run_workload(cfg)
