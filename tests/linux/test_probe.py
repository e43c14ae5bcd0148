"""The start-up probe reports every mechanism, with answers that agree with the machine."""

from __future__ import annotations

import os
import resource

from ainative.platform.linux.probe import probe_mechanisms


def test_every_mechanism_is_reported_with_a_reason() -> None:
    mechs = {m.name: m for m in probe_mechanisms()}
    assert set(mechs) >= {"proc_connector", "scheduler", "ioprio", "cgroups", "psi", "mlock",
                          "pidfd", "nvml", "ebpf", "uclamp"}
    assert all(m.detail for m in mechs.values())
    assert mechs["psi"].available == os.path.exists("/proc/pressure/cpu")
    assert mechs["uclamp"].available == os.path.exists("/proc/sys/kernel/sched_util_clamp_min")
    assert mechs["nvml"].available == os.path.exists("/dev/nvidia0")
    assert mechs["scheduler"].available and mechs["ioprio"].available
    if os.geteuid() == 0:
        assert mechs["proc_connector"].available
    soft = resource.getrlimit(resource.RLIMIT_MEMLOCK)[0]
    if soft != resource.RLIM_INFINITY:
        assert f"{soft >> 10} KiB" in mechs["mlock"].detail


def test_probe_leaves_no_cgroup_behind() -> None:
    probe_mechanisms()
    for base in ("/sys/fs/cgroup", "/sys/fs/cgroup/cpu", "/sys/fs/cgroup/unified"):
        if os.path.isdir(base):
            assert not [n for n in os.listdir(base) if n.startswith("ainative-probe")]
