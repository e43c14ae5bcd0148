"""Reading processes from /proc: identity, names, credentials, cgroups, threads,
mapped libraries and the opt-in environment variable.

Every reader raises ProcessGone when the process has exited, and PermissionError only
where the kernel refuses (another user's environ without root, say).

Written against /proc directly rather than psutil because the daemon needs fields psutil
does not give cheaply (start time in ticks as identity, per-thread paths, a bounded read
of maps and environ) and runs these on every fork/exec event.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Iterator
from functools import lru_cache

from ainative.platform.base import ProcessGone, ProcessInfo, TaskId

PROC = "/proc"
_CLK_TCK = os.sysconf("SC_CLK_TCK")
# Flag in /proc/PID/stat field 9 marking kernel threads (include/linux/sched.h).
_PF_KTHREAD = 0x00200000


def _path(pid: int, tid: int | None, name: str) -> str:
    if tid is None:
        return f"{PROC}/{pid}/{name}"
    return f"{PROC}/{pid}/task/{tid}/{name}"


def _read(path: str, pid: int, limit: int = 1 << 16) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read(limit)
    except (FileNotFoundError, ProcessLookupError) as e:
        raise ProcessGone(f"process {pid} has exited") from e
    except OSError as e:
        # ESRCH shows up for a zombie's files on some kernels.
        if e.errno == 3:
            raise ProcessGone(f"process {pid} has exited") from e
        raise


def _stat_fields(pid: int, tid: int | None = None) -> list[str]:
    """Fields of /proc/PID/stat from field 3 on (comm may hold spaces and parentheses,
    so split after its last ')'). Index 0 here is field 3 (state)."""
    raw = _read(_path(pid, tid, "stat"), pid).decode(errors="replace")
    close = raw.rfind(")")
    if close < 0:
        raise ProcessGone(f"process {pid}: unreadable stat")
    return raw[close + 2:].split()


def list_pids() -> list[int]:
    return sorted(int(n) for n in os.listdir(PROC) if n.isdigit())


def task_id(pid: int, tid: int | None = None) -> TaskId:
    """Identity of a process (or of one of its threads when tid is given)."""
    fields = _stat_fields(pid, tid)
    return TaskId(tid if tid is not None else pid, int(fields[19]))


@lru_cache(maxsize=1024)
def _user_name(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def _parse_cgroup(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hid, controllers, path = parts
        if hid == "0" and controllers == "":
            out["0"] = path
        elif controllers:
            out[controllers] = path
    return out


def process_name(pid: int) -> str:
    """The process's comm (one small read: what a rule on the parent's name needs)."""
    return _read(_path(pid, None, "comm"), pid).decode(errors="replace").rstrip("\n")


def read_process(pid: int) -> ProcessInfo:
    fields = _stat_fields(pid)
    ident = TaskId(pid, int(fields[19]))
    ppid = int(fields[1])
    flags = int(fields[6])
    num_threads = int(fields[17])
    policy = int(fields[38]) if len(fields) > 38 else 0
    comm = process_name(pid)
    cmd_raw = _read(_path(pid, None, "cmdline"), pid, 1 << 16)
    cmdline = [a.decode(errors="replace") for a in cmd_raw.split(b"\0")[:-1]] if cmd_raw else []
    try:
        exe: str | None = os.readlink(_path(pid, None, "exe"))
    except (FileNotFoundError, PermissionError, ProcessLookupError):
        exe = None  # kernel threads have none; zombies lose it
    except OSError:
        exe = None
    uid = -1
    for line in _read(_path(pid, None, "status"), pid).decode(errors="replace").splitlines():
        if line.startswith("Uid:"):
            uid = int(line.split()[1])  # real uid: whose process it is
            break
    cgroups = _parse_cgroup(_read(_path(pid, None, "cgroup"), pid).decode(errors="replace"))
    info = ProcessInfo(
        ident=ident, ppid=ppid, comm=comm, exe=exe, cmdline=cmdline, uid=uid,
        user=_user_name(uid) if uid >= 0 else None, cgroups=cgroups,
        is_kernel_thread=bool(flags & _PF_KTHREAD) or (pid != 1 and ppid == 2) or pid == 2,
        policy=policy, num_threads=num_threads,
    )
    # The PID may have been reused between the first and the last read.
    if task_id(pid) != ident:
        raise ProcessGone(f"process {pid} was replaced while being read")
    return info


def list_threads(pid: int) -> list[int]:
    """TIDs under /proc/PID/task."""
    try:
        return sorted(int(t) for t in os.listdir(f"{PROC}/{pid}/task") if t.isdigit())
    except (FileNotFoundError, ProcessLookupError) as e:
        raise ProcessGone(f"process {pid} has exited") from e


def iter_processes() -> Iterator[ProcessInfo]:
    """Every process readable now; those that vanish while being read are skipped."""
    for pid in list_pids():
        try:
            yield read_process(pid)
        except (ProcessGone, PermissionError):
            continue


def mapped_files(pid: int, max_bytes: int = 4 << 20) -> list[str]:
    """Distinct file paths mapped by the process (from /proc/PID/maps), reading at most
    max_bytes so a process with a huge map cannot stall the daemon."""
    data = _read(_path(pid, None, "maps"), pid, max_bytes)
    seen: dict[str, None] = {}
    for line in data.split(b"\n"):
        # address perms offset dev inode pathname — the path starts at the first '/'.
        slash = line.find(b"/")
        if slash < 0:
            continue
        path = line[slash:].decode(errors="replace")
        if path.endswith(" (deleted)"):
            path = path[: -len(" (deleted)")]
        seen.setdefault(path, None)
    return list(seen)


def environ_value(pid: int, name: str, max_bytes: int = 1 << 20) -> str | None:
    data = _read(_path(pid, None, "environ"), pid, max_bytes)
    prefix = name.encode() + b"="
    for entry in data.split(b"\0"):
        if entry.startswith(prefix):
            return entry[len(prefix):].decode(errors="replace")
    return None


def cpu_times(pid: int) -> tuple[float, float]:
    """(user, system) seconds."""
    fields = _stat_fields(pid)
    return int(fields[11]) / _CLK_TCK, int(fields[12]) / _CLK_TCK


def parent_pid(pid: int) -> int:
    return int(_stat_fields(pid)[1])


def is_descendant(pid: int, ancestor: int) -> bool:
    """True when ancestor is a proper ancestor of pid (walking PPid)."""
    seen = 0
    cur = pid
    while cur > 1 and seen < 4096:  # bounded: a PPid loop cannot exist, but be safe
        try:
            cur = parent_pid(cur)
        except ProcessGone:
            return False
        if cur == ancestor:
            return True
        seen += 1
    return False
