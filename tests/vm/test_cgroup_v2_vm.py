"""The kernel-facing tests, run again inside a VM on Debian 12's own kernel (6.1) with a
pure cgroup v2 tree: the layout most hosts ainative is installed on have, and this one
(hybrid, 6.18) does not.

One VM boots for the module (virtme-ng over qemu/TCG: vmharness.py says why), runs pytest
over the guest's share of the suite and writes a JUnit report to a folder shared with the
host; each test here then asserts on one part of that report. The guest runs:

- ``tests/vm/test_cgroup_v2_guest.py``: cpu.weight, cpuset, memory.low, cpu.idle read back
  from the v2 files on a real ONNX Runtime model server and a process named like a load
  generator, the class's affinity after the move into a cpuset group, stop and crash
  restore;
- ``tests/linux``: the platform layer (cgroups, knobs, proc connector, procfs, probe).

The daemon tests that first found the two v2 bugs (affinity reset by the move into a
cpuset-enabled group on 6.1; cpu.idle said missing) are not run here: each starts a daemon
behind a spinning ONNX Runtime child, minutes under TCG. The guest module reproduces both
conditions directly (a class with a cpuset and an affinity; cpu.idle before the cpu
controller is enabled).

Skipped, with the reason, where no VM can start (not root, no qemu, no kernel, not amd64);
on a Debian 12 machine as root with scripts/bootstrap run, it runs.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import pytest
from vmharness import VmResult, run_in_vm, why_no_vm

GUEST_TESTS = (
    "tests/vm/test_cgroup_v2_guest.py",  # first: it wants the cpu controller not yet on
    "tests/linux",
)
# Under TCG everything runs 10-16x slower than here: the whole run took 138-188 s here.
VM_TIMEOUT_S = 600
pytestmark = pytest.mark.timeout(VM_TIMEOUT_S + 120)


@dataclass
class GuestRun:
    vm: VmResult
    outcomes: dict[str, str]  # "file::test" -> passed / failed / error / skipped
    skipped_why: dict[str, str]


def _outcomes(junit: Path) -> tuple[dict[str, str], dict[str, str]]:
    outcomes: dict[str, str] = {}
    why: dict[str, str] = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        state = "passed"
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                state = child.tag
                why[name] = (child.get("message") or "")[:300]
                break
        outcomes[name] = state
    return outcomes, why


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> GuestRun:
    why = why_no_vm()
    if why is not None:
        pytest.skip(f"no VM here: {why}")
    out = tmp_path_factory.mktemp("vm-out")
    os.chmod(out, 0o755)
    junit = out / "junit.xml"
    cmd = ("AINATIVE_VM_GUEST=1 AINATIVE_TEST_TIME_SCALE=8 .venv/bin/python -m pytest -q "
           f"-p no:cacheprovider -o addopts='' --junitxml={junit} " + " ".join(GUEST_TESTS))
    vm = run_in_vm(cmd, timeout=VM_TIMEOUT_S, rwdirs=(str(out),))
    print(f"VM run: rc {vm.rc}, {vm.seconds:.0f} s (boot included)")
    if not junit.exists():
        pytest.fail(f"the VM wrote no test report (rc {vm.rc}); its output ends:\n"
                    + vm.output[-3000:])
    outcomes, skipped = _outcomes(junit)
    return GuestRun(vm, outcomes, skipped)


def _part(run: GuestRun, prefix: str) -> dict[str, str]:
    return {k: v for k, v in run.outcomes.items() if k.startswith(prefix)}


def _failures(part: dict[str, str], run: GuestRun) -> list[str]:
    return [f"{k}: {v}: {run.skipped_why.get(k, '')}" for k, v in part.items()
            if v in ("failure", "error")]


def test_v2_knobs_read_back_from_the_v2_files_in_the_guest(guest: GuestRun) -> None:
    part = _part(guest, "tests.vm.test_cgroup_v2_guest")
    assert len(part) == 3, f"guest v2 tests missing: {part}\n{guest.vm.output[-3000:]}"
    assert all(v == "passed" for v in part.values()), (
        _failures(part, guest) or [f"{k}: skipped: {guest.skipped_why.get(k)}" for k in part])


def test_the_platform_tests_pass_on_v2_and_6_1(guest: GuestRun) -> None:
    part = _part(guest, "tests.linux.")
    assert len(part) >= 30, f"tests/linux hardly ran in the guest: {len(part)}"
    assert not _failures(part, guest), "\n".join(_failures(part, guest))
    # cpu.idle exists on 6.1's v2: its tests must run there, not skip (they did skip).
    idle = {k: v for k, v in part.items() if "idle" in k}
    assert idle and all(v == "passed" for v in idle.values()), (
        idle, {k: guest.skipped_why.get(k) for k in idle})
