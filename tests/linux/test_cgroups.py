"""The cgroup manager on this machine's real hierarchies, under a unique root name, moving
only a process this test starts."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ainative.platform.base import ProcessGone
from ainative.platform.linux.cgroups import (
    CgroupManager,
    CgroupSettings,
    discover,
    weight_to_shares,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="creating cgroups needs root")


def proc_cgroups(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        hid, names, path = line.split(":", 2)
        out["0" if hid == "0" and not names else names] = path
    return out


@pytest.fixture
def mgr() -> Iterator[CgroupManager]:
    m = CgroupManager(f"ainative-test-{os.getpid()}-{uuid.uuid4().hex[:6]}")
    yield m
    m.remove_all()
    assert m.owned_groups() == []


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    p = subprocess.Popen(["sleep", "60"])
    yield p
    p.kill()
    p.wait()


def test_discover_matches_proc_self_cgroup() -> None:
    keys = {h.key for h in discover()}
    mine = proc_cgroups(os.getpid())
    # Every mounted hierarchy is one /proc/self/cgroup names, spelled the same way.
    assert keys and keys <= set(mine)
    for h in discover():
        assert Path(h.mount, "cgroup.procs").exists()


def test_capabilities_say_where_each_feature_lives(mgr: CgroupManager) -> None:
    caps = mgr.capabilities()
    assert caps["layout"] in ("v1", "v2", "hybrid")
    for feature in ("cpu_weight", "cpu_idle", "cpuset", "memory_low", "freeze"):
        assert caps[feature]
    cpu_v2 = any(h.is_v2 and "cpu" in h.controllers for h in mgr.hierarchies)
    cpu_v1 = any(not h.is_v2 and "cpu" in h.controllers for h in mgr.hierarchies)
    if cpu_v2:
        assert caps["cpu_weight"] == "v2"
    elif cpu_v1:
        assert caps["cpu_weight"].startswith("v1:")
    else:
        assert caps["cpu_weight"].startswith("unavailable")


def test_group_settings_are_written(mgr: CgroupManager) -> None:
    made = mgr.ensure_group("inference", CgroupSettings(cpu_weight=10000, cpuset_cpus="0"))
    assert made
    for key, d in made.items():
        assert Path(d).is_dir() and Path(d).name.endswith(".inference")
        h = next(h for h in mgr.hierarchies if h.key == key)
        if h.is_v2:
            if "cpu" in h.controllers:
                assert Path(d, "cpu.weight").read_text().strip() == "10000"
        elif "cpu" in h.controllers:
            assert int(Path(d, "cpu.shares").read_text()) == weight_to_shares(10000) == 102400
        elif "cpuset" in h.controllers:
            assert Path(d, "cpuset.cpus").read_text().strip() == "0"
            assert Path(d, "cpuset.mems").read_text().strip()
    # Updating an existing group rewrites its values.
    mgr.ensure_group("inference", CgroupSettings(cpu_weight=200))
    for key, d in made.items():
        if key == "cpu":
            assert int(Path(d, "cpu.shares").read_text()) == weight_to_shares(200)


def test_idle_group(mgr: CgroupManager) -> None:
    if not mgr.capabilities()["cpu_idle"].startswith(("v1", "v2")):
        pytest.skip(f"cpu.idle: {mgr.capabilities()['cpu_idle']}")
    made = mgr.ensure_group("background", CgroupSettings(cpu_weight=1, cpu_idle=True))
    assert any(Path(d, "cpu.idle").read_text().strip() == "1" for d in made.values())


def test_move_and_move_back(mgr: CgroupManager, sleeper: subprocess.Popen[bytes]) -> None:
    made = mgr.ensure_group("inference", CgroupSettings(cpu_weight=5000))
    before = mgr.current(sleeper.pid)
    assert set(made) <= set(before)
    prev = mgr.move(sleeper.pid, "inference")
    assert prev == before
    now = proc_cgroups(sleeper.pid)
    for key in made:
        assert now[key] == mgr.group_path("inference")
    assert mgr.members("inference") == {sleeper.pid}
    mgr.move_back(sleeper.pid, prev)
    after = proc_cgroups(sleeper.pid)
    for key, path in before.items():
        assert after[key] == path
    assert mgr.members("inference") == set()


def test_move_back_to_vanished_group_goes_to_root(mgr: CgroupManager,
                                                  sleeper: subprocess.Popen[bytes]) -> None:
    made = mgr.ensure_group("a", CgroupSettings(cpu_weight=100))
    mgr.ensure_group("b", CgroupSettings(cpu_weight=100))
    mgr.move(sleeper.pid, "a")
    prev = mgr.move(sleeper.pid, "b")
    for d in made.values():
        os.rmdir(d)  # the group it came from disappears meanwhile
    mgr.move_back(sleeper.pid, prev)
    cur = proc_cgroups(sleeper.pid)
    for key in made:
        assert cur[key] == "/"


def test_remove_all_keeps_a_group_with_processes(mgr: CgroupManager,
                                                 sleeper: subprocess.Popen[bytes]) -> None:
    mgr.ensure_group("inference", CgroupSettings(cpu_weight=300))
    prev = mgr.move(sleeper.pid, "inference")
    mgr.remove_all()  # busy: refused by the kernel, not an error
    assert mgr.owned_groups()
    mgr.move_back(sleeper.pid, prev)
    mgr.remove_all()
    assert mgr.owned_groups() == []


def test_gone_process_and_bad_names(mgr: CgroupManager) -> None:
    p = subprocess.Popen(["true"])
    p.wait()
    mgr.ensure_group("inference", CgroupSettings(cpu_weight=300))
    with pytest.raises(ProcessGone):
        mgr.current(p.pid)
    with pytest.raises(ProcessGone):
        mgr.move(p.pid, "inference")
    with pytest.raises(ValueError):
        mgr.ensure_group("../escape", CgroupSettings(cpu_weight=1))
    with pytest.raises(ValueError):
        CgroupManager("a/b")


def test_weight_to_shares_clamps() -> None:
    assert weight_to_shares(100) == 1024
    assert weight_to_shares(1) == 10
    assert weight_to_shares(0) == 2
    assert weight_to_shares(10**6) == 262144
