"""Which kernel mechanisms work here, checked for real and cheaply at start-up.

Nothing here changes anything that outlives the check, and no check may raise: each
mechanism gets a yes/no and a sentence saying why.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Callable
from dataclasses import dataclass

from ainative.platform.linux import knobs


@dataclass(frozen=True)
class Mechanism:
    name: str
    available: bool
    detail: str


def _read(path: str) -> str:
    with open(path) as fh:
        return fh.read().strip()


def cap_effective(bit: int) -> bool:
    for line in _read("/proc/self/status").splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> bit & 1)
    return False


def _netlink() -> Mechanism:
    from ainative.platform.linux.connector import NetlinkSource

    try:
        NetlinkSource().close()
        return Mechanism("proc_connector", True, "netlink process connector: fork/exec/exit")
    except OSError as e:
        return Mechanism("proc_connector", False, f"netlink process connector: {e}; "
                         "falling back to polling /proc")


_POLICIES = ("SCHED_OTHER", "SCHED_BATCH", "SCHED_IDLE", "SCHED_FIFO", "SCHED_RR")


def _sched() -> Mechanism:
    policy, _prio = knobs.get_policy(os.getpid())
    names = {getattr(os, n): n for n in _POLICIES if hasattr(os, n)}
    # sched_get_priority_max asks the kernel itself whether it knows a policy.
    known = []
    for value, name in names.items():
        try:
            os.sched_get_priority_max(value)
            known.append(name[6:].lower())
        except OSError:
            pass
    try:
        rt = _read("/proc/sys/kernel/sched_rt_runtime_us")
    except OSError:
        rt = "?"
    guard = ("realtime throttled" if rt not in ("-1", "?")
             else "realtime NOT throttled: fifo/rr classes refused")
    ok = {"other", "batch", "idle"} <= set(known)
    return Mechanism("scheduler", ok, f"self: {names.get(policy, policy)}; "
                     f"policies: {', '.join(known) or 'none'}; nice and affinity; "
                     f"sched_rt_runtime_us={rt} ({guard})")


def _ioprio() -> Mechanism:
    cls, level = knobs.get_ioprio(os.getpid())
    return Mechanism("ioprio", True, f"ioprio_get/set work (self: class {cls} level {level})")


def _cgroups() -> Mechanism:
    from ainative.platform.linux.cgroups import CgroupManager

    mgr = CgroupManager("ainative-probe")
    caps = mgr.capabilities()
    layout = caps.pop("layout")
    ok = any(not v.startswith("unavailable") for k, v in caps.items() if k != "freeze")
    where = "; ".join(
        f"{'v2' if h.is_v2 else 'v1'} {h.mount}: {','.join(sorted(h.controllers)) or '-'}"
        for h in mgr.hierarchies)
    return Mechanism("cgroups", ok, f"layout {layout}; " + "; ".join(
        f"{k}: {v}" for k, v in caps.items()) + f"; controllers: {where}")


def _psi() -> Mechanism:
    line = _read("/proc/pressure/cpu").splitlines()[0]
    return Mechanism("psi", True, f"/proc/pressure/cpu: {line}")


def _mlock() -> Mechanism:
    soft, _hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    cap = cap_effective(14)  # CAP_IPC_LOCK
    limit = "unlimited" if soft == resource.RLIM_INFINITY else f"{soft >> 10} KiB"
    return Mechanism("mlock", True, f"RLIMIT_MEMLOCK {limit}; CAP_IPC_LOCK "
                     f"{'yes (no limit applies)' if cap else 'no (the limit applies)'}")


def _pidfd() -> Mechanism:
    fd = os.pidfd_open(os.getpid())
    os.close(fd)
    return Mechanism("pidfd", True, "pidfd_open works")


def _nvml() -> Mechanism:
    from ainative.gpu.nvml import read_gpus

    rep = read_gpus()
    if rep.available:
        names = ", ".join(g.name for g in rep.gpus)
        return Mechanism("nvml", True, f"{len(rep.gpus)} GPU(s): {names}; {rep.reason}")
    return Mechanism("nvml", False, rep.reason)


def _ebpf() -> Mechanism:
    tracefs = os.path.isdir("/sys/kernel/tracing/events") or os.path.isdir(
        "/sys/kernel/debug/tracing/events")
    try:
        import bcc  # noqa: F401
        have_bcc = True
    except Exception:
        have_bcc = False
    ok = tracefs and have_bcc
    return Mechanism("ebpf", ok, f"tracefs {'mounted' if tracefs else 'not mounted'}; "
                     f"bcc {'importable' if have_bcc else 'not importable'} "
                     "(ainative does not trace with eBPF yet)")


def _uclamp() -> Mechanism:
    ok = os.path.exists("/proc/sys/kernel/sched_util_clamp_min")
    return Mechanism("uclamp", ok, "sched_util_clamp_* present" if ok
                     else "kernel built without CONFIG_UCLAMP_TASK")


_CHECKS: list[tuple[str, Callable[[], Mechanism]]] = [
    ("proc_connector", _netlink), ("scheduler", _sched), ("ioprio", _ioprio),
    ("cgroups", _cgroups), ("psi", _psi), ("mlock", _mlock), ("pidfd", _pidfd),
    ("nvml", _nvml), ("ebpf", _ebpf), ("uclamp", _uclamp),
]


def probe_mechanisms() -> list[Mechanism]:
    out = []
    for name, check in _CHECKS:
        try:
            out.append(check())
        except Exception as e:  # a probe must never stop the daemon
            out.append(Mechanism(name, False, f"{type(e).__name__}: {e}"))
    return out
