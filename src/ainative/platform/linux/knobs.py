"""Per-thread scheduling knobs on Linux: nice, policy, I/O priority, CPU affinity.

Every function takes a thread id (a TID; a PID names the main thread). Linux applies
all of these per thread, which is why the engine walks /proc/PID/task.
Raise ProcessGone when the thread no longer exists, PermissionError when not allowed.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
from collections.abc import Callable
from typing import TypeVar

from ainative.platform.base import SCHED_FIFO, SCHED_RR, ProcessGone

T = TypeVar("T")

# ioprio_set/ioprio_get and sched_setattr/sched_getattr have no wrapper in glibc or in
# Python's os module, so they are called through syscall(2). Numbers per architecture
# from the kernel's syscall tables: (ioprio_set, ioprio_get, sched_setattr, sched_getattr).
_SYSCALLS = {
    "x86_64": (251, 252, 314, 315),
    "aarch64": (30, 31, 274, 275),
    "arm64": (30, 31, 274, 275),
    "riscv64": (30, 31, 274, 275),
    "ppc64le": (273, 274, 355, 356),
    "s390x": (282, 283, 345, 346),
}
_IOPRIO_WHO_PROCESS = 1  # "process" here means one thread: the kernel takes a TID
_IOPRIO_CLASS_SHIFT = 13
_SCHED_RESET_ON_FORK = 0x40000000

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _call(tid: int, fn: Callable[[], T]) -> T:
    """Run fn, turning ESRCH into ProcessGone so callers handle one exception for exit."""
    try:
        return fn()
    except ProcessLookupError as e:
        raise ProcessGone(f"thread {tid} has exited") from e


def get_nice(tid: int) -> int:
    return _call(tid, lambda: os.getpriority(os.PRIO_PROCESS, tid))


def set_nice(tid: int, value: int) -> None:
    _call(tid, lambda: os.setpriority(os.PRIO_PROCESS, tid, value))


def get_policy(tid: int) -> tuple[int, int]:
    """(policy, rt_priority)."""
    policy = _call(tid, lambda: os.sched_getscheduler(tid))
    param = _call(tid, lambda: os.sched_getparam(tid))
    # sched_getscheduler reports RESET_ON_FORK in the policy; the knob value is the bare
    # policy so that restoring it does not depend on that flag.
    return policy & ~_SCHED_RESET_ON_FORK, int(param.sched_priority)


def set_policy(tid: int, policy: int, rt_priority: int = 0) -> None:
    """SCHED_RESET_ON_FORK is set for FIFO/RR so children of a realtime task do not inherit it."""
    realtime = policy in (SCHED_FIFO, SCHED_RR)
    flags = _SCHED_RESET_ON_FORK if realtime else 0
    prio = rt_priority if realtime else 0
    param = os.sched_param(prio)
    if realtime and tid not in _slice_under_rt and len(_slice_under_rt) < 1 << 16:
        try:
            _slice_under_rt[tid] = get_slice(tid)
        except OSError:
            pass
    _call(tid, lambda: os.sched_setscheduler(tid, policy | flags, param))
    if not realtime:
        _slice_under_rt.pop(tid, None)


def _numbers(which: str) -> tuple[int, int]:
    """(set, get) syscall numbers of "ioprio" or "sched_attr" on this machine."""
    machine = platform.machine()
    try:
        n = _SYSCALLS[machine]
    except KeyError:
        raise OSError(errno.ENOSYS, f"{which} syscalls not known for {machine}") from None
    return (n[0], n[1]) if which == "ioprio" else (n[2], n[3])


def _syscall(tid: int, *args: int) -> int:
    res = int(_libc.syscall(*(ctypes.c_long(a) for a in args)))
    if res < 0:
        err = ctypes.get_errno()
        if err == errno.ESRCH:
            raise ProcessGone(f"thread {tid} has exited")
        if err == errno.EPERM:
            raise PermissionError(err, os.strerror(err))
        raise OSError(err, os.strerror(err))
    return res


def get_ioprio(tid: int) -> tuple[int, int]:
    """(class, level) as ioprio_get(IOPRIO_WHO_PROCESS, tid) returns it."""
    _set, get = _numbers("ioprio")
    value = _syscall(tid, get, _IOPRIO_WHO_PROCESS, tid)
    return value >> _IOPRIO_CLASS_SHIFT, value & ((1 << _IOPRIO_CLASS_SHIFT) - 1)


def set_ioprio(tid: int, io_class: int, level: int) -> None:
    if not 0 <= io_class <= 3 or not 0 <= level <= 7:
        raise ValueError(f"bad ioprio class {io_class} / level {level}")
    set_, _get = _numbers("ioprio")
    _syscall(tid, set_, _IOPRIO_WHO_PROCESS, tid, (io_class << _IOPRIO_CLASS_SHIFT) | level)


class _SchedAttr(ctypes.Structure):
    """struct sched_attr (include/uapi/linux/sched/types.h), the 56-byte version 1."""

    _fields_ = [("size", ctypes.c_uint32), ("policy", ctypes.c_uint32),
                ("flags", ctypes.c_uint64), ("nice", ctypes.c_int32),
                ("priority", ctypes.c_uint32), ("runtime", ctypes.c_uint64),
                ("deadline", ctypes.c_uint64), ("period", ctypes.c_uint64),
                ("util_min", ctypes.c_uint32), ("util_max", ctypes.c_uint32)]


_SCHED_FLAG_RESET_ON_FORK = 0x01
_FAIR_POLICIES = (0, 3, 5)  # SCHED_OTHER, SCHED_BATCH, SCHED_IDLE: EEVDF's tasks


def _get_attr(tid: int) -> _SchedAttr:
    _set, get = _numbers("sched_attr")
    attr = _SchedAttr()
    _syscall(tid, get, tid, ctypes.addressof(attr), ctypes.sizeof(attr), 0)
    return attr


_default_slice_ns: int | None = None
# tid -> its slice when set_policy made it realtime (see get_slice). Bounded: one entry
# per thread ainative made realtime, dropped when it makes it fair again.
_slice_under_rt: dict[int, int] = {}


def default_slice_ns() -> int:
    """The kernel's base slice for a fair task (sched_getattr reports the slice in
    sched_runtime since Linux 6.12; 0 before: no custom slices). Read from this process's
    own thread, whose slice nobody sets."""
    global _default_slice_ns
    if _default_slice_ns is None:
        _default_slice_ns = int(_get_attr(0).runtime)
    return _default_slice_ns


def get_slice(tid: int) -> int:
    """The thread's EEVDF slice in ns, 0 for the kernel's default. A custom slice equal
    to the default reads as 0: the kernel does not tell them apart, and both behave the
    same."""
    attr = _get_attr(tid)
    if attr.policy not in _FAIR_POLICIES:
        # The kernel reports no slice for a realtime thread but keeps it for when the
        # thread is fair again: what it had when set_policy made it realtime, so that a
        # realtime step does not look like someone resetting the slice.
        return _slice_under_rt.get(tid, 0)
    return 0 if attr.runtime == default_slice_ns() else int(attr.runtime)


def set_slice(tid: int, ns: int) -> None:
    """Ask for an EEVDF slice of ns (0: back to the kernel's default). A shorter slice
    gives a thread an earlier virtual deadline, so on wakeup it preempts a running task
    that a longer slice would otherwise protect (up to the base slice, 0.7-3 ms), without
    any more CPU share; the kernel lets any user do this to their own threads.
    sched_setattr also sets policy and nice, so both are passed as just read."""
    if not default_slice_ns():
        raise OSError(errno.EOPNOTSUPP, "this kernel has no custom slices (Linux 6.12+)")
    attr = _get_attr(tid)
    if attr.policy not in _FAIR_POLICIES:
        raise OSError(errno.EINVAL, f"thread {tid} runs a realtime policy: a slice is for "
                      "fair (other, batch, idle) threads")
    new = _SchedAttr(size=ctypes.sizeof(_SchedAttr), policy=attr.policy,
                     flags=attr.flags & _SCHED_FLAG_RESET_ON_FORK, nice=attr.nice,
                     runtime=ns)
    set_, _get = _numbers("sched_attr")
    _syscall(tid, set_, tid, ctypes.addressof(new), 0)


def get_affinity(tid: int) -> frozenset[int]:
    return frozenset(_call(tid, lambda: os.sched_getaffinity(tid)))


def set_affinity(tid: int, cpus: frozenset[int]) -> None:
    _call(tid, lambda: os.sched_setaffinity(tid, cpus))
