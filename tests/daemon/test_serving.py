"""Right by default, end to end: a real daemon with the built-in rules, real ONNX Runtime
processes that serve requests over a Unix socket (or only imported the runtime), values
read back from the kernel. Serving is protected (its I/O priority raised, background
demoted) only while it serves; an idle runtime gets
nothing and demotes nothing; opt-outs are never touched; `ainative plan` and the offline
`explain` say what the daemon then does.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from daemon_helpers import (
    ONNX_IDLE_CHILD,
    SERVING_CHILD,
    THREADED_CHILD,
    Children,
    DaemonProc,
    ioprio_of,
    needs_root,
    nice_of,
    serving_socket,
    snapshot,
    stress_hog,
)

pytestmark = needs_root

IDLE_AFTER = 2.0
BE0 = (2, 0)  # ioprio_get: best-effort class, level 0, the inference class's I/O priority
FAST = f'[settings]\nidle_after = "{IDLE_AFTER:g}s"\n'


@contextmanager
def requests(pid: int, rate: float = 200.0) -> Iterator[list[int]]:
    """A client sending requests to SERVING_CHILD pid at about ``rate`` per second."""
    done: list[int] = [0]
    stop = threading.Event()

    def run() -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(serving_socket(pid))
            f = s.makefile("rwb")
            while not stop.is_set():
                f.write(b"req\n")
                f.flush()
                f.readline()
                done[0] += 1
                time.sleep(1 / rate)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        yield done
    finally:
        stop.set()
        t.join(5)


def wait_for(cond: Callable[[], bool], timeout: float, step: float = 0.02) -> float | None:
    """Seconds until cond() held, or None if it did not within timeout."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if cond():
            return time.monotonic() - t0
        time.sleep(step)
    return None


def same_as(pid: int, before: dict) -> bool:  # type: ignore[type-arg]
    """Whether pid's values are back to ``before``; a request thread that ends while it
    is read makes this a 'not yet', not an error."""
    try:
        return snapshot(pid) == before
    except FileNotFoundError:
        return False


def task(d: DaemonProc, pid: int) -> dict | None:  # type: ignore[type-arg]
    return next((t for t in d.client.status()["tasks"] if t["pid"] == pid), None)


def test_an_idle_runtime_process_gets_nothing_and_demotes_nothing(
        children: Children, start_daemon: Callable[..., DaemonProc], tmp_path: Path) -> None:
    nb = children.python(ONNX_IDLE_CHILD)
    hog = stress_hog(children, tmp_path)
    before = (snapshot(nb.pid), snapshot(hog))
    d = start_daemon(always_on=False)
    assert wait_for(lambda: (t := task(d, nb.pid)) is not None and t["class"] == "batch", 5)
    time.sleep(1.5)  # activity windows pass
    t = task(d, nb.pid)
    assert t is not None and t["applied"] == {} and "fair share" in t["state"]
    h = task(d, hog)
    assert h is not None and h["class"] == "background" and not h["active"]
    assert (snapshot(nb.pid), snapshot(hog)) == before
    assert d.client.status()["activity"]["serving_busy"] is False


def test_serving_is_protected_within_1s_of_requests_and_undone_after_idle_after(
        children: Children, start_daemon: Callable[..., DaemonProc], tmp_path: Path) -> None:
    srv = children.python(SERVING_CHILD, "listen", "idle")
    hog = stress_hog(children, tmp_path)
    before = snapshot(srv.pid)
    d = start_daemon(rules_text=FAST, always_on=False)
    assert wait_for(lambda: (t := task(d, srv.pid)) is not None and t["class"] == "inference",
                    5)
    time.sleep(1.5)
    assert snapshot(srv.pid) == before, "protected while it served nothing"
    assert nice_of(hog, hog) == 0
    with requests(srv.pid) as done:
        took = wait_for(lambda: ioprio_of(srv.pid) == BE0 and nice_of(hog, hog) == 19, 5)
        assert took is not None, "never protected while serving"
        assert took <= 1.0, f"protected {took:.2f} s after requests began"
        time.sleep(1.0)
        assert ioprio_of(srv.pid) == BE0 and nice_of(hog, hog) == 19  # still serving
        t = task(d, srv.pid)
        assert t is not None and t["activity"]["busy"] and t["state"] == "applied"
        assert done[0] > 50
    # Stopped: lifted within idle_after after the activity window empties, one tick late.
    bound = IDLE_AFTER + 1.0 + 0.25 + 0.5  # + window + interval + polling/scheduling slack
    lifted = wait_for(lambda: same_as(srv.pid, before), bound + 3)
    assert lifted is not None and lifted <= bound, f"undone {lifted} s after it stopped"
    assert wait_for(lambda: nice_of(hog, hog) == 0, 2) is not None, "hog still demoted"
    log = d.log()
    assert any(e.get("event") == "lifted" and e.get("pid") == srv.pid for e in log)


def test_a_runtime_process_that_starts_listening_becomes_serving(
        children: Children, start_daemon: Callable[..., DaemonProc]) -> None:
    p = children.python(SERVING_CHILD, "later", "idle")
    d = start_daemon(always_on=False)
    assert wait_for(lambda: (t := task(d, p.pid)) is not None and t["class"] == "batch", 5)
    assert p.stdin is not None and p.stdout is not None
    p.stdin.write("listen\n")
    p.stdin.flush()
    assert p.stdout.readline().strip() == "listening"
    with requests(p.pid):
        took = wait_for(lambda: ioprio_of(p.pid) == BE0, 5)
        assert took is not None and took <= 1.0, f"protected after {took} s"
    t = task(d, p.pid)
    assert t is not None and t["class"] == "inference"
    assert any("listens on unix @ainative-test-serve" in s for s in t["signals"])


def test_opted_out_serving_process_is_never_touched(
        children: Children, start_daemon: Callable[..., DaemonProc]) -> None:
    srv = children.python(SERVING_CHILD, "listen", "busy", env={"AINATIVE_CLASS": "none"})
    before = snapshot(srv.pid)
    d = start_daemon(always_on=False)
    time.sleep(1.5)
    assert task(d, srv.pid) is None
    assert snapshot(srv.pid) == before
    ex = d.client.explain(srv.pid)
    assert "AINATIVE_CLASS=none" in ex["excluded"]


POOL_ONLY = """
from ainative.mem import PinnedPool
pool = PinnedPool("4MiB", lock="try", name="only-a-pool")
b = pool.alloc(1 << 20)
print("ready", flush=True)
import sys; sys.stdin.read()
"""


def test_a_pinned_pool_only_process_is_not_classified(
        children: Children, start_daemon: Callable[..., DaemonProc]) -> None:
    p = children.python(POOL_ONLY)
    d = start_daemon(always_on=False)
    time.sleep(1.0)
    assert task(d, p.pid) is None
    ex = d.client.explain(p.pid)
    assert ex["class"] is None
    lib = next(s for s in ex["signals"] if s["signal"] == "library")
    assert not lib["matched"], lib


def _plan(tmp_path: Path, *pids: int) -> dict[int, dict]:  # type: ignore[type-arg]
    r = subprocess.run([sys.executable, "-m", "ainative", "plan", "--json", "--rules-dir", "",
                        "--window", "1"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    return {e["pid"]: e for e in json.loads(r.stdout)["plan"] if e["pid"] in pids}


def test_plan_and_offline_explain_match_what_the_daemon_then_applies(
        children: Children, start_daemon: Callable[..., DaemonProc], tmp_path: Path) -> None:
    srv = children.python(SERVING_CHILD, "listen", "busy")
    nb = children.python(ONNX_IDLE_CHILD)
    hog = stress_hog(children, tmp_path)
    plain = children.python(THREADED_CHILD, "1")
    before = {p: snapshot(p) for p in (srv.pid, nb.pid, hog, plain.pid)}
    plan = _plan(tmp_path, srv.pid, nb.pid, hog, plain.pid)
    assert {p: (e["class"], e["in_force"]) for p, e in plan.items()} == {
        srv.pid: ("inference", True), nb.pid: ("batch", True), hog: ("background", True)}
    assert "would apply" in plan[srv.pid]["state"]
    assert {p: snapshot(p) for p in before} == before  # planning changed nothing

    env = {**os.environ, "COLUMNS": "200"}
    ex = subprocess.run([sys.executable, "-m", "ainative", "explain", str(srv.pid), "--socket",
                         str(tmp_path / "nobody.sock"), "--rules-dir", "", "--window", "1"],
                        capture_output=True, text=True, env=env, timeout=60)
    assert ex.returncode == 0, ex.stderr
    assert "class: inference" in ex.stdout and "no daemon answered" in ex.stdout
    assert "listens on unix @ainative-test-serve" in ex.stdout

    d = start_daemon(always_on=False)
    for pid, e in plan.items():
        def same(pid: int = pid, want: str = e["class"]) -> bool:
            t = task(d, pid)
            return t is not None and t["class"] == want and t["active"]
        assert wait_for(same, 5) is not None, (pid, e["class"], task(d, pid))
        t = task(d, pid)
        assert t is not None
        # The same knobs, but the daemon's groups are named after its test cgroup root.
        assert {k: v for k, v in t["targets"].items() if k != "cgroup"} == {
            k: v for k, v in e["knobs"].items() if k != "cgroup"}
        assert ("cgroup" in t["targets"]) == ("cgroup" in e["knobs"])
    assert task(d, plain.pid) is None
