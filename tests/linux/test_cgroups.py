"""The cgroup manager on this machine's real hierarchies, under a unique root name, moving
only a process this test starts."""

from __future__ import annotations

import errno
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ainative.platform.base import ProcessGone
from ainative.platform.linux.backend import LinuxBackend
from ainative.platform.linux.cgroups import (
    CgroupManager,
    CgroupSettings,
    Hierarchy,
    check_rel_path,
    discover,
    kernel_at_least,
    weight_to_shares,
)

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="creating cgroups needs root")


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


@root_only
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


@root_only
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


@root_only
def test_idle_group(mgr: CgroupManager) -> None:
    if not mgr.capabilities()["cpu_idle"].startswith(("v1", "v2")):
        pytest.skip(f"cpu.idle: {mgr.capabilities()['cpu_idle']}")
    made = mgr.ensure_group("background", CgroupSettings(cpu_weight=1, cpu_idle=True))
    assert any(Path(d, "cpu.idle").read_text().strip() == "1" for d in made.values())


@root_only
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


@root_only
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


@root_only
def test_remove_all_keeps_a_group_with_processes(mgr: CgroupManager,
                                                 sleeper: subprocess.Popen[bytes]) -> None:
    mgr.ensure_group("inference", CgroupSettings(cpu_weight=300))
    prev = mgr.move(sleeper.pid, "inference")
    mgr.remove_all()  # busy: refused by the kernel, not an error
    assert mgr.owned_groups()
    mgr.move_back(sleeper.pid, prev)
    mgr.remove_all()
    assert mgr.owned_groups() == []


@root_only
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


def test_kernel_version_and_idle_on_v2_without_the_cpu_controller_enabled(
        tmp_path: Path) -> None:
    assert kernel_at_least(5, 15, "5.15.0-91-generic") and kernel_at_least(5, 15, "6.1.0")
    assert not kernel_at_least(5, 15, "5.10.209") and not kernel_at_least(5, 15, "garbage")
    # A v2 root whose children have no cpu files yet (cpu not in the root's subtree_control):
    # the kernel version decides, not a random child group.
    (tmp_path / "some.slice").mkdir()
    h = Hierarchy("0", str(tmp_path), frozenset({"cpu", "memory"}))
    mgr = CgroupManager.__new__(CgroupManager)
    assert mgr._idle_supported(h) == kernel_at_least(5, 15)
    assert not mgr._idle_supported(Hierarchy("0", str(tmp_path), frozenset({"memory"})))


def test_journal_paths_that_climb_out_are_refused(tmp_path: Path) -> None:
    mount = tmp_path / "mnt"
    (mount / "a" / "b").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (mount / "link").symlink_to(tmp_path / "outside")
    assert check_rel_path(str(mount), "/a/b") == str(mount / "a" / "b")
    assert check_rel_path(str(mount), "/") == str(mount) + "/"
    for bad, why in (("/a/../../outside", "'..' component"), ("/..", "'..' component"),
                     ("a/..", "'..' component"), ("/a\0b", "NUL byte"),
                     ("/link", "resolves outside"), ("/link/x", "resolves outside")):
        with pytest.raises(ValueError, match=why):
            check_rel_path(str(mount), bad)
    with pytest.raises(ValueError, match="must be a string"):
        check_rel_path(str(mount), ["/a"])


@root_only
def test_move_back_with_a_bad_path_moves_nothing(mgr: CgroupManager,
                                                 sleeper: subprocess.Popen[bytes]) -> None:
    made = mgr.ensure_group("inference", CgroupSettings(cpu_weight=300))
    before = mgr.current(sleeper.pid)
    prev = mgr.move(sleeper.pid, "inference")
    now = mgr.current(sleeper.pid)
    key = next(iter(made))
    for bad in ("/../../..", "/x\0y", 42):
        tampered = {**prev, key: bad}
        with pytest.raises(ValueError):
            mgr.move_back(sleeper.pid, tampered)  # type: ignore[arg-type]
        assert mgr.current(sleeper.pid) == now  # not even the good entries moved
    mgr.move_back(sleeper.pid, prev)
    assert mgr.current(sleeper.pid) == before


@root_only
def test_a_group_left_idle_by_a_crash_takes_a_weight(mgr: CgroupManager) -> None:
    cpu = mgr.hierarchy_for("cpu_weight")
    if cpu is None or not mgr.capabilities()["cpu_idle"].startswith(("v1", "v2")):
        pytest.skip(f"cpu.idle: {mgr.capabilities()['cpu_idle']}")
    made = mgr.ensure_group("background", CgroupSettings(cpu_weight=100))
    d = Path(made[cpu.key])
    # What a crashed daemon leaves: the group still idle. The kernel then refuses a weight.
    (d / "cpu.idle").write_text("1")
    weight_file = "cpu.weight" if cpu.is_v2 else "cpu.shares"
    with pytest.raises(OSError):
        fd = os.open(d / weight_file, os.O_WRONLY)
        try:
            os.write(fd, b"50" if cpu.is_v2 else b"512")
        finally:
            os.close(fd)
    # A class that no longer asks for idle: idle is reset first, then the weight goes in.
    mgr.ensure_group("background", CgroupSettings(cpu_weight=50))
    assert (d / "cpu.idle").read_text().strip() == "0"
    expect = "50" if cpu.is_v2 else str(weight_to_shares(50))
    assert (d / weight_file).read_text().strip() == expect
    # Asking for idle again (weight too) works from either state, and keeps it idle.
    for _ in range(2):
        mgr.ensure_group("background", CgroupSettings(cpu_weight=1, cpu_idle=True))
        assert (d / "cpu.idle").read_text().strip() == "1"
    # And back to a plain weight, explicitly not idle.
    mgr.ensure_group("background", CgroupSettings(cpu_weight=200, cpu_idle=False))
    assert (d / "cpu.idle").read_text().strip() == "0"


@root_only
def test_backend_members_root_path_and_cleanup(sleeper: subprocess.Popen[bytes]) -> None:
    be = LinuxBackend(cgroup_root=f"ainative-test-{os.getpid()}-{uuid.uuid4().hex[:6]}")
    try:
        assert be.cgroup_members() == {}
        paths = be.cgroup_prepare("inference", {"cpu_weight": 300})
        assert paths and set(be.cgroup_dirs("inference")) == set(paths)
        roots = be.cgroup_root_path()
        assert set(paths) <= set(roots) and set(roots.values()) == {"/"}
        before = be.get_knob(sleeper.pid, "cgroup")
        be.set_knob(sleeper.pid, "cgroup", paths)
        # A child started inside inherits the group: it is a member too.
        child = subprocess.Popen(["sleep", "60"])
        try:
            be.set_knob(child.pid, "cgroup", paths)
            members = be.cgroup_members()
            assert set(members) == {sleeper.pid, child.pid}
            assert all(m[k] == p for m in members.values() for k, p in paths.items())
            # Busy: not removed, and it says why.
            failed = be.cleanup()
            assert failed and all("still holds 2 processes" in v for v in failed.values())
            be.set_knob(child.pid, "cgroup", roots)
        finally:
            child.kill()
            child.wait()
        be.set_knob(sleeper.pid, "cgroup", before)
        assert be.get_knob(sleeper.pid, "cgroup") == before
        assert be.cgroup_members() == {}
        assert be.cleanup() == {}
        assert be.cgroup_dirs("inference") == {}
    finally:
        be.cgroups.remove_all()


def test_cleanup_without_cgroups_is_quiet(tmp_path: Path) -> None:
    be = LinuxBackend(cgroup_mount=str(tmp_path))
    assert be.cleanup() == {} and be.cgroup_members() == {} and be.cgroup_root_path() == {}
    for _ in range(2):  # the first failure is remembered, and said the same way
        with pytest.raises(OSError, match=r"^cgroups unavailable: no cgroup filesystem "
                           r"mounted under ") as ei:
            be.cgroup_prepare("x", {"cpu_weight": 1})
        assert ei.value.errno == errno.ENOENT
