"""The closed loop end to end: a real daemon, a real ONNX Runtime server taking requests
over a Unix socket, and four busy loops that no rule knows (plain `python3 -c 'while
True: pass'`). While the server waits for a CPU the loop climbs its ladder on the loops
(nice 19, then SCHED_IDLE, then a fence off the reserved CPU), read back from /proc; when
the server goes idle every step is undone; a stop and a kill -9 followed by a restart put
every value back too.

The thresholds are set low and the steps short so the ladder climbs within seconds on
any machine (wait_high 0.0001: a step that brings the wait down, but not to nothing,
must not stop the climb short of the fence; 0.005 did on a fresh machine, where the idle
step brought the server's wait to 0.0012). What is tested is the mechanism, not the
default thresholds, which benchmarks/bench_guard_tail.py measures.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from daemon_helpers import (
    SERVING_CHILD,
    Children,
    DaemonProc,
    affinity_of,
    cgroups_of,
    needs_root,
    nice_of,
    policy_of,
    serving_socket,
    snapshot,
)
from test_serving import requests, wait_for

pytestmark = needs_root

SCHED_IDLE = 5
LOOP = "import sys\nprint('ready', flush=True)\nwhile True: pass"
# A busy loop that is also a local client of the server (connected to its Unix socket):
# as busy as a hog, but on the serving path, so the loop must leave it alone.
BUSY_CLIENT = ("import socket, sys\ns = socket.socket(socket.AF_UNIX)\n"
               "s.connect(bytes.fromhex(sys.argv[1]))\n"
               "print('ready', flush=True)\nwhile True: pass")
RULES = """
[settings]
idle_after = "2s"
[guard]
wait_high = 0.0001
wait_low = 0.0
step_up = "0.5s"
hold = "30s"
contender_cpu_percent = 20
steps = ["weight", "idle", "fence"]
"""


def _loops(children: Children, n: int = 4) -> list[int]:
    return [children.python(LOOP).pid for _ in range(n)]


def _fenced(pid: int, keep: str) -> bool:
    """Every step on pid: nice 19, SCHED_IDLE, the fence, and the loop's weight-1 group
    (its path, where the cpu hierarchy shows it, ends in ".guard")."""
    return (nice_of(pid, pid) == 19 and policy_of(pid, pid) == SCHED_IDLE
            and affinity_of(pid, pid) == keep
            and any(p.endswith(".guard") for p in cgroups_of(pid).values()))


def _keep_cpus() -> str:
    cpus = sorted(os.sched_getaffinity(0))
    keep = cpus[:-1]
    return str(keep[0]) if len(keep) == 1 else f"{keep[0]}-{keep[-1]}"


def _climb(d: DaemonProc, srv: int, hogs: list[int]) -> None:
    """Requests flow until at least one loop is fenced; the status names it and the
    step, explain names the measurement."""
    keep = _keep_cpus()
    took = wait_for(lambda: any(_fenced(h, keep) for h in hogs), 25, step=0.1)
    assert took is not None, f"never fenced: {d.client.status()['guard']}"
    g = d.client.status()["guard"]
    assert g["step"] >= 1 and g["contenders"], g
    held = {c["pid"] for c in g["contenders"]}
    assert held <= set(hogs), f"demoted something else: {held - set(hogs)}"
    assert srv not in held
    ex = d.client.explain(next(iter(held)))
    assert ex["guard"]["knobs"] and "wait" in ex["guard"]["why"], ex


def test_unknown_busy_loops_are_fenced_while_serving_waits_and_released_when_idle(
        children: Children, start_daemon: Callable[..., DaemonProc]) -> None:
    if len(os.sched_getaffinity(0)) < 2:
        import pytest
        pytest.skip("the fence needs two CPUs (one reserved, one for the rest)")
    srv = children.python(SERVING_CHILD, "listen", "idle")
    hogs = _loops(children)
    before = {h: snapshot(h) for h in hogs}
    n_threads = len(snapshot(srv.pid))
    client = children.python(BUSY_CLIENT, serving_socket(srv.pid).encode().hex()).pid
    # The server's thread for that connection is there before its values are taken.
    assert wait_for(lambda: len(snapshot(srv.pid)) > n_threads, 5) is not None
    srv_before = snapshot(srv.pid)
    client_before = snapshot(client)
    d = start_daemon(rules_text=RULES, always_on=False)
    with requests(srv.pid, rate=300):
        _climb(d, srv.pid, hogs)
        # Every thread of the server is left as its class sets it, nothing from the loop.
        assert all(nice_of(srv.pid, t) == 0 for t in snapshot(srv.pid) if t > 0)
        time.sleep(1.0)  # more scans: the busy client is seen, and still left alone
        assert snapshot(client) == client_before, "a local client of the server demoted"
        held = {c["pid"] for c in d.client.status()["guard"]["contenders"]}
        assert client not in held
    # No requests: the server goes idle after idle_after, the loop to step 0, all undone.
    took = wait_for(lambda: all(snapshot(h) == before[h] for h in hogs), 10, step=0.1)
    assert took is not None, f"not released: {d.client.status()['guard']}"
    assert wait_for(lambda: snapshot(srv.pid) == srv_before, 5) is not None
    g = d.client.status()["guard"]
    assert g["step"] == 0 and g["contenders"] == []
    events = [e["event"] for e in d.log()]
    assert "guard_step" in events and "guard_released" in events


def test_stop_and_kill9_undo_every_step(
        children: Children, start_daemon: Callable[..., DaemonProc], tmp_path: Path) -> None:
    if len(os.sched_getaffinity(0)) < 2:
        import pytest
        pytest.skip("the fence needs two CPUs (one reserved, one for the rest)")
    srv = children.python(SERVING_CHILD, "listen", "idle")
    hogs = _loops(children)
    before = {h: snapshot(h) for h in hogs}
    with requests(srv.pid, rate=300):
        d = start_daemon(rules_text=RULES, always_on=False)
        _climb(d, srv.pid, hogs)
        assert d.stop(signal.SIGTERM) == 0
        assert all(snapshot(h) == before[h] for h in hogs), "stop left a demotion"

        d2 = start_daemon(rules_text=RULES, always_on=False, state="state2")
        _climb(d2, srv.pid, hogs)
        d2.stop(signal.SIGKILL)
        assert any(snapshot(h) != before[h] for h in hogs), "kill -9 must leave them"
    # Restart on the same state directory with the loop off: the recovery puts back what
    # the killed daemon's journal holds.
    d3 = start_daemon(rules_text=RULES + "enabled = false\n", always_on=False,
                      state="state2")
    assert all(snapshot(h) == before[h] for h in hogs), "crash recovery left a demotion"
    rec = [e for e in d3.log() if e.get("event") == "crash_recovery"]
    assert rec, "no crash recovery logged"
    time.sleep(0.2)


RT_RULES = """
[settings]
idle_after = "2s"
[classes.inference]
guard_realtime = 10
[guard]
wait_high = 0.0001
wait_low = 0.0
step_up = "0.5s"
hold = "30s"
max_hold = "30s"
contender_cpu_percent = 20
steps = ["weight"]
"""
SCHED_FIFO = 1


def _fifo(pid: int) -> bool:
    with open(f"/proc/{pid}/task/{pid}/stat") as fh:
        f = fh.read().rsplit(")", 1)[1].split()
    return int(f[38]) == SCHED_FIFO and int(f[37]) == 10  # policy, rt_priority


def _as_before(pid: int, before: dict) -> bool:  # type: ignore[type-arg]
    """Every thread has the values the process's threads had before (the server starts a
    thread per connection, so the set of threads itself changes)."""
    values = {v for t, v in before.items() if t > 0}
    now = snapshot(pid)
    return now[-1] == before[-1] and all(v in values for t, v in now.items() if t > 0)


def test_the_realtime_step_only_where_the_class_asks_with_a_starvation_guard(
        children: Children, start_daemon: Callable[..., DaemonProc]) -> None:
    """A class with guard_realtime gets SCHED_FIFO once the steps on competitors did not
    bring the wait down; with a CPU bar below what it uses, the guard lifts it at once and
    bars it; everything is put back on stop."""
    srv = children.python(SERVING_CHILD, "listen", "idle")
    hogs = _loops(children)
    srv_before = snapshot(srv.pid)
    with requests(srv.pid, rate=300):
        d = start_daemon(rules_text=RT_RULES + "rt_max_cpu_percent = 1000\n", always_on=False)
        took = wait_for(lambda: _fifo(srv.pid), 25, step=0.1)
        assert took is not None, f"never realtime: {d.client.status()['guard']}"
        g = d.client.status()["guard"]
        assert g["realtime"] == [srv.pid] and g["steps"] == ["weight", "realtime"], g
        assert srv.pid not in {c["pid"] for c in g["contenders"]}
        assert d.stop(signal.SIGTERM) == 0
        assert _as_before(srv.pid, srv_before), "stop left the server realtime"

        d2 = start_daemon(rules_text=RT_RULES + "rt_max_cpu_percent = 1\n", always_on=False,
                          state="state2")
        lifted = wait_for(lambda: any(e.get("event") == "guard_realtime_lifted"
                                      and e.get("pid") == srv.pid for e in d2.log()), 25,
                          step=0.1)
        assert lifted is not None, f"no starvation guard: {d2.client.status()['guard']}"
        time.sleep(1.0)  # barred: not made realtime again
        assert not _fifo(srv.pid)
        assert d2.client.status()["guard"]["realtime"] == []
    assert d2.stop(signal.SIGTERM) == 0
    assert wait_for(lambda: _as_before(srv.pid, srv_before), 3) is not None
    assert all(snapshot(h)[h][1] == 0 for h in hogs)  # SCHED_OTHER again
