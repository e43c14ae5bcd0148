"""Reading processes from /proc: identity, names, credentials, cgroups, threads,
mapped libraries, the opt-in environment variable, scheduler statistics, the sockets a
process listens on and the namespaces the daemon itself runs in.

This is the one place that parses /proc files (stat, status, cgroup, maps, environ,
schedstat, statm, uid_map, net/tcp, net/tcp6, net/unix, fd links): each has a pure
``parse_*`` function (text in, values out, testable without a process) and a reader on
top. Every reader raises ProcessGone when
the process has exited, and PermissionError only where the kernel refuses (another
user's environ without root, say). Everything read here comes from outside the daemon
and may be written by an unprivileged user (comm, cmdline, environ): parsers bound what
they read and never trust a field's shape.

Written against /proc directly rather than psutil because the daemon needs fields psutil
does not give cheaply (start time in ticks as identity, per-thread paths, a bounded read
of maps and environ) and runs these on every fork/exec event.
"""

from __future__ import annotations

import errno
import os
import pwd
import socket
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache

from ainative.platform.base import ProcessGone, ProcessInfo, TaskId

PROC = "/proc"
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
# Flag in /proc/PID/stat field 9 marking kernel threads (include/linux/sched.h).
_PF_KTHREAD = 0x00200000
# Inode numbers the kernel gives its initial namespaces (include/linux/proc_ns.h); fixed
# since Linux 3.8, so "pid:[4026531836]" names the initial PID namespace on every kernel.
PROC_USER_INIT_INO = 0xEFFFFFFD
PROC_PID_INIT_INO = 0xEFFFFFFC
_FULL_UID_MAP = [(0, 0, 4294967295)]


def _path(pid: int, tid: int | None, name: str) -> str:
    if tid is None:
        return f"{PROC}/{pid}/{name}"
    return f"{PROC}/{pid}/task/{tid}/{name}"


@contextmanager
def _gone_if_exited(pid: int) -> Iterator[None]:
    """Turn the errors a read of an exited process's /proc files gives into ProcessGone."""
    try:
        yield
    except (FileNotFoundError, ProcessLookupError) as e:
        raise ProcessGone(f"process {pid} has exited") from e
    except OSError as e:
        # ESRCH shows up for a zombie's files on some kernels.
        if e.errno == errno.ESRCH:
            raise ProcessGone(f"process {pid} has exited") from e
        raise


def _read(path: str, pid: int, limit: int = 1 << 16) -> bytes:
    with _gone_if_exited(pid), open(path, "rb") as fh:
        return fh.read(limit)


# --- /proc/PID/stat ---


@dataclass(frozen=True)
class Stat:
    """The fields of /proc/PID/stat the daemon uses (times in clock ticks)."""

    comm: str
    state: str
    ppid: int
    flags: int
    utime: int
    stime: int
    num_threads: int
    start_time: int  # field 22: clock ticks since boot, the identity's second half
    policy: int  # field 41; 0 on kernels too old to show it


def parse_stat(raw: str) -> Stat:
    """Parse one /proc/PID/stat line. comm may hold spaces and parentheses (a process
    names itself), so it ends at the last ')'. Raises ValueError when malformed."""
    open_ = raw.find("(")
    close = raw.rfind(")")
    if open_ < 0 or close < open_:
        raise ValueError("no (comm) in stat")
    f = raw[close + 2:].split()  # f[0] is field 3 (state)
    if len(f) < 20:
        raise ValueError(f"stat has {len(f) + 2} fields")
    return Stat(comm=raw[open_ + 1: close], state=f[0], ppid=int(f[1]), flags=int(f[6]),
                utime=int(f[11]), stime=int(f[12]), num_threads=int(f[17]),
                start_time=int(f[19]), policy=int(f[38]) if len(f) > 38 else 0)


def read_stat(pid: int, tid: int | None = None) -> Stat:
    """/proc/PID/stat (or one thread's, when tid is given)."""
    raw = _read(_path(pid, tid, "stat"), pid).decode(errors="replace")
    try:
        return parse_stat(raw)
    except ValueError as e:
        raise ProcessGone(f"process {pid}: unreadable stat ({e})") from e


# --- /proc/PID/status ---


def parse_status(text: str) -> dict[str, str]:
    """'Key:\tvalue' lines of /proc/PID/status as {key: value}, values stripped."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key] = value.strip()
    return out


def read_status(pid: int | str, tid: int | None = None) -> dict[str, str]:
    """/proc/PID/status; pid may be "self"."""
    if isinstance(pid, str):
        if pid != "self":
            raise ValueError(f"bad pid {pid!r}")
        path = f"{PROC}/self/status"
        text = _read(path, os.getpid()).decode(errors="replace")
    else:
        text = _read(_path(pid, tid, "status"), pid).decode(errors="replace")
    return parse_status(text)


def status_uid(status: dict[str, str]) -> int:
    """The real uid (whose process it is) from parsed status; -1 when absent."""
    try:
        return int(status.get("Uid", "").split()[0])
    except (IndexError, ValueError):
        return -1


def cap_effective(bit: int, status: dict[str, str] | None = None) -> bool:
    """Whether capability ``bit`` is in the effective set (of this process by default)."""
    st = read_status("self") if status is None else status
    try:
        return bool(int(st.get("CapEff", "0"), 16) >> bit & 1)
    except ValueError:
        return False


# --- /proc/PID/cgroup ---


def parse_cgroup(text: str) -> dict[str, str]:
    """{hierarchy-key: path}: "0" for the v2 hierarchy, the controller list ("cpu,cpuacct")
    or "name=..." for v1 ones, as /proc/PID/cgroup spells them."""
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


_parse_cgroup = parse_cgroup  # the name it had before


def read_cgroup(pid: int) -> dict[str, str]:
    return parse_cgroup(_read(_path(pid, None, "cgroup"), pid).decode(errors="replace"))


# --- /proc/PID/maps, environ ---


def parse_maps(data: bytes) -> list[str]:
    """Distinct file paths in /proc/PID/maps text, in order of first appearance."""
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


def parse_environ(data: bytes, name: str) -> str | None:
    """The value of ``name`` in NUL-separated environ bytes (first match), or None."""
    prefix = name.encode() + b"="
    for entry in data.split(b"\0"):
        if entry.startswith(prefix):
            return entry[len(prefix):].decode(errors="replace")
    return None


# --- /proc/PID/schedstat, statm ---


def parse_schedstat(text: str) -> tuple[int, int, int]:
    """(ns on CPU, ns runnable but waiting for a CPU, timeslices) from schedstat."""
    f = text.split()
    if len(f) < 3:
        raise ValueError("schedstat has fewer than 3 fields")
    return int(f[0]), int(f[1]), int(f[2])


def read_schedstat(pid: int, tid: int | None = None) -> tuple[int, int, int]:
    """A thread's (or the process's main thread's) schedstat; ProcessGone when gone."""
    text = _read(_path(pid, tid, "schedstat"), pid).decode(errors="replace")
    try:
        return parse_schedstat(text)
    except ValueError as e:
        raise ProcessGone(f"process {pid}: unreadable schedstat ({e})") from e


def parse_statm(text: str) -> tuple[int, int]:
    """(size, resident) in pages from /proc/PID/statm."""
    f = text.split()
    if len(f) < 2:
        raise ValueError("statm has fewer than 2 fields")
    return int(f[0]), int(f[1])


def rss_bytes(pid: int) -> int:
    text = _read(_path(pid, None, "statm"), pid).decode(errors="replace")
    try:
        return parse_statm(text)[1] * _PAGE_SIZE
    except ValueError as e:
        raise ProcessGone(f"process {pid}: unreadable statm ({e})") from e


# --- the daemon's own namespaces ---


def parse_uid_map(text: str) -> list[tuple[int, int, int]]:
    """(inside, outside, count) lines of /proc/PID/uid_map."""
    out = []
    for line in text.splitlines():
        f = line.split()
        if len(f) == 3:
            out.append((int(f[0]), int(f[1]), int(f[2])))
    return out


def _ns_inode(kind: str) -> int | None:
    # The link reads "pid:[4026531836]"; None where it cannot be read (some sandboxes).
    try:
        link = os.readlink(f"{PROC}/self/ns/{kind}")
    except OSError:
        return None
    try:
        return int(link[link.index("[") + 1: link.rindex("]")])
    except ValueError:
        return None


def nested_namespace() -> str | None:
    """'PID' or 'user' when this process runs in a non-initial PID or user namespace
    (where the kernel's process connector delivers nothing), else None.

    NSpid with more than one id shows a nested PID namespace when /proc is the host's; a
    /proc mounted inside the namespace shows one id, so the namespace's inode is checked
    against the initial one as well. A uid_map other than the identity over all 2^32 uids
    shows a nested user namespace; a child namespace mapping them all looks the same, so
    the inode is checked there too."""
    try:
        nspid = read_status("self").get("NSpid", "").split()
    except (OSError, ProcessGone):
        nspid = []
    ino = _ns_inode("pid")
    if len(nspid) > 1 or (ino is not None and ino != PROC_PID_INIT_INO):
        return "PID"
    try:
        with open(f"{PROC}/self/uid_map") as fh:
            uid_map = parse_uid_map(fh.read())
    except (OSError, ValueError):
        uid_map = _FULL_UID_MAP  # no user namespaces in this kernel: the initial one
    ino = _ns_inode("user")
    if uid_map != _FULL_UID_MAP or (ino is not None and ino != PROC_USER_INIT_INO):
        return "user"
    return None


def foreign_proc() -> str | None:
    """Why /proc cannot be trusted to name this process's PIDs, or None. A /proc mounted
    for another PID namespace (the host's, seen from a container that did not mount its
    own) numbers processes differently from the syscalls: reading pid N there and then
    renicing pid N would change some other process."""
    try:
        shown = os.readlink(f"{PROC}/self")
    except OSError as e:
        return f"cannot read {PROC}/self: {e.strerror or e}"
    if shown != str(os.getpid()):
        return (f"{PROC} belongs to another PID namespace (it shows this process as pid "
                f"{shown}, not {os.getpid()}); mount a /proc for this namespace")
    return None


# --- processes ---


def list_pids() -> list[int]:
    return sorted(int(n) for n in os.listdir(PROC) if n.isdigit())


def task_id(pid: int, tid: int | None = None) -> TaskId:
    """Identity of a process (or of one of its threads when tid is given)."""
    return TaskId(tid if tid is not None else pid, read_stat(pid, tid).start_time)


@lru_cache(maxsize=1024)
def _user_name(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def process_name(pid: int) -> str:
    """The process's comm (one small read: what a rule on the parent's name needs)."""
    return _read(_path(pid, None, "comm"), pid).decode(errors="replace").rstrip("\n")


def read_process(pid: int) -> ProcessInfo:
    st = read_stat(pid)
    ident = TaskId(pid, st.start_time)
    comm = process_name(pid)
    cmd_raw = _read(_path(pid, None, "cmdline"), pid, 1 << 16)
    cmdline = [a.decode(errors="replace") for a in cmd_raw.split(b"\0")[:-1]] if cmd_raw else []
    try:
        exe: str | None = os.readlink(_path(pid, None, "exe"))
    except OSError:
        exe = None  # kernel threads have none; zombies lose it; another user's is refused
    uid = status_uid(read_status(pid))
    cgroups = read_cgroup(pid)
    info = ProcessInfo(
        ident=ident, ppid=st.ppid, comm=comm, exe=exe, cmdline=cmdline, uid=uid,
        user=_user_name(uid) if uid >= 0 else None, cgroups=cgroups,
        is_kernel_thread=(bool(st.flags & _PF_KTHREAD) or (pid != 1 and st.ppid == 2)
                          or pid == 2),
        policy=st.policy, num_threads=st.num_threads,
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
    return parse_maps(_read(_path(pid, None, "maps"), pid, max_bytes))


def environ_value(pid: int, name: str, max_bytes: int = 1 << 20) -> str | None:
    return parse_environ(_read(_path(pid, None, "environ"), pid, max_bytes), name)


def cpu_times(pid: int) -> tuple[float, float]:
    """(user, system) seconds."""
    st = read_stat(pid)
    return st.utime / _CLK_TCK, st.stime / _CLK_TCK


def parent_pid(pid: int) -> int:
    return read_stat(pid).ppid


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


# --- /proc/PID/net/tcp, tcp6, unix and /proc/PID/fd: the sockets a process listens on ---

_TCP_LISTEN = "0A"  # TCP_LISTEN, as the st column spells it (include/net/tcp_states.h)
_SO_ACCEPTCON = 0x10000  # __SO_ACCEPTCON in net/unix's Flags: the socket is listening
_SOCK_STREAM, _SOCK_SEQPACKET = 1, 5
# A table is read up to this many bytes. /proc/PID/net/* lists the whole network
# namespace (every socket of every process in it), and the daemon reads it a few times a
# second for each busy AI process: one 1 MiB read holds ~7,000 tcp lines or ~10,000 unix
# lines, far more listening sockets than a machine has, while a namespace with a million
# sockets cannot make a read cost seconds. Past the limit the answer may miss a socket.
_NET_TABLE_LIMIT = 1 << 20
# TCP tables list every listening socket before any other (tcp_seq_start walks the
# listening hash, then the established one), so the read stops at the first chunk that
# reaches another socket: the connections of a busy server are never even formatted.
_TCP_CHUNK = 1 << 16
# fds examined per process, lowest first. Each costs a readlink (3 to 12 us measured), so
# a server holding 10,000 connections would cost ~0.1 s a call; it opens its listening
# sockets before it accepts any connection, so they have low numbers.
_MAX_FDS = 1024


def _tcp_address(field: str) -> str:
    """"0100007F:1F90" -> "127.0.0.1:8080"; 32 hex digits -> "[::1]:8080". The kernel
    prints each 32-bit word of the (network-order) address as a host-order integer, so
    each word is packed back in this machine's byte order."""
    host, sep, port = field.partition(":")
    if not sep or len(host) not in (8, 32) or len(port) != 4:
        raise ValueError(f"bad address {field!r}")
    raw = struct.pack(f"={len(host) // 8}I",
                      *(int(host[i: i + 8], 16) for i in range(0, len(host), 8)))
    if len(raw) == 4:
        return f"{socket.inet_ntop(socket.AF_INET, raw)}:{int(port, 16)}"
    return f"[{socket.inet_ntop(socket.AF_INET6, raw)}]:{int(port, 16)}"


def parse_net_tcp(text: str) -> list[tuple[int, str]]:
    """(inode, "address:port") of each listening socket in /proc/PID/net/tcp or tcp6
    text (state 0A), in table order. The header and malformed or cut-off lines (a bounded
    read can end mid-line) are skipped."""
    out: list[tuple[int, str]] = []
    for line in text.splitlines():
        # sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode ...
        f = line.split()
        if len(f) < 10 or f[3] != _TCP_LISTEN:
            continue
        try:
            out.append((int(f[9]), _tcp_address(f[1])))
        except ValueError:
            continue
    return out


def parse_net_unix(text: str) -> list[tuple[int, str]]:
    """(inode, name) of each listening stream or seqpacket socket in /proc/PID/net/unix
    text: its Flags hold __SO_ACCEPTCON. The name is the bound path, "@name" for an
    abstract one (the kernel writes it so, each NUL in it as '@'), or "" for an unnamed
    socket, whose line has no Path column."""
    out: list[tuple[int, str]] = []
    for line in text.splitlines():
        # Num: RefCount Protocol Flags Type St Inode [Path] -- a path may hold spaces.
        f = line.split(None, 7)
        if len(f) < 7 or not f[0].endswith(":"):
            continue  # the header, or a cut-off line
        try:
            flags, kind, inode = int(f[3], 16), int(f[4], 16), int(f[6])
        except ValueError:
            continue
        if flags & _SO_ACCEPTCON and kind in (_SOCK_STREAM, _SOCK_SEQPACKET):
            out.append((inode, f[7].rstrip("\n") if len(f) > 7 else ""))
    return out


def parse_sockstat(text: str) -> dict[str, int]:
    """{protocol: sockets in use} from /proc/PID/net/sockstat or sockstat6 text
    ("TCP: inuse 3 orphan 0 tw 1 ..." -> {"TCP": 3}); protocols without a count are left
    out."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        proto, sep, rest = line.partition(":")
        f = rest.split()
        if sep and len(f) >= 2 and f[0] == "inuse" and f[1].isdigit():
            out[proto] = int(f[1])
    return out


def parse_socket_link(link: str) -> int | None:
    """The inode in a /proc/PID/fd link "socket:[12345]"; None for any other file."""
    if not (link.startswith("socket:[") and link.endswith("]")):
        return None
    try:
        return int(link[len("socket:["): -1])
    except ValueError:
        return None


def socket_inodes(pid: int, max_fds: int = _MAX_FDS) -> set[int]:
    """Inodes of the sockets the process holds open (from its first max_fds fds).
    Reading another user's /proc/PID/fd needs ptrace access: PermissionError without."""
    fd_dir = _path(pid, None, "fd")
    try:
        names = os.listdir(fd_dir)
    except (FileNotFoundError, ProcessLookupError) as e:
        raise ProcessGone(f"process {pid} has exited") from e
    out: set[int] = set()
    for name in sorted(names, key=lambda n: int(n) if n.isdigit() else 0)[:max_fds]:
        try:
            link = os.readlink(f"{fd_dir}/{name}")
        except OSError:
            continue  # closed since the listing
        inode = parse_socket_link(link)
        if inode is not None:
            out.add(inode)
    return out


def _last_line_state(data: bytes) -> bytes | None:
    """The st column of the last whole line after the header, None if there is none."""
    end = data.rfind(b"\n")
    start = data.rfind(b"\n", 0, end) + 1 if end > 0 else 0
    if start == 0:
        return None  # at most the header so far
    f = data[start:end].split()
    return f[3] if len(f) > 3 else None


def _read_tcp_table(path: str, pid: int, limit: int) -> bytes:
    # In chunks, stopping once the last whole line read is neither a listener nor a
    # request socket (which kernels before 4.4 list right after their listener): every
    # listener has been read by then (see _TCP_CHUNK).
    data = b""
    with _gone_if_exited(pid), open(path, "rb", buffering=0) as fh:
        while len(data) < limit:
            chunk = fh.read(min(_TCP_CHUNK, limit - len(data)))
            if not chunk:
                break
            data += chunk
            if _last_line_state(data) not in (None, b"0A", b"03"):
                break
    return data


def _read_net_table(pid: int, name: str, limit: int = _NET_TABLE_LIMIT) -> str:
    """/proc/PID/net/NAME: the tables of the process's own network namespace (/proc/net
    is the reader's). "" when the kernel lacks that protocol (tcp6 after ipv6.disable=1)
    while the process is still there."""
    path = _path(pid, None, f"net/{name}")
    try:
        if name.startswith("tcp"):
            raw = _read_tcp_table(path, pid, limit)
        else:
            raw = _read(path, pid, limit)
    except ProcessGone:
        if os.path.exists(_path(pid, None, "stat")):
            return ""
        raise
    return raw.decode(errors="replace")


# (table, what its sockets are called, the sockstat file and line counting them).
_LISTEN_TABLES = (("tcp", "tcp", "sockstat", "TCP"), ("tcp6", "tcp", "sockstat6", "TCP6"),
                  ("unix", "unix", None, None))


def listening_sockets(pid: int) -> list[str]:
    """What the process listens on, sorted and without repeats: "tcp 0.0.0.0:8080",
    "tcp [::1]:8080", "unix /run/x.sock", "unix @abstract", "unix (unnamed)".

    A socket counts when the process holds an fd of it (an inherited listener included),
    matched by inode against the listening entries of the tables of its network
    namespace. A process holding no socket costs one listing of /proc/PID/fd and the
    readlinks, and no table is read. ProcessGone when the process has exited,
    PermissionError when its fds may not be read."""
    inodes = socket_inodes(pid)
    found: set[str] = set()
    for table, kind, sockstat, proto in _LISTEN_TABLES:
        if not inodes:
            break  # every socket it holds is accounted for: the other tables cannot add
        # Reaching the end of a TCP table walks the namespace's whole established hash
        # (262,144 buckets here: 2 to 5 ms, even with no connection in it), so a table
        # whose protocol has no socket in use, as tcp6 on a host that uses no IPv6,
        # is not read; the counter costs one small read.
        if sockstat is not None and proto is not None and parse_sockstat(
                _read_net_table(pid, sockstat, 1 << 12)).get(proto) == 0:
            continue
        parse = parse_net_unix if kind == "unix" else parse_net_tcp
        for inode, address in parse(_read_net_table(pid, table)):
            if inode in inodes:
                inodes.discard(inode)
                found.add(f"{kind} {address or '(unnamed)'}")
    return sorted(found)
