"""ainative's cgroup v2 knobs on a pure v2 host, read back from the v2 files.

Runs wherever the cgroup tree is pure v2 with the cpu, cpuset and memory controllers (most
current distributions, GitHub's runners). This machine is hybrid, so here it skips, and
``test_cgroup_v2_vm.py`` runs it inside a VM booting Debian 12's own kernel (6.1); there
(``AINATIVE_VM_GUEST=1``) a missing v2 controller is a failure, not a skip.

What it checks, on a real ONNX Runtime model server and a process named like a load
generator, through a real daemon:
cpu.weight, cpuset.cpus, memory.low and cpu.idle as the v2 files show them, the processes
in the groups' cgroup.procs, the class's affinity on every thread after the move into a
cpuset-enabled group (Debian's 6.1 resets affinity on that move), and everything put back
on stop and after a kill -9 by ``ainative restore``, as the systemd unit's ExecStopPost runs
it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from daemon_helpers import (
    ONNX_CHILD,
    Children,
    DaemonProc,
    cgroups_of,
    snapshot,
    thread_ids,
)

from ainative.platform.linux.cgroups import CgroupManager, discover, read_file, write_file

MOUNT = "/sys/fs/cgroup"
IN_VM = os.environ.get("AINATIVE_VM_GUEST") == "1"
NEEDED = {"cpu", "cpuset", "memory"}


def _why_not_v2() -> str | None:
    if os.geteuid() != 0:
        return "writes cgroups: needs root"
    hs = discover(MOUNT)
    if len(hs) != 1 or not hs[0].is_v2:
        kinds = sorted(h.key for h in hs)
        return (f"not a pure cgroup v2 host (hierarchies here: {kinds}); "
                "tests/vm/test_cgroup_v2_vm.py runs this in a v2 VM")
    missing = NEEDED - hs[0].controllers
    if missing:
        return f"the v2 root lacks the {', '.join(sorted(missing))} controller(s)"
    return None


WHY_NOT = _why_not_v2()
if WHY_NOT is not None and IN_VM:
    # Inside the VM the point is to run: say so loudly instead of skipping.
    raise RuntimeError(f"the VM guest should be pure cgroup v2: {WHY_NOT}")
pytestmark = pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")

CPUS = sorted(os.sched_getaffinity(0))
ALL_CPUS = f"{CPUS[0]}-{CPUS[-1]}" if len(CPUS) > 1 else str(CPUS[0])
FIRST_CPU = CPUS[0]
MEMORY_LOW = 64 << 20

# Every v2 knob ainative sets, on the classes the two processes fall into. The inference
# class asks for a cpuset AND an affinity: the move into the cpuset group must not leave
# the threads on the cpuset's CPUs instead of the class's.
RULES = f"""
[classes.inference]
serving = false
nice = -10
cgroup = true
cpu_weight = 800
cpuset = "{ALL_CPUS}"
affinity = "{FIRST_CPU}"
memory_low = "{MEMORY_LOW}"

[classes.background]
only_while_serving_active = false
cgroup = true
cpu_weight = 1
cpu_idle = true
"""


def group(d: DaemonProc, cls: str) -> Path:
    return Path(MOUNT, f"{d.cgroup_root}.{cls}")


def v2_path(pid: int) -> str:
    return cgroups_of(pid)["0"]


def start(start_daemon: Callable[..., DaemonProc], children: Children,
          tmp_path: Path) -> tuple[DaemonProc, int, int, dict[int, tuple[object, ...]],
                                   dict[int, tuple[object, ...]]]:
    # Neither process burns CPU (both classes apply whether or not anything is busy): under
    # TCG the daemon's start-up takes minutes behind a spinning process. A model server
    # that is listening, idle, and a process named like a load generator, sleeping.
    server = children.python(ONNX_CHILD, "listen", "idle").pid
    exe = tmp_path / "stress-ng"
    exe.symlink_to(sys.executable)
    hog = children.spawn([str(exe), "-c", "import sys, time\nprint('ready', flush=True)\n"
                          "time.sleep(3600)"]).pid
    before = (snapshot(server), snapshot(hog))
    d = start_daemon(rules_text=RULES, always_on=False)
    d.wait_task(server, cls="inference")
    d.wait_task(hog, cls="background")
    return d, server, hog, before[0], before[1]


def test_capabilities_are_v2_before_anything_enables_the_cpu_controller() -> None:
    """cpu.idle exists in v2 child groups since 5.15, but only once the cpu controller is
    enabled at the root: the check must not conclude 'no cpu.idle' from a child without
    cpu files (it did, on 6.1)."""
    root_sc = Path(MOUNT, "cgroup.subtree_control")
    if IN_VM and "cpu" in read_file(str(root_sc)).split():
        write_file(str(root_sc), "-cpu")  # a fresh VM: nothing else uses it
    caps = CgroupManager(f"ainative-caps-{os.getpid()}").capabilities()
    assert caps["layout"] == "v2"
    for feature in ("cpu_weight", "cpu_idle", "cpuset", "memory_low", "freeze"):
        assert caps[feature] == "v2", (feature, caps[feature])


def test_v2_knobs_on_a_real_onnx_process_and_a_hog_then_stop_restores(
        children: Children, start_daemon: Callable[..., DaemonProc], tmp_path: Path) -> None:
    d, server, hog, server_before, hog_before = start(start_daemon, children, tmp_path)
    inf, bg = group(d, "inference"), group(d, "background")
    enabled = read_file(f"{MOUNT}/cgroup.subtree_control").split()
    assert NEEDED <= set(enabled), enabled
    # Where the processes are, as the kernel says it, from both sides.
    assert v2_path(server) == f"/{inf.name}"
    assert v2_path(hog) == f"/{bg.name}"
    assert str(server) in read_file(str(inf / "cgroup.procs")).split()
    assert str(hog) in read_file(str(bg / "cgroup.procs")).split()
    # The knobs, from the v2 files.
    assert read_file(str(inf / "cpu.weight")) == "800"
    assert read_file(str(inf / "cpuset.cpus")) == ALL_CPUS
    assert read_file(str(inf / "cpuset.cpus.effective")) == ALL_CPUS
    assert int(read_file(str(inf / "memory.low"))) == MEMORY_LOW
    assert read_file(str(inf / "cpu.idle")) == "0"
    assert read_file(str(bg / "cpu.idle")) == "1"
    # The class's affinity survived the move into a cpuset-enabled group, on every thread.
    for tid in thread_ids(server):
        assert os.sched_getaffinity(tid) == {FIRST_CPU}, f"thread {tid}"
    assert d.stop() == 0
    assert snapshot(server) == server_before
    assert snapshot(hog) == hog_before
    assert not inf.exists() and not bg.exists(), "ainative's groups were left behind"


def test_kill9_then_ainative_restore_puts_everything_back(
        children: Children, start_daemon: Callable[..., DaemonProc], tmp_path: Path) -> None:
    """What the unit's ExecStopPost does after a crash: the journal replayed by
    `ainative restore` with no daemon running."""
    d, server, hog, server_before, hog_before = start(start_daemon, children, tmp_path)
    assert v2_path(server) != server_before[-1][0][1]
    assert d.stop(signal.SIGKILL) == -signal.SIGKILL
    out = subprocess.run([sys.executable, "-m", "ainative", "restore", "--socket", d.sock,
                          "--state-dir", d.state_dir], capture_output=True, text=True,
                         timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert "failed" in out.stdout and " 0 failed" in out.stdout, out.stdout
    assert snapshot(server) == server_before
    assert snapshot(hog) == hog_before
    assert not group(d, "inference").exists() and not group(d, "background").exists()
