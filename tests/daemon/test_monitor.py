"""`ainative monitor` against a real daemon scoped to real processes this test starts:
textual's pilot (keys, sorting, filtering, the detail view, the no-daemon and no-GPU
states), a real terminal (tmux, 80x24), and `--once`.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from daemon_helpers import ONNX_CHILD, Children, DaemonProc, needs_root, stress_hog

from ainative.cli.monitor import MonitorApp, histogram_text, select

pytestmark = [needs_root, pytest.mark.timeout(120)]

# An ONNX Runtime process that traces its inferences (spans to AINATIVE_EVENTS), then
# keeps running them slowly: the daemon has its latency, and it stays managed.
TRACED_CHILD = textwrap.dedent("""
    import sys, threading, time, numpy as np, onnxruntime as ort
    from onnx import helper, TensorProto
    from ainative.telemetry.span import traced_session, flush
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    so = ort.SessionOptions(); so.intra_op_num_threads = 1
    s = traced_session(ort.InferenceSession(m.SerializeToString(), so,
                                            providers=["CPUExecutionProvider"]))
    x = np.ones(4, np.float32)
    def loop():
        while True:
            for _ in range(20):
                s.run(None, {"x": x})
            flush(1.0); time.sleep(0.2)
    threading.Thread(target=loop, daemon=True).start()
    print("ready", flush=True)
    sys.stdin.read()
""")


def _world(start_daemon: Callable[..., DaemonProc], children: Children,
           tmp_path: Path) -> tuple[DaemonProc, int, int]:
    """A daemon with metrics (it keeps latency with them), a stress-ng hog (background)
    and a traced ONNX server (inference)."""
    d = start_daemon(metrics="127.0.0.1:0")
    hog = stress_hog(children, tmp_path)
    ev = d.client.status()["daemon"]["telemetry"]["events_socket"]["path"]
    serving = children.python(ONNX_CHILD)
    traced = children.python(TRACED_CHILD, env={"AINATIVE_EVENTS": ev,
                                                "AINATIVE_CLASS": "inference"})
    d.wait_task(hog, cls="background")
    d.wait_task(serving.pid, cls="inference")
    d.wait_task(traced.pid, cls="inference")
    return d, hog, traced.pid


async def _until(pilot: object, cond: Callable[[], bool], timeout: float = 15.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        await pilot.pause(0.1)  # type: ignore[attr-defined]
    raise AssertionError("the monitor never showed it")


def test_pilot_table_keys_detail_and_no_gpu(start_daemon: Callable[..., DaemonProc],
                                            children: Children, tmp_path: Path) -> None:
    d, hog, traced = _world(start_daemon, children, tmp_path)

    async def run() -> None:
        app = MonitorApp(d.sock, interval=0.5)
        async with app.run_test(size=(80, 24)) as pilot:
            await _until(pilot, lambda: {hog, traced} <= {r.pid for r in app.shown})
            classes = {r.pid: r.cls for r in app.shown}
            assert classes[hog] == "background" and classes[traced] == "inference"
            # no GPU on this machine: the panel says so
            side = str(app.query_one("#side-text").render())
            assert "no GPU: " in side
            # latency from spans reaches the table
            await _until(pilot, lambda: any(r.pid == traced and r.infer_p99_s
                                            for r in app.shown))
            # sorting: s moves to the next column (name), the order follows it
            assert [r.pid for r in app.shown] == sorted(r.pid for r in app.shown)
            await pilot.press("s")
            assert app.sort == 1
            names = [(r.name, r.pid) for r in app.shown]
            assert names == sorted(names)
            assert [r.pid for r in app.shown] == [r.pid for r in select(
                app.shown, 1, None, None)]
            # class filter: c cycles to the first class (background) and hides the rest
            await pilot.press("c")
            assert app.cls_filter == "background"
            assert {r.pid for r in app.shown} == {hog}
            await pilot.press("c")
            assert app.cls_filter == "inference"
            assert hog not in {r.pid for r in app.shown}
            assert traced in {r.pid for r in app.shown}
            # enter on the traced process: its explain, latency and threads
            row = next(i for i, r in enumerate(app.shown) if r.pid == traced)
            app.query_one("#tasks").move_cursor(row=row)  # type: ignore[attr-defined]
            await pilot.press("enter")
            await _until(pilot, lambda: "class: inference" in str(
                app.screen.query_one("#detail").render()))
            detail = str(app.screen.query_one("#detail").render())
            assert f"pid {traced}" in detail and "threads:" in detail
            assert "inference latency" in detail
            await pilot.press("escape")
            await pilot.press("question_mark")
            await pilot.pause(0.1)
            assert "ainative monitor keys" in str(app.screen.query_one("#help-text").render())
            await pilot.press("escape")
            await pilot.press("q")
        assert app.return_code in (0, None)

    asyncio.run(run())


def test_pilot_no_daemon(tmp_path: Path) -> None:
    sock = str(tmp_path / "nothing.sock")

    async def run() -> None:
        app = MonitorApp(sock, interval=0.5)
        async with app.run_test(size=(80, 24)) as pilot:
            await _until(pilot, lambda: app.refreshes > 0)
            text = str(app.query_one("#nodaemon").render())
            assert f"no ainative daemon answers at {sock}" in text
            assert "sudo ainative daemon" in text
            await pilot.press("q")

    asyncio.run(run())


def test_daemon_going_away_shows_a_banner(start_daemon: Callable[..., DaemonProc],
                                          children: Children, tmp_path: Path) -> None:
    d = start_daemon()
    hog = stress_hog(children, tmp_path)
    d.wait_task(hog, cls="background")

    async def run() -> None:
        app = MonitorApp(d.sock, interval=0.3)
        async with app.run_test(size=(80, 24)) as pilot:
            await _until(pilot, lambda: hog in {r.pid for r in app.shown})
            d.stop()
            await _until(pilot, lambda: "DAEMON GONE" in str(
                app.query_one("#banner").render()))
            assert hog in {r.pid for r in app.shown}  # the last data stays
            await pilot.press("q")

    asyncio.run(run())


def _ainative(*args: str) -> list[str]:
    return [sys.executable, "-m", "ainative", *args]


def test_once(start_daemon: Callable[..., DaemonProc], children: Children,
              tmp_path: Path) -> None:
    d, hog, traced = _world(start_daemon, children, tmp_path)
    out = subprocess.run(_ainative("monitor", "--once", "--socket", d.sock),
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert any(ln.startswith(str(hog)) and "background" in ln for ln in lines), out.stdout
    assert any(ln.startswith(str(traced)) and "inference" in ln for ln in lines), out.stdout
    assert any(ln.startswith("no GPU: ") for ln in lines), out.stdout
    assert "\x1b[" not in out.stdout  # plain text
    gone = subprocess.run(_ainative("monitor", "--once", "--socket", str(tmp_path / "x")),
                          capture_output=True, text=True, timeout=30)
    assert gone.returncode == 1 and "no ainative daemon answers" in gone.stdout
    assert "Traceback" not in gone.stdout + gone.stderr


@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")
def test_real_terminal_tmux(start_daemon: Callable[..., DaemonProc], children: Children,
                            tmp_path: Path) -> None:
    d = start_daemon()
    hog = stress_hog(children, tmp_path)
    d.wait_task(hog, cls="background")
    name = f"ainative-monitor-test-{os.getpid()}"
    cmd = " ".join([*_ainative("monitor", "--socket", d.sock, "--interval", "0.5")])

    def screen() -> str:
        return subprocess.run(["tmux", "capture-pane", "-p", "-t", name], capture_output=True,
                              text=True, timeout=10).stdout

    def wait_for(cond: Callable[[str], bool], timeout: float = 20.0) -> str:
        end = time.monotonic() + timeout
        last = ""
        while time.monotonic() < end:
            last = screen()
            if cond(last):
                return last
            time.sleep(0.2)
        raise AssertionError(f"screen never showed it:\n{last}")

    env = {**os.environ, "NO_COLOR": "1", "TERM": "xterm-256color"}
    subprocess.run(["tmux", "new-session", "-d", "-s", name, "-x", "80", "-y", "24",
                    f"{cmd}; sleep 30"], check=True, env=env, timeout=10)
    try:
        shown = wait_for(lambda s: "pid" in s and "class" in s and str(hog) in s)
        assert "background" in shown
        subprocess.run(["tmux", "send-keys", "-t", name, "?"], check=True, timeout=10)
        wait_for(lambda s: "ainative monitor keys" in s)
        subprocess.run(["tmux", "send-keys", "-t", name, "Escape"], check=True, timeout=10)
        wait_for(lambda s: "ainative monitor keys" not in s and str(hog) in s)
        subprocess.run(["tmux", "send-keys", "-t", name, "q"], check=True, timeout=10)
        # the app exits: the shell runs `sleep`, the table is gone
        wait_for(lambda s: "ainative monitor keys" not in s and "cpu%" not in s)
    finally:
        subprocess.run(["tmux", "kill-session", "-t", name], capture_output=True, timeout=10)


def test_histogram_text_layout() -> None:
    lines = histogram_text([(64, 3), (256, 1), (None, 2)])
    assert "usecs" in lines[0] and "distribution" in lines[0]
    assert any("32 -> 63" in ln and ": 3 " in ln for ln in lines)
    assert any("64 -> 127" in ln and ": 0 " in ln for ln in lines)  # gaps shown, as bcc
    assert lines[-1].startswith("  above the last bucket")
    assert histogram_text([]) == ["  (no samples)"]


def test_bucket_quantile_and_log2_rebin() -> None:
    from ainative.daemon.metrics import bucket_quantile, log2_rebin
    bounds = (50e-6, 100e-6, 250e-6)
    counts = (0, 98, 1, 1)  # the last is above every bound
    assert bucket_quantile(bounds, counts, 0.5) == 100e-6  # the bucket's upper bound
    assert bucket_quantile(bounds, counts, 0.99) == 250e-6
    assert bucket_quantile(bounds, counts, 1.0) == float("inf")
    assert bucket_quantile(bounds, (0, 0, 0, 0), 0.99) is None
    assert log2_rebin(bounds, counts) == [(128, 98), (256, 1), (None, 1)]
