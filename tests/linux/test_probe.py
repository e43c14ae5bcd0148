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


def test_answers_agree_with_what_the_kernel_shows() -> None:
    mechs = {m.name: m for m in probe_mechanisms()}
    fstypes = set()
    with open("/proc/self/mounts") as fh:
        for line in fh:
            parts = line.split()
            if parts[1].startswith("/sys/fs/cgroup") and parts[2] in ("cgroup", "cgroup2"):
                fstypes.add(parts[2])
    layout = ("hybrid" if fstypes == {"cgroup", "cgroup2"}
              else "v2" if fstypes == {"cgroup2"} else "v1")
    assert f"layout {layout}" in mechs["cgroups"].detail
    with open("/proc/self/status") as fh:
        capeff = next(int(ln.split()[1], 16) for ln in fh if ln.startswith("CapEff:"))
    has_ipc_lock = bool(capeff >> 14 & 1)
    assert ("CAP_IPC_LOCK yes" in mechs["mlock"].detail) == has_ipc_lock
    policy = {os.SCHED_OTHER: "SCHED_OTHER", os.SCHED_BATCH: "SCHED_BATCH",
              os.SCHED_IDLE: "SCHED_IDLE"}.get(os.sched_getscheduler(0))
    if policy:
        assert f"self: {policy}" in mechs["scheduler"].detail
    with open("/proc/sys/kernel/sched_rt_runtime_us") as fh:
        assert f"sched_rt_runtime_us={fh.read().strip()}" in mechs["scheduler"].detail
    # eBPF: the run-queue source's own checks, each reason naming what is missing.
    from ainative.telemetry import bpf_setup

    first = bpf_setup.first_problem(load_bcc=False)
    assert mechs["ebpf"].available == (first == "")
    assert (first or "the run-queue source traces") in mechs["ebpf"].detail


def test_probe_leaves_no_cgroup_behind() -> None:
    probe_mechanisms()
    for base in ("/sys/fs/cgroup", "/sys/fs/cgroup/cpu", "/sys/fs/cgroup/unified"):
        if os.path.isdir(base):
            assert not [n for n in os.listdir(base) if n.startswith("ainative-probe")]


def test_probe_does_not_load_bcc() -> None:
    # Loading bcc maps libbcc and LLVM (tens of MB that stay): the daemon's start-up probe
    # only looks for them.
    import sys

    had = "bcc" in sys.modules
    probe_mechanisms()
    assert had or "bcc" not in sys.modules
