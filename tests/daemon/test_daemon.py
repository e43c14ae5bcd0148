"""End to end: a real daemon, real processes, values read back from the kernel."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from daemon_helpers import (
    IDLE_BACKGROUND,
    ONNX_CHILD,
    THREADED_CHILD,
    Children,
    DaemonProc,
    cgroups_of,
    ioprio_of,
    needs_root,
    nice_of,
    policy_of,
    slice_of,
    snapshot,
    thread_ids,
)

from ainative.ipc.client import Client, DaemonError
from ainative.platform.linux.knobs import default_slice_ns

pytestmark = needs_root

SCHED_BATCH, SCHED_IDLE = 3, 5
FIRST_CPU = min(os.sched_getaffinity(0))
TEST_RULES = f"""
[classes.inference]
affinity = "{FIRST_CPU}"

[[rule]]
name = "model server by flag"
cmdline = '--serve-model'
class = "inference"
"""


def wait_until(cond: Callable[[], bool], timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


def assert_inference_applied(pid: int, d: DaemonProc) -> None:
    for tid in thread_ids(pid):
        assert nice_of(pid, tid) == -10, f"thread {tid}"
        assert ioprio_of(tid) == (2, 0), f"thread {tid}"
        assert policy_of(pid, tid) == 0
    cg = cgroups_of(pid)
    inside = [k for k, v in cg.items() if v == f"/{d.cgroup_root}.inference"]
    assert inside, f"not in ainative's inference cgroup: {cg}"
    # The cgroup's own file lists the process too.
    for base in ("/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpu,cpuacct", "/sys/fs/cgroup"):
        procs = Path(base, f"{d.cgroup_root}.inference", "cgroup.procs")
        if procs.exists():
            assert str(pid) in procs.read_text().split()
            break
    else:
        raise AssertionError("no cgroup.procs file for the inference group")


def test_onnxruntime_process_is_inference_on_every_thread_and_restored_on_stop(
        children: Children, start_daemon: Callable[..., DaemonProc]) -> None:
    child = children.python(ONNX_CHILD)
    before = snapshot(child.pid)
    assert len(before) >= 3, "the ONNX child should have several threads"
    d = start_daemon(rules_text=TEST_RULES)
    task = d.wait_task(child.pid, cls="inference")
    assert any("onnxruntime" in s for s in task["signals"]), task["signals"]
    assert_inference_applied(child.pid, d)
    for tid in thread_ids(child.pid):
        assert os.sched_getaffinity(tid) == {FIRST_CPU}
    st = d.client.status()
    assert st["task_count"] == 1 and {"pid", "name", "class", "applied"} <= set(st["tasks"][0])
    assert d.stop() == 0
    assert snapshot(child.pid) == before


def test_plain_python_and_maild_are_not_classified(
        children: Children, start_daemon: Callable[..., DaemonProc], tmp_path: Path) -> None:
    plain = children.python(THREADED_CHILD, "2")
    maild_exe = tmp_path / "maild"
    maild_exe.symlink_to(sys.executable)
    maild = children.spawn([str(maild_exe), "-c", THREADED_CHILD, "1"])
    assert Path(f"/proc/{maild.pid}/comm").read_text().strip() == "maild"
    before = (snapshot(plain.pid), snapshot(maild.pid))
    d = start_daemon()
    time.sleep(1.0)  # past the first library re-checks
    st = d.client.status()
    assert [t for t in st["tasks"] if t["pid"] in (plain.pid, maild.pid)] == []
    ex = d.client.explain(maild.pid)
    assert ex["class"] is None and ex["name"] == "maild"
    assert {s["signal"] for s in ex["signals"]} == {"registration", "env", "rule", "library",
                                                     "gpu", "listen"}
    assert (snapshot(plain.pid), snapshot(maild.pid)) == before


def test_env_opt_in_and_cmdline_rule(children: Children,
                                     start_daemon: Callable[..., DaemonProc]) -> None:
    trainer = children.python(THREADED_CHILD, "3", env={"AINATIVE_CLASS": "training"})
    server = children.python(THREADED_CHILD, "2", "--serve-model")
    d = start_daemon(rules_text=TEST_RULES)
    t = d.wait_task(trainer.pid, cls="training")
    assert any("AINATIVE_CLASS=training" in s for s in t["signals"])
    for tid in thread_ids(trainer.pid):
        assert nice_of(trainer.pid, tid) == 5
        assert policy_of(trainer.pid, tid) == SCHED_BATCH
        assert ioprio_of(tid) == (2, 4)
    s = d.wait_task(server.pid, cls="inference")
    assert any("model server by flag" in x for x in s["signals"])
    assert_inference_applied(server.pid, d)


def test_threads_created_later_get_the_class_and_are_restored(
        children: Children, start_daemon: Callable[..., DaemonProc]) -> None:
    child = children.python(THREADED_CHILD, "1", env={"AINATIVE_CLASS": "inference"})
    before_nice = {tid: nice_of(child.pid, tid) for tid in thread_ids(child.pid)}
    before_io = ioprio_of(child.pid)
    d = start_daemon()
    d.wait_task(child.pid, cls="inference")
    old = set(thread_ids(child.pid))
    assert child.stdin is not None and child.stdout is not None
    child.stdin.write("more\n")
    child.stdin.flush()
    assert child.stdout.readline().strip() == "more"
    new = set(thread_ids(child.pid)) - old
    assert len(new) == 2
    assert wait_until(lambda: all(ioprio_of(t) == (2, 0) for t in new), 3.0)
    assert all(nice_of(child.pid, t) == -10 for t in new)
    d.stop()
    for tid in thread_ids(child.pid):
        assert nice_of(child.pid, tid) == before_nice.get(tid, before_nice[child.pid])
        assert ioprio_of(tid) == before_io


def test_kill9_then_restart_undoes_everything(
        children: Children, start_daemon: Callable[..., DaemonProc]) -> None:
    child = children.python(THREADED_CHILD, "2", "kill9-target")
    before = snapshot(child.pid)
    d = start_daemon(rules_text='[[rule]]\ncmdline = "kill9-target"\nclass = "inference"\n')
    d.wait_task(child.pid, cls="inference")
    if default_slice_ns():  # the built-in inference class asks for EEVDF's shortest slice
        assert wait_until(lambda: all(slice_of(child.pid, t) == 100_000
                                      for t in thread_ids(child.pid)), 3.0)
    d.stop(signal.SIGKILL)
    assert snapshot(child.pid) != before, "kill -9 must leave the changes in place"
    # Restart in the same scope without the rule, so the recovery is all that touches
    # the child (a restart scoped elsewhere may not touch it: replay applies the scope).
    d2 = start_daemon()
    assert snapshot(child.pid) == before
    rec = [e for e in d2.log() if e["event"] == "crash_recovery"]
    assert rec and rec[0]["undone"] >= 3
    assert d2.client.status()["journal"]["in_force"] == 0


def test_restore_command_after_kill9_without_a_daemon(
        children: Children, start_daemon: Callable[..., DaemonProc]) -> None:
    child = children.python(THREADED_CHILD, "2", env={"AINATIVE_CLASS": "background"})
    inf = children.python(ONNX_CHILD)
    before = snapshot(child.pid)
    d = start_daemon()
    d.wait_task(child.pid, cls="background")
    assert all(policy_of(child.pid, t) == SCHED_IDLE for t in thread_ids(child.pid))
    d.stop(signal.SIGKILL)
    out = subprocess.run([sys.executable, "-m", "ainative", "restore", "--socket", d.sock,
                          "--state-dir", d.state_dir], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "no daemon running" in out.stdout
    assert snapshot(child.pid) == before
    assert inf.poll() is None


def test_restore_request_pauses_and_resume_reapplies(
        children: Children, start_daemon: Callable[..., DaemonProc]) -> None:
    child = children.python(THREADED_CHILD, "2", env={"AINATIVE_CLASS": "inference"})
    before = snapshot(child.pid)
    d = start_daemon()
    d.wait_task(child.pid, cls="inference")
    out = subprocess.run([sys.executable, "-m", "ainative", "restore", "--socket", d.sock],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert snapshot(child.pid) == before
    time.sleep(0.5)  # several reconcile passes: nothing is re-applied while paused
    assert snapshot(child.pid) == before
    assert d.client.status()["daemon"]["paused"] is True
    d.client.request("resume")
    d.wait_task(child.pid, cls="inference")
    assert nice_of(child.pid, child.pid) == -10


def test_manual_renice_is_respected(children: Children,
                                    start_daemon: Callable[..., DaemonProc]) -> None:
    child = children.python(THREADED_CHILD, "2", env={"AINATIVE_CLASS": "inference"})
    d = start_daemon()
    d.wait_task(child.pid, cls="inference")
    os.setpriority(os.PRIO_PROCESS, child.pid, 3)  # a person runs `renice 3 PID`
    assert wait_until(lambda: "nice" in d.client.status()["tasks"][0]["overridden"])
    assert any(e["event"] == "manual_override" for e in d.log())
    time.sleep(0.5)
    assert nice_of(child.pid, child.pid) == 3, "ainative must not re-apply over a person"
    d.stop()
    assert nice_of(child.pid, child.pid) == 3, "restore must not clobber the person's value"
    others = [t for t in thread_ids(child.pid) if t != child.pid]
    assert all(nice_of(child.pid, t) == 0 for t in others)


def test_pid_reuse_never_restores_the_wrong_process(children: Children, tmp_path: Path) -> None:
    victim = children.python(THREADED_CHILD, "0")
    os.setpriority(os.PRIO_PROCESS, victim.pid, 7)
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    start = int(Path(f"/proc/{victim.pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    # The journal of a dead daemon names this PID, but an older process with that PID:
    # the start time differs, so the PID has been reused since.
    stale = {"pid": victim.pid, "start_time": start - 1}
    recs = [{"op": "change", "seq": 1, "proc": stale, "task": stale, "knob": "nice",
             "old": 0, "new": 7}]
    (state / "journal.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    out = subprocess.run([sys.executable, "-m", "ainative", "restore", "--socket",
                          str(tmp_path / "none.sock"), "--state-dir", str(state)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "1 skipped (process gone)" in out.stdout
    assert nice_of(victim.pid, victim.pid) == 7


def _raw(sock: str, payload: bytes) -> dict[str, object]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(sock)
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        buf = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    return json.loads(buf.splitlines()[0])


@pytest.mark.parametrize("payload, words", [
    (b"not json\n", "not valid JSON"),
    (b"[1, 2]\n", "must be a JSON object"),
    (b'{"op": "format_disk"}\n', "unknown op"),
    (b'{"op": "explain", "pid": "1; rm -rf /"}\n', "positive process id"),
    (b'{"op": "explain", "pid": 4000000}\n', "no process"),
    (b'{"op": "register", "pid": 1, "class": "nosuch"}\n', "unknown class"),
    (b'{"op": "report_pool", "pid": 1, "pool": "x"}\n', "must be a JSON object"),
    (b'{"op": "status"' + b" " * (70 * 1024) + b"}\n", "larger than"),
    (b"\xff\xfe\n", "not valid JSON"),
])
def test_malformed_requests_get_errors_and_the_daemon_keeps_serving(
        start_daemon: Callable[..., DaemonProc], payload: bytes, words: str) -> None:
    d = start_daemon()
    reply = _raw(d.sock, payload)
    assert reply["ok"] is False and words in str(reply["error"])
    assert d.client.request("ping")["pong"] is True
    assert d.proc.poll() is None


def test_unprivileged_caller_may_read_but_not_touch_others(
        children: Children, start_daemon: Callable[..., DaemonProc], tmp_path: Path) -> None:
    sockdir = Path(f"/tmp/ainative-test-{os.getpid()}")
    sockdir.mkdir(mode=0o755, exist_ok=True)
    child = children.python(THREADED_CHILD, "0")
    d = start_daemon(sock=str(sockdir / "s.sock"))
    script = (
        "import os, sys, json\n"
        "from ainative.ipc.client import Client, DaemonError\n"
        "os.setgid(65534); os.setuid(65534)\n"
        f"c = Client({d.sock!r})\n"
        "out = {'status': 'tasks' in c.status()}\n"
        "for op, args in [('register', {'pid': %d, 'class': 'inference'}),\n"
        "                 ('restore', {})]:\n"
        "    try:\n"
        "        c.request(op, **args); out[op] = 'allowed'\n"
        "    except DaemonError as e:\n"
        "        out[op] = str(e)\n"
        "print(json.dumps(out))\n" % child.pid)
    try:
        r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                           timeout=30)
    finally:
        for p in sockdir.iterdir():
            p.unlink()
        sockdir.rmdir()
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["status"] is True
    assert "may only register your own processes" in out["register"]
    assert "needs root" in out["restore"]
    assert nice_of(child.pid, child.pid) == 0


def test_register_through_the_cli(children: Children,
                                  start_daemon: Callable[..., DaemonProc]) -> None:
    child = children.python(THREADED_CHILD, "1")
    d = start_daemon()
    r = subprocess.run([sys.executable, "-m", "ainative", "register", str(child.pid),
                        "--class", "training", "--socket", d.sock],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "registered as training" in r.stdout
    assert all(policy_of(child.pid, t) == SCHED_BATCH for t in thread_ids(child.pid))
    d.stop()
    assert all(policy_of(child.pid, t) == 0 for t in thread_ids(child.pid))


def test_bad_rule_file_is_fatal_at_startup(start_daemon: Callable[..., DaemonProc]) -> None:
    d = start_daemon(rules_text='\n[[rule]]\ncomm = "x"\nclass = "warp-speed"\n', wait=False)
    assert d.proc.wait(20) != 0
    err = Path(d.log_path).read_text()
    assert "rules0.toml:2" in err and "warp-speed" in err


def test_bad_rules_on_reload_keep_the_last_good_ones(
        children: Children, start_daemon: Callable[..., DaemonProc], tmp_path: Path) -> None:
    d = start_daemon(rules_text=TEST_RULES)
    (tmp_path / "rules0.toml").write_text("[[rule]]\ncmdline = '('\nclass = 'inference'\n")
    d.proc.send_signal(signal.SIGHUP)
    assert wait_until(lambda: bool(d.client.status()["daemon"]["last_reload_error"]))
    err = d.client.status()["daemon"]["last_reload_error"]
    assert "rules0.toml:1" in err
    with pytest.raises(DaemonError, match="last good rules stay in force"):
        d.client.request("reload")
    # The old rule still classifies.
    server = children.python(THREADED_CHILD, "1", "--serve-model")
    d.wait_task(server.pid, cls="inference")


def test_background_is_demoted_only_while_inference_runs(
        children: Children, start_daemon: Callable[..., DaemonProc], tmp_path: Path) -> None:
    exe = tmp_path / "stress-ng"
    exe.symlink_to(sys.executable)
    hog = children.spawn([str(exe), "-c", THREADED_CHILD, "1"])
    d = start_daemon(always_on=False, rules_text=IDLE_BACKGROUND)
    d.wait_task(hog.pid, cls="background", active=False)
    assert nice_of(hog.pid, hog.pid) == 0
    inf = children.python(ONNX_CHILD)
    d.wait_task(inf.pid, cls="inference")
    d.wait_task(hog.pid, cls="background", active=True)
    assert all(policy_of(hog.pid, t) == SCHED_IDLE for t in thread_ids(hog.pid))
    assert nice_of(hog.pid, hog.pid) == 19
    inf.kill()
    inf.wait()
    d.wait_task(hog.pid, cls="background", active=False)
    assert nice_of(hog.pid, hog.pid) == 0
    assert all(policy_of(hog.pid, t) == 0 for t in thread_ids(hog.pid))


def test_someone_elses_realtime_process_is_left_alone(
        children: Children, start_daemon: Callable[..., DaemonProc]) -> None:
    child = children.python(THREADED_CHILD, "0", env={"AINATIVE_CLASS": "inference"})
    os.sched_setscheduler(child.pid, os.SCHED_RR, os.sched_param(1))
    d = start_daemon()
    time.sleep(0.5)
    assert d.client.status()["tasks"] == []
    assert "realtime" in d.client.explain(child.pid)["excluded"]
    assert nice_of(child.pid, child.pid) == 0


def test_dry_run_decides_but_changes_nothing(
        children: Children, start_daemon: Callable[..., DaemonProc]) -> None:
    child = children.python(THREADED_CHILD, "2", env={"AINATIVE_CLASS": "inference"})
    before = snapshot(child.pid)
    d = start_daemon("--dry-run")
    t = d.wait_task(child.pid, cls="inference")
    assert t["targets"]["nice"] == "-10"
    # It says which group it would use, and creates none.
    assert t["targets"]["cgroup"] == f"/{d.cgroup_root}.inference"
    assert not list(Path("/sys/fs/cgroup").glob(f"*/{d.cgroup_root}.*"))
    time.sleep(0.3)
    assert snapshot(child.pid) == before
    assert "dry run" in d.client.explain(child.pid)["dry_run"]


def test_status_and_explain_cli_render(children: Children,
                                       start_daemon: Callable[..., DaemonProc]) -> None:
    child = children.python(ONNX_CHILD)
    d = start_daemon()
    d.wait_task(child.pid, cls="inference")
    env = {**os.environ, "COLUMNS": "200"}
    st = subprocess.run([sys.executable, "-m", "ainative", "status", "--socket", d.sock],
                        capture_output=True, text=True, env=env)
    assert st.returncode == 0, st.stderr
    assert str(child.pid) in st.stdout and "inference" in st.stdout
    js = subprocess.run([sys.executable, "-m", "ainative", "status", "--json", "--socket",
                         d.sock], capture_output=True, text=True)
    data = json.loads(js.stdout)
    assert data["tasks"][0]["pid"] == child.pid
    assert any(m["name"] for m in data["mechanisms"])
    ex = subprocess.run([sys.executable, "-m", "ainative", "explain", str(child.pid),
                         "--socket", d.sock], capture_output=True, text=True, env=env)
    assert ex.returncode == 0 and "onnxruntime" in ex.stdout and "class: inference" in ex.stdout


def test_status_without_a_daemon_is_a_clear_error(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "ainative", "status", "--socket",
                        str(tmp_path / "nobody.sock")], capture_output=True, text=True)
    assert r.returncode == 1
    assert "cannot reach the ainative daemon" in r.stderr
    assert "Traceback" not in r.stderr
    assert Client(str(tmp_path / "x.sock")).path.endswith("x.sock")


POOL_CHILD = """
import sys
from ainative.mem import PinnedPool
pool = PinnedPool("8MiB", lock="try", name="kv-cache")
bufs = [pool.alloc(300_000) for _ in range(3)]
print("ready", flush=True)
sys.stdin.readline()
"""


def test_status_shows_the_pinned_pools_processes_report(
        children: Children, start_daemon: Callable[..., DaemonProc]) -> None:
    d = start_daemon()
    child = children.python(POOL_CHILD, env={"AINATIVE_SOCKET": d.sock})  # waits for ready
    deadline = time.monotonic() + 10
    pools: list[dict[str, object]] = []
    while time.monotonic() < deadline and not pools:
        pools = [p for p in d.client.status()["pools"] if p["pid"] == child.pid]
        time.sleep(0.1)
    assert pools, "the pool never reached the daemon"
    p = pools[0]
    assert p["name"] == "kv-cache" and p["total"] == 8 << 20
    # Reports are at most once a second; the first may predate the allocations.
    st = subprocess.run([sys.executable, "-m", "ainative", "status", "--socket", d.sock],
                        capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})
    assert "pinned pools" in st.stdout and "kv-cache" in st.stdout
    child.kill()
    child.wait()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(
            q["pid"] == child.pid for q in d.client.status()["pools"]):
        time.sleep(0.1)
    assert not any(q["pid"] == child.pid for q in d.client.status()["pools"])


TWO_POOLS_CHILD = """
import sys
from ainative.mem import PinnedPool
a = PinnedPool("4MiB", lock="try", name="inputs")
b = PinnedPool("8MiB", lock="try", name="outputs")
print("ready", flush=True)
sys.stdin.readline()
b.close()
print("closed", flush=True)
sys.stdin.readline()
"""


def test_several_pools_per_process_and_a_closed_one_goes(
        children: Children, start_daemon: Callable[..., DaemonProc]) -> None:
    d = start_daemon()
    child = children.python(TWO_POOLS_CHILD, env={"AINATIVE_SOCKET": d.sock})

    def names() -> set[str]:
        return {str(p["name"]) for p in d.client.status()["pools"] if p["pid"] == child.pid}

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and names() != {"inputs", "outputs"}:
        time.sleep(0.1)
    assert names() == {"inputs", "outputs"}
    assert child.stdin is not None and child.stdout is not None
    child.stdin.write("\n")
    child.stdin.flush()
    assert child.stdout.readline().strip() == "closed"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and names() != {"inputs"}:
        time.sleep(0.1)
    assert names() == {"inputs"}
