"""A serving process's local clients, against the real kernel: processes this test starts
connect to a server over a Unix socket and over loopback TCP; sock_diag and /proc/net/tcp
must name exactly those, not a process that merely runs beside them."""

from __future__ import annotations

import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ainative.platform.linux import peers

SERVER = """
import socket, sys, time
u = socket.socket(socket.AF_UNIX); u.bind(sys.argv[1]); u.listen()
t = socket.socket(); t.bind(("127.0.0.1", 0)); t.listen()
print(t.getsockname()[1], flush=True)
a, _ = u.accept(); b, _ = t.accept()
print("accepted", flush=True)
sys.stdin.readline()
"""
UNIX_CLIENT = ("import socket, sys\ns = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n"
               "print('ready', flush=True); sys.stdin.readline()")
TCP_CLIENT = ("import socket, sys\ns = socket.create_connection(('127.0.0.1', int(sys.argv[1])))"
              "\nprint('ready', flush=True); sys.stdin.readline()")
BYSTANDER = "import sys\nprint('ready', flush=True); sys.stdin.readline()"


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for p in started:
        p.kill()
        p.wait()


def _start(started: list[subprocess.Popen[str]], code: str, *args: str) -> subprocess.Popen[str]:
    p = subprocess.Popen([sys.executable, "-c", code, *args], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    started.append(p)
    return p


def test_the_clients_over_unix_and_loopback_tcp_and_nothing_else(
        procs: list[subprocess.Popen[str]], tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    srv = _start(procs, SERVER, path)
    assert srv.stdout is not None
    port = srv.stdout.readline().strip()
    unix = _start(procs, UNIX_CLIENT, path)
    tcp = _start(procs, TCP_CLIENT, port)
    other = _start(procs, BYSTANDER)
    for p in (unix, tcp, other):
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    assert srv.stdout.readline().strip() == "accepted"
    everyone = {unix.pid, tcp.pid, other.pid}
    assert peers.local_peers({srv.pid}, everyone) == {unix.pid, tcp.pid}
    # From the other side: the server is the clients' peer; the bystander has none.
    assert peers.local_peers({unix.pid}, {srv.pid, other.pid}) == {srv.pid}
    assert peers.local_peers({other.pid}, {srv.pid, unix.pid, tcp.pid}) == set()
    assert peers.local_peers(set(), everyone) == set()


def _msg(kind: int, body: bytes) -> bytes:
    return struct.pack("=IHHII", 16 + len(body), kind, 0, 1, 0) + body


def _unix_msg(ino: int, peer: int | None) -> bytes:
    body = struct.pack("=BBBBIII", 1, 1, 1, 0, ino, 0, 0)
    if peer is not None:
        body += struct.pack("=HHI", 8, peers.UNIX_DIAG_PEER, peer)
    return _msg(peers.SOCK_DIAG_BY_FAMILY, body)


def test_parse_unix_peers_reads_peers_and_stops_at_done_or_cut_off_data() -> None:
    data = _unix_msg(10, 11) + _unix_msg(12, None) + _msg(peers.NLMSG_DONE, b"\0" * 4)
    assert peers.parse_unix_peers(data) == ({10: 11}, True)
    assert peers.parse_unix_peers(data[:-5]) == ({10: 11}, False)  # no DONE yet
    cut = _unix_msg(10, 11)[:-3]  # an attribute cut short: nothing is read from it
    assert peers.parse_unix_peers(cut) == ({}, False)


def test_peer_inodes_match_swapped_tcp_ends() -> None:
    tcp = {1: ("0100007F:1F90", "0100007F:C000"), 2: ("0100007F:C000", "0100007F:1F90"),
           3: ("0100007F:C001", "0100007F:1F91")}
    assert peers.peer_inodes({1}, {}, tcp) == {2}
    assert peers.peer_inodes({5}, {5: 6}, tcp) == {6}
    text = ("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt"
            "   uid  timeout inode\n"
            "   0: 0100007F:1F90 0100007F:C000 01 00000000:00000000 00:00000000 00000000"
            "     0        0 4242 1 0000000000000000\n"
            "   1: 0100007F:1F91 00000000:0000 0A 00000000:00000000 00:00000000 00000000"
            "     0        0 4343 1 0000000000000000\n")
    assert peers.parse_tcp_connections(text) == {4242: ("0100007F:1F90", "0100007F:C000")}
