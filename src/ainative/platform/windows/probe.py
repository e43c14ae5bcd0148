"""Which Windows mechanisms work here, checked cheaply at start-up on this very process:
each gets a yes/no and a sentence saying why (the Linux probe's contract). Nothing here
leaves a change behind."""

from __future__ import annotations

import os

from ainative.platform.base import Mechanism
from ainative.platform.windows.win32 import PRIORITY_CLASS_NAMES, Win32


def probe_mechanisms(api: Win32) -> list[Mechanism]:
    out: list[Mechanism] = []
    pid = os.getpid()
    admin = api.is_admin()
    try:
        cls = PRIORITY_CLASS_NAMES.get(api.get_priority_class(pid), "unknown")
        out.append(Mechanism("priority_class", True,
                             f"SetPriorityClass; this process is {cls}; " + (
                                 "administrator: REALTIME can be granted" if admin else
                                 "not an administrator: REALTIME would be downgraded to "
                                 "HIGH (refused and put back)")))
    except OSError as e:
        out.append(Mechanism("priority_class", False, str(e)))
    try:
        proc_mask, system_mask = api.process_affinity(pid)
        out.append(Mechanism("affinity", True,
                             f"SetThreadAffinityMask; process mask {proc_mask:#x} of "
                             f"system {system_mask:#x}"))
    except OSError as e:
        out.append(Mechanism("affinity", False, str(e)))
    try:
        lo, hi = api.get_working_set()
        out.append(Mechanism("locked_memory", True,
                             f"VirtualLock after raising the working set (now {lo}..{hi} "
                             "bytes)"))
    except OSError as e:
        out.append(Mechanism("locked_memory", False, str(e)))
    out.append(Mechanism("process_events", True,
                         "polling the process list (WMI/ETW process events not used)"))
    out.append(Mechanism("cgroups", False, "Windows has no cgroups"))
    out.append(Mechanism("run_queue_wait", False,
                         "no per-thread run-queue wait in Windows user space"))
    return out
