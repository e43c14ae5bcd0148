"""The .deb and its systemd service on a real Debian 12 machine with systemd as PID 1: a
VM booting Debian's 6.1 kernel from a debootstrapped image (``build-systemd-image``,
cached in .vm-cache/), where ``service_check.py`` installs the package, starts the
service, lets it protect a real ONNX Runtime model server against two CPU hogs (all run as
user nobody), stops it, kills it with -9, and purges the package, recording a verdict per
check. Each test here asserts one stage of that run.

The .deb comes from ./scripts/package (run here when dist/ has none for this version or it
is older than the sources). Skipped, with the reason, where no VM can boot (not root, no
qemu, no kernel, no debootstrap to build the image).

Timings inside the VM are not measurements (TCG, 10-16x slower): nothing here asserts one.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
from vmharness import CHECKOUT, IMAGE, VmResult, run_systemd_vm, why_no_systemd_vm

VM_TIMEOUT_S = 1200
pytestmark = pytest.mark.timeout(VM_TIMEOUT_S + 900)  # + image and package builds


def _version() -> str:
    with open(CHECKOUT / "pyproject.toml", "rb") as fh:
        return str(tomllib.load(fh)["project"]["version"])


def _deb() -> Path:
    """dist/'s .deb for this version, built first when missing or older than the code."""
    deb = CHECKOUT / "dist" / f"ainative_{_version()}_amd64.deb"
    inputs = [*(CHECKOUT / "src").rglob("*.py"), *(CHECKOUT / "packaging").rglob("*"),
              CHECKOUT / "scripts" / "package", CHECKOUT / "pyproject.toml"]
    newest = max(p.stat().st_mtime for p in inputs if p.is_file())
    if not deb.exists() or deb.stat().st_mtime < newest:
        r = subprocess.run([str(CHECKOUT / "scripts" / "package")], capture_output=True,
                           text=True, timeout=900, check=False)
        if r.returncode != 0:
            pytest.fail(f"./scripts/package failed: {(r.stdout + r.stderr)[-2000:]}")
    return deb


class ServiceRun:
    def __init__(self, vm: VmResult, results: dict[str, dict[str, Any]], out: Path) -> None:
        self.vm, self.results, self.out = vm, results, out

    def assert_checks(self, *words: str) -> None:
        """Every check whose name holds one of ``words`` ran and passed."""
        chosen = {k: v for k, v in self.results.items() if any(w in k for w in words)}
        assert chosen, (f"no check named {words} ran; the guest's log ends:\n"
                        + self.log_tail())
        bad = {k: v["detail"] for k, v in chosen.items() if not v["ok"]}
        assert not bad, json.dumps(bad, indent=1)[-6000:]

    def log_tail(self) -> str:
        log = self.out / "log.txt"
        return (log.read_text()[-3000:] if log.exists() else "") + self.vm.output[-2000:]


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> ServiceRun:
    why = why_no_systemd_vm()
    if why is not None:
        pytest.skip(f"no systemd VM here: {why}")
    r = subprocess.run([str(CHECKOUT / "tests" / "vm" / "build-systemd-image")],
                       capture_output=True, text=True, timeout=900, check=False)
    if r.returncode != 0 or not IMAGE.exists():
        pytest.fail(f"building the VM image failed: {(r.stdout + r.stderr)[-2000:]}")
    deb = _deb()
    base = tmp_path_factory.mktemp("svc")
    ctl, dist, out = base / "ctl", base / "dist", base / "out"
    for d in (ctl, dist, out):
        d.mkdir()
    shutil.copy(Path(__file__).with_name("service_check.py"), ctl / "service_check.py")
    (ctl / "run").write_text("#!/bin/sh\nexec python3 /mnt/ctl/service_check.py\n")
    os.chmod(ctl / "run", 0o755)
    shutil.copy(deb, dist / deb.name)
    vm = run_systemd_vm(ctl=str(ctl), dist=str(dist), out=str(out), timeout=VM_TIMEOUT_S)
    print(f"systemd VM: rc {vm.rc}, {vm.seconds:.0f} s (boot included)")
    res = out / "results.json"
    if not res.exists():
        pytest.fail(f"the VM wrote no results (rc {vm.rc}):\n{vm.output[-3000:]}")
    run = ServiceRun(vm, json.loads(res.read_text()), out)
    sec = out / "security.txt"
    if sec.exists():
        print(sec.read_text().splitlines()[-1])
    return run


def test_the_deb_installs_and_the_service_starts(service: ServiceRun) -> None:
    service.assert_checks("dpkg -i", "enabled", "answers", "installed", "security",
                          "group/world-writable")


def test_it_protects_a_real_onnx_server_under_cpu_hogs(service: ServiceRun) -> None:
    service.assert_checks("model server", "classifies", "hog ", "cpu.weight", "server:")


def test_systemctl_stop_restores_everything(service: ServiceRun) -> None:
    service.assert_checks("systemctl stop")


def test_kill9_is_followed_by_restore_through_systemd(service: ServiceRun) -> None:
    service.assert_checks("started again", "main pid", "kill -9")


def test_purge_leaves_the_machine_as_it_was(service: ServiceRun) -> None:
    service.assert_checks("purge")
    crashed = service.results.get("the check script ran to the end")
    assert crashed is None, crashed
