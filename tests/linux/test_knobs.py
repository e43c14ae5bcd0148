"""The per-thread knobs against the real kernel, on threads this test starts itself."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from ainative.platform.base import SCHED_BATCH, SCHED_FIFO, SCHED_IDLE, SCHED_OTHER, ProcessGone
from ainative.platform.linux import knobs

ROOT = os.geteuid() == 0
THREADS = """
import threading, sys
ev = threading.Event()
ts = [threading.Thread(target=ev.wait, daemon=True) for _ in range(2)]
[t.start() for t in ts]
print('ready', flush=True)
sys.stdin.readline()
"""


@pytest.fixture
def child() -> Iterator[subprocess.Popen[str]]:
    p = subprocess.Popen([sys.executable, "-c", THREADS], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    assert p.stdout.readline().strip() == "ready"
    yield p
    p.kill()
    p.wait()


def tids(pid: int) -> list[int]:
    return sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))


def proc_nice(pid: int, tid: int) -> int:
    with open(f"/proc/{pid}/task/{tid}/stat") as fh:
        return int(fh.read().rsplit(")", 1)[1].split()[16])


def test_nice_is_per_thread(child: subprocess.Popen[str]) -> None:
    main, *others = tids(child.pid)
    knobs.set_nice(others[0], 7)
    assert knobs.get_nice(others[0]) == 7
    assert proc_nice(child.pid, others[0]) == 7
    assert knobs.get_nice(main) == 0
    assert proc_nice(child.pid, main) == 0


@pytest.mark.skipif(not ROOT, reason="lowering nice and realtime policies need root")
def test_negative_nice_and_back(child: subprocess.Popen[str]) -> None:
    knobs.set_nice(child.pid, -5)
    assert proc_nice(child.pid, child.pid) == -5
    knobs.set_nice(child.pid, 0)
    assert knobs.get_nice(child.pid) == 0


@pytest.mark.skipif(not ROOT, reason="realtime and leaving SCHED_IDLE need root")
def test_policies_round_trip_and_realtime_resets_on_fork(child: subprocess.Popen[str]) -> None:
    t = tids(child.pid)[1]
    for pol in (SCHED_BATCH, SCHED_IDLE, SCHED_OTHER):
        knobs.set_policy(t, pol)
        assert knobs.get_policy(t) == (pol, 0)
    knobs.set_policy(t, SCHED_FIFO, 3)
    assert knobs.get_policy(t) == (SCHED_FIFO, 3)
    # The kernel reports RESET_ON_FORK in the raw policy; our value hides it.
    assert os.sched_getscheduler(t) & 0x40000000
    knobs.set_policy(t, SCHED_OTHER)
    assert knobs.get_policy(t) == (SCHED_OTHER, 0)


def test_ioprio_round_trip_per_thread(child: subprocess.Popen[str]) -> None:
    main, other = tids(child.pid)[:2]
    start = knobs.get_ioprio(other)
    knobs.set_ioprio(other, 2, 6)
    assert knobs.get_ioprio(other) == (2, 6)
    knobs.set_ioprio(other, 3, 0)
    assert knobs.get_ioprio(other) == (3, 0)
    assert knobs.get_ioprio(main) == start
    knobs.set_ioprio(other, *start)
    assert knobs.get_ioprio(other) == start
    with pytest.raises(ValueError):
        knobs.set_ioprio(other, 2, 9)


def test_affinity_round_trip(child: subprocess.Popen[str]) -> None:
    before = knobs.get_affinity(child.pid)
    assert before == frozenset(os.sched_getaffinity(child.pid))
    one = frozenset([min(before)])
    knobs.set_affinity(child.pid, one)
    assert knobs.get_affinity(child.pid) == one
    with open(f"/proc/{child.pid}/status") as fh:
        allowed = next(ln for ln in fh if ln.startswith("Cpus_allowed_list:")).split()[1]
    assert allowed == str(min(before))
    knobs.set_affinity(child.pid, before)
    assert knobs.get_affinity(child.pid) == before


def test_vanished_thread_raises_process_gone() -> None:
    p = subprocess.Popen(["true"])
    p.wait()
    for fn in (knobs.get_nice, knobs.get_policy, knobs.get_ioprio, knobs.get_affinity):
        with pytest.raises(ProcessGone):
            fn(p.pid)
    with pytest.raises(ProcessGone):
        knobs.set_nice(p.pid, 1)
    with pytest.raises(ProcessGone):
        knobs.set_ioprio(p.pid, 2, 4)


@pytest.mark.skipif(not ROOT, reason="needs root to drop to another user")
def test_unprivileged_caller_gets_permission_error(child: subprocess.Popen[str]) -> None:
    # A process of uid 65534 may not renice ours: the error must be PermissionError.
    code = ("import os, sys; from ainative.platform.linux import knobs\n"
            "os.setgid(65534); os.setuid(65534)\n"
            "try:\n knobs.set_nice(int(sys.argv[1]), 3)\nexcept PermissionError: print('EPERM')\n"
            "try:\n knobs.set_ioprio(int(sys.argv[1]), 2, 1)\n"
            "except PermissionError: print('EPERM')\n")
    out = subprocess.run([sys.executable, "-c", code, str(child.pid)], capture_output=True,
                         text=True, check=True)
    assert out.stdout.split() == ["EPERM", "EPERM"]
    assert knobs.get_nice(child.pid) == 0


def _proc_slice(pid: int, tid: int) -> int | None:
    """The slice as /proc/PID/task/TID/sched prints it (se.slice, ns), when it does."""
    with open(f"/proc/{pid}/task/{tid}/sched") as fh:
        for line in fh:
            if line.startswith("se.slice"):
                return int(line.split(":")[1].strip().split(".")[0])
    return None


needs_slices = pytest.mark.skipif(
    not knobs.default_slice_ns(), reason="this kernel has no custom EEVDF slices "
    "(sched_getattr reports none; Linux 6.12+)")


@needs_slices
def test_slice_is_per_thread_and_zero_puts_back_the_default(
        child: subprocess.Popen[str]) -> None:
    main, *others = tids(child.pid)
    base = knobs.default_slice_ns()
    assert knobs.get_slice(others[0]) == 0
    knobs.set_slice(others[0], 100_000)
    assert knobs.get_slice(others[0]) == 100_000
    assert knobs.get_slice(main) == 0  # the other threads keep theirs
    if _proc_slice(child.pid, others[0]) is not None:  # the kernel's own account
        assert _proc_slice(child.pid, others[0]) == 100_000
    knobs.set_slice(others[0], 0)
    assert knobs.get_slice(others[0]) == 0
    if _proc_slice(child.pid, others[0]) is not None:
        assert _proc_slice(child.pid, others[0]) == base


@needs_slices
def test_a_slice_keeps_the_threads_nice_and_policy(child: subprocess.Popen[str]) -> None:
    knobs.set_nice(child.pid, 5)
    knobs.set_policy(child.pid, SCHED_BATCH)
    knobs.set_slice(child.pid, 250_000)
    assert knobs.get_nice(child.pid) == 5
    assert knobs.get_policy(child.pid) == (SCHED_BATCH, 0)
    assert knobs.get_slice(child.pid) == 250_000


@needs_slices
@pytest.mark.skipif(not ROOT, reason="a realtime policy needs root")
def test_a_realtime_thread_has_no_slice_to_set(child: subprocess.Popen[str]) -> None:
    knobs.set_slice(child.pid, 200_000)
    knobs.set_policy(child.pid, SCHED_FIFO, 1)
    try:
        # sched_getattr hides it under FIFO, but the thread keeps it for when it is fair
        assert knobs.get_slice(child.pid) == 200_000
        with pytest.raises(OSError, match="realtime policy"):
            knobs.set_slice(child.pid, 100_000)
        assert knobs.get_policy(child.pid) == (SCHED_FIFO, 1)  # not turned back to other
    finally:
        knobs.set_policy(child.pid, SCHED_OTHER)
    assert knobs.get_slice(child.pid) == 200_000


@needs_slices
def test_threads_and_children_inherit_a_slice() -> None:
    code = ("import os, threading, sys\n"
            "from ainative.platform.linux import knobs\n"
            "knobs.set_slice(0, 100_000)\n"
            "got = []\n"
            "t = threading.Thread(target=lambda: got.append(knobs.get_slice(0))); t.start(); "
            "t.join()\n"
            "pid = os.fork()\n"
            "if pid == 0:\n"
            "    os._exit(0 if knobs.get_slice(0) == 100_000 else 1)\n"
            "_, st = os.waitpid(pid, 0)\n"
            "print(got[0], os.waitstatus_to_exitcode(st))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["100000", "0"]
