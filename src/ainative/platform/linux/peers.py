"""Which local processes talk to a process over a socket: the peers of its Unix-socket
connections (from the kernel's sock_diag netlink, UNIX_DIAG_PEER) and of its TCP
connections over loopback (from /proc/PID/net/tcp and tcp6, whose established lines name
both ends). The closed loop never demotes a serving process's local clients: a load
client or a proxy in front of a model server is part of the serving path, and demoting
it makes every request late however well the server itself runs.

No maintained Python library reads Unix socket peers (psutil reports no peer for a Unix
socket, pyroute2 has no unix_diag), so the two structs it needs are packed here by hand,
as linux/sock_diag.h and linux/unix_diag.h lay them out.
"""

from __future__ import annotations

import socket
import struct

from ainative.platform.base import ProcessGone
from ainative.platform.linux import procfs

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NLMSG_DONE = 3
NLMSG_ERROR = 2
UDIAG_SHOW_PEER = 0x4
UNIX_DIAG_PEER = 2
TCP_ESTABLISHED = "01"

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_UNIX_DIAG_REQ = struct.Struct("=BBHIIIII")  # family, protocol, pad, states, ino, show, cookie[2]
_UNIX_DIAG_MSG = struct.Struct("=BBBBIII")  # family, type, state, pad, ino, cookie[2]
_RTATTR = struct.Struct("=HH")  # len, type
_MAX_BYTES = 64 << 20  # a dump past this is cut short: a bounded cost on any machine


def unix_dump_request(seq: int = 1) -> bytes:
    """A sock_diag request for every Unix socket in the reader's namespace, with peers."""
    body = _UNIX_DIAG_REQ.pack(socket.AF_UNIX, 0, 0, 0xFFFFFFFF, 0, UDIAG_SHOW_PEER,
                               0xFFFFFFFF, 0xFFFFFFFF)
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), SOCK_DIAG_BY_FAMILY,
                          NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body


def parse_unix_peers(data: bytes) -> tuple[dict[int, int], bool]:
    """({socket inode: its peer's inode}, whether the dump ended) from sock_diag replies.
    Malformed or cut-off messages end the parse."""
    out: dict[int, int] = {}
    off = 0
    while off + _NLMSGHDR.size <= len(data):
        length, kind, _flags, _seq, _pid = _NLMSGHDR.unpack_from(data, off)
        if length < _NLMSGHDR.size or off + length > len(data):
            break
        if kind in (NLMSG_DONE, NLMSG_ERROR):
            return out, True
        body = off + _NLMSGHDR.size
        if kind == SOCK_DIAG_BY_FAMILY and length >= _NLMSGHDR.size + _UNIX_DIAG_MSG.size:
            ino = _UNIX_DIAG_MSG.unpack_from(data, body)[4]
            at = body + _UNIX_DIAG_MSG.size
            end = off + length
            while at + _RTATTR.size <= end:
                alen, atype = _RTATTR.unpack_from(data, at)
                if alen < _RTATTR.size or at + alen > end:
                    break
                if atype == UNIX_DIAG_PEER and alen >= _RTATTR.size + 4:
                    peer = struct.unpack_from("=I", data, at + _RTATTR.size)[0]
                    if peer:
                        out[ino] = peer
                at += (alen + 3) & ~3
        off += (length + 3) & ~3
    return out, False


def unix_peers() -> dict[int, int]:
    """{socket inode: peer inode} for the connected Unix sockets of this namespace."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG) as s:
        s.settimeout(2.0)
        s.sendto(unix_dump_request(), (0, 0))
        out: dict[int, int] = {}
        seen = 0
        while seen < _MAX_BYTES:
            chunk = s.recv(1 << 16)
            if not chunk:
                break
            seen += len(chunk)
            part, done = parse_unix_peers(chunk)
            out.update(part)
            if done:
                break
        return out


def parse_tcp_connections(text: str) -> dict[int, tuple[str, str]]:
    """{inode: (local, remote)} of the established connections in /proc/PID/net/tcp or
    tcp6 text, each end as the kernel prints it (hex address:port)."""
    out: dict[int, tuple[str, str]] = {}
    for line in text.splitlines():
        f = line.split()
        if len(f) < 10 or f[3] != TCP_ESTABLISHED:
            continue
        try:
            out[int(f[9])] = (f[1], f[2])
        except ValueError:
            continue
    return out


def _tcp_connections(pid: int) -> dict[int, tuple[str, str]]:
    out: dict[int, tuple[str, str]] = {}
    for name in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{name}") as fh:
                out.update(parse_tcp_connections(fh.read(_MAX_BYTES)))
        except OSError:
            continue
    return out


def peer_inodes(server_inodes: set[int], unix: dict[int, int],
                tcp: dict[int, tuple[str, str]]) -> set[int]:
    """The inodes at the other end of the server's sockets: Unix peers, and the TCP
    sockets whose ends are the server's ends swapped (a loopback connection)."""
    out = {unix[i] for i in server_inodes if i in unix}
    ends = {(tcp[i][1], tcp[i][0]) for i in server_inodes if i in tcp}
    if ends:
        out |= {i for i, e in tcp.items() if e in ends}
    return out - server_inodes


def local_peers(servers: set[int], candidates: set[int]) -> set[int]:
    """Those of ``candidates`` (pids) holding a socket connected to one of ``servers``'
    sockets. Processes that vanish or cannot be read are left out."""
    if not servers or not candidates:
        return set()
    mine: set[int] = set()
    tcp: dict[int, tuple[str, str]] = {}
    for pid in servers:
        try:
            mine |= procfs.socket_inodes(pid)
        except (OSError, ProcessGone):
            continue
        tcp.update(_tcp_connections(pid))
    if not mine:
        return set()
    try:
        unix = unix_peers()
    except OSError:
        unix = {}
    wanted = peer_inodes(mine, unix, tcp)
    out: set[int] = set()
    for pid in candidates - servers:
        try:
            if procfs.socket_inodes(pid) & wanted:
                out.add(pid)
        except (OSError, ProcessGone):
            continue
    return out

