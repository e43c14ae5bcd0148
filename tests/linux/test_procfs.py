"""The /proc reader against real processes this test starts, cross-checked with psutil."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from ainative.platform.base import ProcessGone
from ainative.platform.linux import procfs


def spawn(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    p = subprocess.Popen(list(args), env=env)
    deadline = time.monotonic() + 5
    # Wait for exec to finish so /proc shows the new image, not python's.
    while time.monotonic() < deadline:
        try:
            if (os.readlink(f"/proc/{p.pid}/exe") != os.path.realpath(sys.executable)
                    and open(f"/proc/{p.pid}/cmdline", "rb").read()):
                break
        except OSError:
            pass
        time.sleep(0.01)
    return p


def test_read_process_matches_psutil() -> None:
    p = spawn("/bin/sleep", "30")
    try:
        info = procfs.read_process(p.pid)
        ps = psutil.Process(p.pid)
        assert info.pid == p.pid
        assert info.ppid == os.getpid()
        assert info.comm == "sleep"
        assert info.cmdline == ["/bin/sleep", "30"]
        assert info.exe == os.path.realpath("/bin/sleep")
        assert info.uid == os.getuid() == ps.uids().real
        assert info.user == ps.username()
        assert not info.is_kernel_thread
        assert info.num_threads == 1
        # start_time in ticks agrees with psutil's wall-clock start time.
        boot = psutil.boot_time()
        assert abs(boot + info.ident.start_time / os.sysconf("SC_CLK_TCK")
                   - ps.create_time()) < 0.05
        assert info.cgroups and all(v.startswith("/") for v in info.cgroups.values())
        assert info.ident == procfs.task_id(p.pid)
    finally:
        p.kill()
        p.wait()


def test_comm_with_spaces_and_parentheses_is_parsed() -> None:
    code = ("import ctypes, sys; ctypes.CDLL(None).prctl(15, b'a) (b c', 0, 0, 0)\n"
            "print('ok', flush=True); sys.stdin.readline()")
    p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE)
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == b"ok"
        info = procfs.read_process(p.pid)
        assert info.comm == "a) (b c"
        assert info.ppid == os.getpid()
    finally:
        p.kill()
        p.wait()


def test_kernel_threads_are_marked() -> None:
    kthreads = [i for i in procfs.iter_processes() if i.is_kernel_thread]
    assert kthreads, "no kernel thread found"
    assert all(i.exe is None and i.cmdline == [] for i in kthreads)
    assert not procfs.read_process(os.getpid()).is_kernel_thread
    assert not procfs.read_process(1).is_kernel_thread


def test_threads_environ_maps_and_cpu_times() -> None:
    code = ("import threading, sys, numpy\n"
            "ev = threading.Event()\n"
            "[threading.Thread(target=ev.wait, daemon=True).start() for _ in range(3)]\n"
            "x = 0\nfor i in range(3_000_000): x += i\n"
            "print('ok', flush=True); sys.stdin.readline()")
    env = {**os.environ, "AINATIVE_CLASS": "inference", "OTHER": "x=y"}
    p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, env=env)
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == b"ok"
        threads = procfs.list_threads(p.pid)
        # Our 3 threads plus main, plus whatever threads numpy's BLAS started.
        assert len(threads) >= 4 and p.pid in threads
        assert sorted(t.id for t in psutil.Process(p.pid).threads()) == threads
        assert {procfs.task_id(p.pid, t).pid for t in threads} == set(threads)
        assert procfs.environ_value(p.pid, "AINATIVE_CLASS") == "inference"
        assert procfs.environ_value(p.pid, "OTHER") == "x=y"
        assert procfs.environ_value(p.pid, "NOT_THERE") is None
        maps = procfs.mapped_files(p.pid)
        assert any("numpy" in m and ".so" in m for m in maps)
        assert len(maps) == len(set(maps))
        # A bounded read returns fewer files, never an error.
        assert 0 < len(procfs.mapped_files(p.pid, max_bytes=4096)) < len(maps)
        user, system = procfs.cpu_times(p.pid)
        ps = psutil.Process(p.pid).cpu_times()
        assert user > 0 and abs(user - ps.user) < 0.05 and abs(system - ps.system) < 0.05
    finally:
        p.kill()
        p.wait()


def test_is_descendant_walks_the_tree() -> None:
    p = subprocess.Popen(["/bin/sh", "-c", "sleep 30 & echo $!; wait"], stdout=subprocess.PIPE,
                         text=True)
    try:
        assert p.stdout is not None
        grandchild = int(p.stdout.readline())
        assert procfs.is_descendant(grandchild, p.pid)
        assert procfs.is_descendant(grandchild, os.getpid())
        assert not procfs.is_descendant(p.pid, grandchild)
        assert not procfs.is_descendant(os.getpid(), p.pid)
    finally:
        subprocess.run(["pkill", "-P", str(p.pid)], check=False)
        p.kill()
        p.wait()


def test_exited_process_raises_process_gone() -> None:
    p = subprocess.Popen(["true"])
    p.wait()
    for fn in (procfs.read_process, procfs.task_id, procfs.list_threads, procfs.mapped_files,
               procfs.cpu_times):
        with pytest.raises(ProcessGone):
            fn(p.pid)  # type: ignore[operator]
    with pytest.raises(ProcessGone):
        procfs.environ_value(p.pid, "X")
    assert not procfs.is_descendant(p.pid, os.getpid())


def test_list_and_iter_agree() -> None:
    pids = procfs.list_pids()
    assert os.getpid() in pids and 1 in pids and pids == sorted(pids)
    seen = {i.pid for i in procfs.iter_processes()}
    assert os.getpid() in seen
    assert seen <= set(procfs.list_pids()) | set(pids)


# --- the parsers, on text a process could make hostile ---


def test_parse_stat_takes_comm_up_to_the_last_parenthesis() -> None:
    tail = " ".join(str(i) for i in range(4, 53))  # fields 4..52 hold their own number
    st = procfs.parse_stat(f"42 (a) (b) 7 8 9) R {tail}")
    assert st.comm == "a) (b) 7 8 9" and st.state == "R"
    assert (st.ppid, st.flags, st.utime, st.start_time, st.policy) == (4, 9, 14, 22, 41)
    raw = open(f"/proc/{os.getpid()}/stat").read()
    mine = procfs.parse_stat(raw)
    assert mine.ppid == os.getppid() and mine.start_time == procfs.task_id(os.getpid()).start_time
    for bad in ("", "42 no comm here", "42 (x) R 1 2"):
        with pytest.raises(ValueError):
            procfs.parse_stat(bad)


def test_parse_status_schedstat_statm_uid_map() -> None:
    st = procfs.parse_status("Name:\tpython\nUid:\t1000\t1000\t1000\t1000\nNSpid:\t7\t1\n"
                             "garbage line\nCapEff:\t0000000000800000\n")
    assert st["NSpid"].split() == ["7", "1"] and procfs.status_uid(st) == 1000
    assert procfs.cap_effective(23, st) and not procfs.cap_effective(14, st)
    assert procfs.status_uid({}) == -1
    assert procfs.parse_schedstat("123 456 7\n") == (123, 456, 7)
    with pytest.raises(ValueError):
        procfs.parse_schedstat("1 2")
    assert procfs.parse_statm("100 20 3 4 0 5 0\n") == (100, 20)
    assert procfs.parse_uid_map("         0          0 4294967295\n") == [(0, 0, 4294967295)]
    assert procfs.parse_uid_map("0 1000 1\n1 100000 65536\n") == [(0, 1000, 1),
                                                                  (1, 100000, 65536)]
    assert procfs.parse_cgroup("12:cpu,cpuacct:/a\n0::/b\n1:name=systemd:/c\nbad\n") == {
        "cpu,cpuacct": "/a", "0": "/b", "name=systemd": "/c"}
    assert procfs.parse_maps(b"7f-8f r-xp 0 08:01 5 /lib/x.so\n7f-8f r--p 0 0 0 [heap]\n"
                             b"7f-8f rw-p 0 08:01 6 /tmp/a b (deleted)\n7f rw 0 0 0 /lib/x.so"
                             ) == ["/lib/x.so", "/tmp/a b"]
    assert procfs.parse_environ(b"A=1\0AINATIVE_CLASS=x=y\0", "AINATIVE_CLASS") == "x=y"
    assert procfs.parse_environ(b"XAINATIVE_CLASS=1\0", "AINATIVE_CLASS") is None


def test_schedstat_and_rss_of_real_processes() -> None:
    run, wait, slices = procfs.read_schedstat(os.getpid())
    assert run > 0 and wait >= 0 and slices > 0
    tid = threading_native_id()
    assert procfs.read_schedstat(os.getpid(), tid)[0] > 0
    assert abs(procfs.rss_bytes(os.getpid()) - psutil.Process().memory_info().rss) < 8 << 20
    p = subprocess.Popen(["true"])
    p.wait()
    for fn in (procfs.read_schedstat, procfs.rss_bytes, procfs.read_stat, procfs.read_status,
               procfs.read_cgroup):
        with pytest.raises(ProcessGone):
            fn(p.pid)  # type: ignore[operator]


def threading_native_id() -> int:
    import threading

    return threading.get_native_id()


# --- listening sockets: /proc/PID/net/{tcp,tcp6,unix} and /proc/PID/fd ---

TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 111 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1538 00000000:0000 0A 00000000:00000000 00:00000000 00000000   105        0 112 1 0000000000000000 100 0 0 10 0
   2: 0100007F:1F90 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000     0        0 113 1 0000000000000000 20 4 30 10 -1
   3: 0100007F:1F90 0100007F:D2F2 06 00000000:00000000 03:00001770 00000000     0        0 0 3 0000000000000000
   4: 0100007F:1F91 00000000:0000 0A 00000000:00000000 00:00000000 0000
   5: 0100007F:1F92 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 bad 1
"""  # noqa: E501 -- the kernel's line width

TCP6 = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 211 1 0000000000000000 100 0 0 10 0
   1: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 212 1 0000000000000000 100 0 0 10 0
   2: 0000000000000000FFFF00000100007F:0016 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 213 1 0000000000000000 100 0 0 10 0
   3: 00000000000000000000000001000000:1F90 00000000000000000000000001000000:A1B2 01 00000000:00000000 00:00000000 00000000     0        0 214 1 0000000000000000 20 4 30 10 -1
"""  # noqa: E501

UNIX = """\
Num       RefCount Protocol Flags    Type St Inode Path
0000000000000000: 00000002 00000000 00010000 0001 01 311 /run/x.sock
0000000000000000: 00000002 00000000 00010000 0005 01 312 @abs@name
0000000000000000: 00000003 00000000 00000000 0001 03 313 /run/x.sock
0000000000000000: 00000003 00000000 00000000 0001 03 314
0000000000000000: 00000002 00000000 00010000 0001 01 315
0000000000000000: 00000002 00000000 00000000 0002 01 316 /run/dgram.sock
0000000000000000: 00000002 00000000 00010000 0002 01 317 /run/odd.sock
0000000000000000: 00000002 00000000 00010000 0001 01 318 /tmp/a dir/s.sock
0000000000000000: 00000002 00000000 00010000 0001 01 bad /run/bad.sock
0000000000000000: 00000002 00000000 0001
"""


@pytest.mark.skipif(sys.byteorder != "little",
                    reason="the samples are a little-endian kernel's output")
def test_parse_net_tcp_keeps_listeners_with_their_addresses() -> None:
    # Established (01), TIME_WAIT (06, inode 0), a cut-off and a malformed line: skipped.
    assert procfs.parse_net_tcp(TCP) == [(111, "0.0.0.0:8080"), (112, "127.0.0.1:5432")]
    assert procfs.parse_net_tcp(TCP6) == [(211, "[::]:80"), (212, "[::1]:8080"),
                                          (213, "[::ffff:127.0.0.1]:22")]
    assert procfs.parse_net_tcp("") == [] and procfs.parse_net_tcp(TCP.splitlines()[0]) == []


def test_parse_net_unix_keeps_listening_stream_and_seqpacket_sockets() -> None:
    # 313/314: connected streams; 316/317: datagram sockets (never listening, whatever the
    # flags say); the "bad" inode and the cut-off line: skipped.
    assert procfs.parse_net_unix(UNIX) == [(311, "/run/x.sock"), (312, "@abs@name"),
                                           (315, ""), (318, "/tmp/a dir/s.sock")]
    assert procfs.parse_net_unix("") == []


def test_parse_socket_link() -> None:
    assert procfs.parse_socket_link("socket:[12345]") == 12345
    for other in ("pipe:[12345]", "/dev/null", "anon_inode:[eventfd]", "socket:[x]",
                  "socket:[1"):
        assert procfs.parse_socket_link(other) is None


LISTEN_TCP = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.bind(("127.0.0.1", 0))
s.listen()
s6 = None
if socket.has_ipv6:
    try:
        s6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        s6.bind(("::1", 0))
        s6.listen()
    except OSError:
        s6 = None
print(s.getsockname()[1], s6.getsockname()[1] if s6 else 0, flush=True)
sys.stdin.readline()
"""

LISTEN_UNIX = """
import socket, sys
a = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
a.bind(sys.argv[1])
a.listen()
b = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
b.bind("\\0" + sys.argv[2])
b.listen()
c = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
c.bind(sys.argv[3])
c.listen()
d = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # bound, but datagrams do not listen
d.bind(sys.argv[4])
print("ok", flush=True)
sys.stdin.readline()
"""

# Sockets of every kind the tables hold, none of them listening: a TCP connection to the
# test's own listener, a bound UDP socket, a connected Unix pair.
CONNECTED_ONLY = """
import socket, sys
c = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.bind(("127.0.0.1", 0))
pair = socket.socketpair()
print("ok", flush=True)
sys.stdin.readline()
"""


def start(code: str, *args: str) -> tuple[subprocess.Popen[str], str]:
    """A python child running code, once it has printed its first line (its sockets are
    set up by then), and that line."""
    p = subprocess.Popen([sys.executable, "-c", code, *args], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    line = p.stdout.readline().strip()
    if not line:
        p.kill()
        p.wait()
        pytest.fail(f"child exited with {p.returncode} before setting up its sockets")
    return p, line


def stop(p: subprocess.Popen[str]) -> None:
    p.kill()
    p.wait()


def test_listening_tcp_sockets_of_a_child() -> None:
    p, line = start(LISTEN_TCP)
    try:
        port, port6 = (int(x) for x in line.split())
        want = [f"tcp 127.0.0.1:{port}"] + ([f"tcp [::1]:{port6}"] if port6 else [])
        assert procfs.listening_sockets(p.pid) == sorted(want)
        # psutil agrees on what it listens on.
        ps = sorted((c.laddr.ip, c.laddr.port) for c in psutil.Process(p.pid).net_connections()
                    if c.status == psutil.CONN_LISTEN)
        assert ps == sorted([("127.0.0.1", port)] + ([("::1", port6)] if port6 else []))
    finally:
        stop(p)


def test_listening_unix_sockets_of_a_child(tmp_path: Path) -> None:
    stream, seqpacket, dgram = (str(tmp_path / n) for n in ("s.sock", "q.sock", "d.sock"))
    abstract = f"ainative-test-{os.getpid()}-{time.monotonic_ns()}"
    p, _ = start(LISTEN_UNIX, stream, abstract, seqpacket, dgram)
    try:
        assert procfs.listening_sockets(p.pid) == sorted(
            [f"unix {stream}", f"unix @{abstract}", f"unix {seqpacket}"])
    finally:
        stop(p)


def test_connected_sockets_are_not_listening() -> None:
    import socket

    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    p, _ = start(CONNECTED_ONLY, str(port))
    conn, _ = server.accept()
    try:
        assert len(procfs.socket_inodes(p.pid)) == 4  # it does hold sockets...
        assert procfs.listening_sockets(p.pid) == []  # ...and listens on none of them
        # Ours: the listener; the accepted connection is not one.
        assert f"tcp 127.0.0.1:{port}" in procfs.listening_sockets(os.getpid())
    finally:
        stop(p)
        conn.close()
        server.close()


def test_a_process_without_sockets_reads_no_table(monkeypatch: pytest.MonkeyPatch) -> None:
    read: list[str] = []
    real = procfs._read_net_table

    def counting(pid: int, name: str, limit: int = 1 << 20) -> str:
        read.append(name)
        return real(pid, name, limit)

    monkeypatch.setattr(procfs, "_read_net_table", counting)
    p = spawn("/bin/sleep", "30")
    try:
        assert procfs.socket_inodes(p.pid) == set()
        assert procfs.listening_sockets(p.pid) == [] and read == []
    finally:
        p.kill()
        p.wait()
    # The same counter sees the tables read for a process that does hold a socket.
    q, _ = start("import socket, sys; pair = socket.socketpair(); print('ok', flush=True); "
                 "sys.stdin.readline()")
    try:
        assert procfs.listening_sockets(q.pid) == [] and read[-1] == "unix"
    finally:
        stop(q)


def test_a_tcp_table_is_read_only_as_far_as_its_listeners(tmp_path: Path) -> None:
    # The kernel lists listeners first; the connections after them are not read, past the
    # chunk that reaches them.
    header = TCP.splitlines()[0] + "\n"
    listener, established = TCP.splitlines()[1] + "\n", TCP.splitlines()[3] + "\n"
    table = tmp_path / "tcp"
    table.write_text(header + listener * 3 + established * 5000)
    got = procfs._read_tcp_table(str(table), 1, 1 << 20)
    assert len(got) == procfs._TCP_CHUNK < table.stat().st_size
    assert procfs.parse_net_tcp(got.decode()) == [(111, "0.0.0.0:8080")] * 3
    # Listeners spanning several chunks are all read; the byte limit holds.
    table.write_text(header + listener * 1000 + established * 5000)
    got = procfs._read_tcp_table(str(table), 1, 1 << 20)
    assert len(procfs.parse_net_tcp(got.decode())) == 1000 and len(got) < 3 * (1 << 16)
    assert len(procfs._read_tcp_table(str(table), 1, 1000)) == 1000


def test_sockstat_counts_and_tables_with_no_socket_in_use_are_skipped(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert procfs.parse_sockstat("sockets: used 15\nTCP: inuse 1 orphan 0 tw 2 alloc 1 mem 3\n"
                                 "UDP: inuse 0 mem 0\nFRAG: inuse x\n") == {"TCP": 1, "UDP": 0}
    assert procfs.parse_sockstat("TCP6: inuse 0\nUDP6: inuse 0\n")["TCP6"] == 0
    tables = {"tcp": TCP, "tcp6": TCP6, "unix": UNIX, "sockstat": "TCP: inuse 2\n",
              "sockstat6": "TCP6: inuse 3\n"}
    read: list[str] = []

    def fake(pid: int, name: str, limit: int = 1 << 20) -> str:
        read.append(name)
        return tables[name]

    monkeypatch.setattr(procfs, "_read_net_table", fake)
    monkeypatch.setattr(procfs, "socket_inodes", lambda pid: {112, 212, 312, 999})
    want = ["tcp 127.0.0.1:5432", "tcp [::1]:8080", "unix @abs@name"]
    if sys.byteorder == "little":
        assert procfs.listening_sockets(1) == want
    assert read == ["sockstat", "tcp", "sockstat6", "tcp6", "unix"]
    read.clear()
    tables["sockstat6"] = "TCP6: inuse 0\n"  # no IPv6 TCP socket in the namespace
    if sys.byteorder == "little":
        assert procfs.listening_sockets(1) == [w for w in want if "::" not in w]
    assert read == ["sockstat", "tcp", "sockstat6", "unix"]
    # Once every socket it holds is found, the remaining tables are not read.
    monkeypatch.setattr(procfs, "socket_inodes", lambda pid: {112})
    read.clear()
    procfs.listening_sockets(1)
    assert read == ["sockstat", "tcp"]


def test_listening_sockets_of_an_exited_process_raise_process_gone() -> None:
    p = subprocess.Popen(["true"])
    p.wait()
    with pytest.raises(ProcessGone):
        procfs.listening_sockets(p.pid)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another user")
def test_another_users_sockets_are_a_permission_error() -> None:
    code = ("import os, sys; from ainative.platform.linux import procfs\n"
            "os.setgid(65534); os.setuid(65534)\n"
            "try:\n procfs.listening_sockets(int(sys.argv[1]))\n"
            "except PermissionError: print('EACCES')\n")
    out = subprocess.run([sys.executable, "-c", code, str(os.getpid())], capture_output=True,
                         text=True, timeout=60)
    assert out.stdout.split() == ["EACCES"], out.stderr
