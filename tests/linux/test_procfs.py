"""The /proc reader against real processes this test starts, cross-checked with psutil."""

from __future__ import annotations

import os
import subprocess
import sys
import time

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
