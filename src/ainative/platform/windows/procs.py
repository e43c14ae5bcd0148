"""Process discovery on Windows through psutil, and the image path through Win32.

psutil covers pids, parents, command lines, threads, CPU times, memory, loaded modules,
environments and sockets on Windows (and under Wine). Its name()/exe() raise under
Wine 8 (a missing NtQuerySystemInformation class), so the image path comes from
QueryFullProcessImageNameW, which also works on real Windows without extra rights.

Identity: a Windows pid is reused like a Linux one; TaskId's start_time here is the
creation time from GetProcessTimes (100 ns units since 1601) rather than clock ticks.
"""

from __future__ import annotations

import ntpath
import zlib
from collections.abc import Iterator
from contextlib import contextmanager

import psutil

from ainative.platform.base import SCHED_FIFO, SCHED_OTHER, ProcessGone, ProcessInfo, TaskId
from ainative.platform.windows.win32 import PRIORITY_CLASS_VALUES, Win32

# The Idle and System processes: the kernel's, never touched.
KERNEL_PIDS = frozenset({0, 4})
# Accounts that are the machine itself (uid 0 here, as root is on Linux).
SYSTEM_USERS = frozenset({"nt authority\\system", "nt authority\\local service",
                          "nt authority\\network service"})


@contextmanager
def _psutil(pid: int) -> Iterator[psutil.Process]:
    """psutil's errors as the core's: NoSuchProcess -> ProcessGone, AccessDenied ->
    PermissionError."""
    try:
        yield psutil.Process(pid)
    except psutil.NoSuchProcess as e:
        raise ProcessGone(f"process {pid} has exited") from e
    except psutil.AccessDenied as e:
        raise PermissionError(f"process {pid}: access denied") from e


def comm_of(image: str | None) -> str:
    """A process's short name as rules match it: the image's file name without ".exe"
    (so a rule for "llama-server" matches llama-server.exe, as on Linux)."""
    if not image:
        return ""
    base = ntpath.basename(image)
    return base[:-4] if base.lower().endswith(".exe") else base


def uid_of(user: str | None) -> int:
    """Windows has SIDs, not uids; the core compares uids for "the same user" and treats
    0 as the machine's own. SYSTEM and the service accounts are 0, any other account a
    stable number from its name (never 0)."""
    if not user:
        return -1
    if user.lower() in SYSTEM_USERS:
        return 0
    return (zlib.crc32(user.lower().encode()) & 0x3FFFFFFF) | 0x40000000


class ProcessTable:
    """Discovery over psutil plus the Win32 boundary for what psutil lacks."""

    def __init__(self, api: Win32) -> None:
        self.api = api

    def list_pids(self) -> list[int]:
        return [p for p in psutil.pids() if p not in KERNEL_PIDS]

    def image(self, pid: int) -> str | None:
        try:
            return self.api.image_path(pid)
        except (OSError, ProcessGone):
            return None

    def read_process(self, pid: int) -> ProcessInfo:
        ident = TaskId(pid, self.api.process_creation_time(pid))
        with _psutil(pid) as p:
            ppid = p.ppid()
            try:
                cmdline = p.cmdline()
            except psutil.AccessDenied:
                cmdline = []
            try:
                user: str | None = p.username()
            except psutil.AccessDenied:
                user = None
            threads = p.num_threads()
        exe = self.image(pid)
        try:
            rt = self.api.get_priority_class(pid) == PRIORITY_CLASS_VALUES["realtime"]
        except (OSError, ProcessGone):
            rt = False
        return ProcessInfo(
            ident=ident, ppid=ppid, comm=comm_of(exe), exe=exe, cmdline=cmdline,
            uid=uid_of(user), user=user, cgroups={}, is_kernel_thread=pid in KERNEL_PIDS,
            # Someone else's REALTIME class is what the core's "realtime policy" means:
            # such a process is never touched.
            policy=SCHED_FIFO if rt else SCHED_OTHER, num_threads=threads)

    def process_name(self, pid: int) -> str:
        exe = self.image(pid)
        if exe is None:
            if not psutil.pid_exists(pid):
                raise ProcessGone(f"process {pid} has exited")
            return ""
        return comm_of(exe)

    def threads(self, pid: int) -> list[int]:
        with _psutil(pid) as p:
            return [t.id for t in p.threads()]

    def modules(self, pid: int) -> list[str]:
        """The files a process has loaded (DLLs, PYDs, the image)."""
        with _psutil(pid) as p:
            return [m.path for m in p.memory_maps(grouped=True)]

    def environ_value(self, pid: int, name: str) -> str | None:
        with _psutil(pid) as p:
            env = p.environ()
        # Windows environment names do not care about case.
        want = name.upper()
        return next((v for k, v in env.items() if k.upper() == want), None)

    def cpu_times(self, pid: int) -> tuple[float, float]:
        with _psutil(pid) as p:
            t = p.cpu_times()
        return float(t.user), float(t.system)

    def parent_pid(self, pid: int) -> int:
        with _psutil(pid) as p:
            return int(p.ppid())

    def is_descendant(self, pid: int, ancestor: int) -> bool:
        """Whether ``ancestor`` is a parent, grandparent... of pid. Windows keeps a
        parent's pid after the parent exits, and may give it to a newer process: a
        "parent" created after its child ends the walk."""
        seen = 0
        cur = pid
        try:
            born = self.api.process_creation_time(pid)
            while seen < 1024:
                parent = self.parent_pid(cur)
                if parent in (0, cur):
                    return False
                parent_born = self.api.process_creation_time(parent)
                if parent_born > born:
                    return False  # a reused pid, not the real parent
                if parent == ancestor:
                    return True
                cur, born, seen = parent, parent_born, seen + 1
        except (ProcessGone, OSError):
            return False
        return False

    def rss_bytes(self, pid: int) -> int:
        with _psutil(pid) as p:
            return int(p.memory_info().rss)

    def listening_sockets(self, pid: int) -> list[str]:
        """TCP (v4/v6) listeners of pid, in the Linux backend's format. (psutil does not
        list AF_UNIX sockets on Windows.)"""
        if not psutil.pid_exists(pid):
            raise ProcessGone(f"process {pid} has exited")
        try:
            conns = psutil.net_connections(kind="tcp")
        except psutil.AccessDenied as e:
            raise PermissionError(f"process {pid}: sockets not readable") from e
        out: set[str] = set()
        for c in conns:
            if c.pid != pid or c.status != psutil.CONN_LISTEN or not c.laddr:
                continue
            ip, port = c.laddr[0], c.laddr[1]
            out.add(f"tcp [{ip}]:{port}" if ":" in ip else f"tcp {ip}:{port}")
        return sorted(out)
