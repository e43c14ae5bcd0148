"""Which kernel mechanisms work here, checked for real and cheaply at start-up.

Nothing here changes anything that outlives the check, and no check may raise: each
mechanism gets a yes/no and a sentence saying why. A daemon started without root says
up front what that costs it (raising priority needs CAP_SYS_NICE; cgroups need a
writable cgroup mount) rather than failing on the first process it classifies.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Callable

from ainative.platform.base import Mechanism
from ainative.platform.linux import knobs, procfs

__all__ = ["Mechanism", "cap_effective", "probe_mechanisms"]

CAP_SYS_NICE = 23
CAP_IPC_LOCK = 14
_FALLBACK = "falling back to polling /proc"


def _read(path: str) -> str:
    with open(path) as fh:
        return fh.read().strip()


def cap_effective(bit: int) -> bool:
    """Whether this process holds capability ``bit`` in its effective set."""
    return procfs.cap_effective(bit)


def _netlink() -> Mechanism:
    from ainative.platform.linux import connector

    problem = connector.connector_problem()
    if problem is not None:
        return Mechanism("proc_connector", False, f"{problem}; {_FALLBACK}")
    try:
        src = connector.NetlinkSource()
    except OSError as e:
        return Mechanism("proc_connector", False,
                         f"{connector.open_error_reason(e)}; {_FALLBACK}")
    try:
        ok = src.self_test()
    finally:
        src.close()
    if not ok:
        return Mechanism("proc_connector", False, "netlink process connector opened but "
                         f"reported no event for a thread of ours; {_FALLBACK}")
    return Mechanism("proc_connector", True, "netlink process connector: fork/exec/exit")


def _raise_priority() -> Mechanism:
    what = "raising priority (negative nice, realtime)"
    if cap_effective(CAP_SYS_NICE):
        return Mechanism("raise_priority", True, f"{what}: CAP_SYS_NICE held")
    detail = (f"{what}: unavailable: needs CAP_SYS_NICE (running as uid {os.geteuid()}); "
              "other users' processes cannot be changed at all")
    # The rlimits let an unprivileged user raise its own processes a little.
    nice_soft = resource.getrlimit(resource.RLIMIT_NICE)[0]
    rt_soft = resource.getrlimit(resource.RLIMIT_RTPRIO)[0]
    if nice_soft == resource.RLIM_INFINITY or nice_soft > 20:
        floor = -20 if nice_soft == resource.RLIM_INFINITY else max(-20, 20 - nice_soft)
        detail += f"; RLIMIT_NICE lets its own processes go down to nice {floor}"
    if rt_soft == resource.RLIM_INFINITY or rt_soft > 0:
        detail += f"; RLIMIT_RTPRIO allows realtime priority up to {rt_soft}"
    return Mechanism("raise_priority", False, detail)


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
    uid = os.geteuid()
    unwritable = [h for h in mgr.managed() if not _writable(h.mount)]
    for feature, value in list(caps.items()):
        h = mgr.hierarchy_for(feature)
        if h is not None and h in unwritable and not value.startswith("unavailable"):
            caps[feature] = f"unavailable: {h.mount} is not writable by uid {uid}"
    ok = any(not v.startswith("unavailable") for k, v in caps.items() if k != "freeze")
    where = "; ".join(
        f"{'v2' if h.is_v2 else 'v1'} {h.mount}: {','.join(sorted(h.controllers)) or '-'}"
        for h in mgr.hierarchies)
    head = ""
    if unwritable:
        mounts = ", ".join(h.mount for h in unwritable)
        verb = "is" if len(unwritable) == 1 else "are"
        head = (f"{'unavailable' if not ok else 'partly unavailable'}: {mounts} {verb} "
                f"not writable by uid {uid}; ")
    return Mechanism("cgroups", ok, f"{head}layout {layout}; " + "; ".join(
        f"{k}: {v}" for k, v in caps.items()) + f"; controllers: {where}")


def _writable(path: str) -> bool:
    # Whether this process (its effective ids) may create a group there.
    if os.access in os.supports_effective_ids:
        return os.access(path, os.W_OK, effective_ids=True)
    return os.access(path, os.W_OK)


def _psi() -> Mechanism:
    line = _read("/proc/pressure/cpu").splitlines()[0]
    return Mechanism("psi", True, f"/proc/pressure/cpu: {line}")


def _mlock() -> Mechanism:
    soft, _hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    cap = cap_effective(CAP_IPC_LOCK)
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
    # The run-queue source's own checks (privilege, tracefs, bcc, headers), without its
    # compile test: the one place that knows what eBPF needs here and how to fix it.
    from ainative.telemetry import bpf_setup

    why = bpf_setup.first_problem(load_bcc=False)
    if why:
        return Mechanism("ebpf", False, why)
    return Mechanism("ebpf", True, "tracefs, bcc and kernel headers ready: the run-queue "
                                   "source traces sched_wakeup/sched_switch")


def _uclamp() -> Mechanism:
    ok = os.path.exists("/proc/sys/kernel/sched_util_clamp_min")
    return Mechanism("uclamp", ok, "sched_util_clamp_* present" if ok
                     else "kernel built without CONFIG_UCLAMP_TASK")


_CHECKS: list[tuple[str, Callable[[], Mechanism]]] = [
    ("proc_connector", _netlink), ("scheduler", _sched),
    ("raise_priority", _raise_priority), ("ioprio", _ioprio),
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
