"""Contention is checked before it is trusted, and the hand-made remedy's cgroup really
holds the hogs at the smallest share and goes away after."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from ainative.stress.contention import ContentionError, Hogs, parse_scenario
from ainative.stress.remedies import HogCgroup, RemedyError, prefix


def _gone(pids: list[int]) -> bool:
    return not [p for p in pids if psutil.pid_exists(p)
                and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]


def test_a_hog_that_exits_at_once_fails_the_check() -> None:
    hogs = Hogs([parse_scenario("cpu:1")], use_stress_ng=False)
    hogs._spawn(["false"])  # what a bad stress-ng argument looks like from outside
    with pytest.raises(ContentionError, match="exited at once"):
        hogs.verify()
    assert hogs.procs == []


def test_a_hog_that_burns_no_cpu_fails_the_check() -> None:
    hogs = Hogs([parse_scenario("cpu:1")], use_stress_ng=False)
    hogs._spawn(["sleep", "30"])
    pid = hogs.procs[0].pid
    with pytest.raises(ContentionError, match=r"used 0\.00 s of CPU"):
        hogs.verify()
    time.sleep(0.1)
    assert _gone([pid])


def test_stress_ng_hogs_are_all_there_and_leave_no_orphans() -> None:
    with Hogs([parse_scenario("cpu:3"), parse_scenario("mem:32M")]) as hogs:
        if hogs.tool != "stress-ng":
            pytest.skip("stress-ng is not installed")
        pids = hogs.pids()
        names = {psutil.Process(p).name() for p in pids}
        assert len(pids) >= 1 + 3 + 2 and {"stress-ng-cpu", "stress-ng-vm"} <= names
        assert hogs.verified["cpu_s"] > 0.2
        # Same session as us (so the same scheduler autogroup), own process group.
        assert {os.getsid(p) for p in pids} == {os.getsid(0)}
        assert os.getpgid(pids[0]) != os.getpgid(0)
    time.sleep(0.2)
    assert _gone(pids)


def test_internal_io_hog_writes() -> None:
    with Hogs([parse_scenario("io:1")], use_stress_ng=False) as hogs:
        (pid,) = hogs.pids()
        w0 = psutil.Process(pid).io_counters().write_chars
        time.sleep(0.5)
        assert psutil.Process(pid).io_counters().write_chars > w0
        tmp = hogs.tmpdir
        assert tmp is not None and os.listdir(tmp)
    assert not os.path.exists(tmp)


@pytest.mark.skipif(os.geteuid() != 0, reason="creating a cgroup needs root")
def test_hog_cgroup_holds_the_hogs_at_the_least_share_and_is_removed() -> None:
    with Hogs([parse_scenario("cpu:2")]) as hogs:
        name = f"ainative-stress-hogs-test-{os.getpid()}"
        cg = HogCgroup(name)
        try:
            assert cg.add(hogs.pids()) == len(hogs.pids())
            knob, value = cg.knob
            assert Path(cg.dir, knob).read_text().strip() == value
            assert value == ("1" if cg.is_v2 else "2")
            assert set(cg.members()) == set(hogs.pids())
            for pid in hogs.pids():
                assert f"/{name}" in Path(f"/proc/{pid}/cgroup").read_text()
        finally:
            cg.remove()
    assert not os.path.exists(cg.dir)
    cg.remove()  # twice is harmless


def test_remedy_prefixes() -> None:
    assert prefix("nice") == ["nice", "-n", "-10"]
    assert prefix("chrt") == ["chrt", "-f", "10"]
    assert prefix("alone") == []


def test_no_cpu_hierarchy_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RemedyError, match="no cgroup hierarchy with the cpu controller"):
        HogCgroup("x", mount_base=str(tmp_path))


def _sched_under(*prefix_argv: str) -> dict[str, object]:
    code = ("import json; from ainative.stress.metrics import sched_state; "
            "print(json.dumps(sched_state()))")
    out = subprocess.run([*prefix_argv, sys.executable, "-c", code], capture_output=True,
                         text=True, check=True, timeout=60).stdout
    return dict(json.loads(out))


def test_a_remedy_that_did_not_take_effect_fails_the_scenario() -> None:
    from ainative.stress.leader import ScenarioError, _check_remedy

    # What `nice -n -10` leaves behind without the right to raise priority: a workload at
    # some other nice, which must not be reported as the nice scenario.
    lowered = _sched_under("nice", "-n", "5")
    assert lowered["nice"] == 5 and lowered["policy"] == "other"
    with pytest.raises(ScenarioError, match="nice -n -10 did not take effect"):
        _check_remedy("nice", lowered)
    with pytest.raises(ScenarioError, match="chrt -f 10 did not take effect"):
        _check_remedy("chrt", lowered)
    _check_remedy("alone", lowered)


@pytest.mark.skipif(os.geteuid() != 0, reason="raising priority needs root")
def test_the_remedies_take_effect_as_root() -> None:
    from ainative.stress.leader import _check_remedy

    niced = _sched_under(*prefix("nice"))
    assert niced["nice"] == -10
    _check_remedy("nice", niced)
    rt = _sched_under(*prefix("chrt"))
    assert rt["policy"] == "fifo" and rt["rt_priority"] == 10
    _check_remedy("chrt", rt)
