"""The stress command end to end: Ctrl-C still gives the summary; --compare writes a
report holding the scenarios that ran; contention hogs really run and are stopped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from ainative.stress.contention import ContentionError, Hogs, parse_scenario

AINATIVE = [sys.executable, "-m", "ainative"]


def test_sigint_still_writes_the_summary(tmp_path: Path) -> None:
    p = subprocess.Popen([*AINATIVE, "stress", "--model", "mlp-small", "--rate", "200",
                          "--duration", "60s", "--json", "--report", str(tmp_path)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(5)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    rep = json.loads(out)
    run = rep["scenarios"]["run"]
    assert run["interrupted"] is True
    assert 0 < run["completed"] < 200 * 60
    assert run["latency"]["p99_ms"] > 0
    assert json.loads((tmp_path / "report.json").read_text())["interrupted"] is True


def test_human_summary(tmp_path: Path) -> None:
    r = subprocess.run([*AINATIVE, "stress", "--model", "mlp-small", "--rate", "300",
                        "--duration", "2s", "--progress-interval", "1"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    for field in ("throughput", "late", "latency ms", "peak RSS", "run-queue wait"):
        assert field in r.stdout
    assert "req/s" in r.stderr  # plain progress lines when not on a terminal


ROOT = pytest.mark.skipif(os.geteuid() != 0,
                          reason="the chrt, cgroup and ainative scenarios need root")


def _stress_cgroups() -> set[Path]:
    return {g for base in Path("/sys/fs/cgroup").glob("*") for g in base.glob("ainative-stress-*")}


def _no_stress_cgroups_left(before: set[Path]) -> None:
    # Compared with what existed before the run: another run on the machine may own some.
    assert _stress_cgroups() - before == set()


@ROOT
def test_short_compare_writes_report_with_the_scenarios_that_ran(tmp_path: Path) -> None:
    before = _stress_cgroups()
    r = subprocess.run([*AINATIVE, "stress", "--compare", "--model", "mlp-small", "--rate",
                        "300", "--duration", "2s", "--scenarios",
                        "alone,contended,nice,cgroup", "--contention", "cpu:2", "--rounds", "1",
                        "--report", str(tmp_path)],
                       capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr
    rep = json.loads((tmp_path / "report.json").read_text())
    assert list(rep["scenarios"]) == ["alone", "contended", "nice", "cgroup"]
    for name, res in rep["scenarios"].items():
        assert "error" not in res, (name, res)
        assert res["scenario"] == name
        assert 0 < res["completed"] <= 600 and res["latency"]["p99_ms"] > 0
        # Measured by the load client; the resource figures are the model server's.
        assert res["pid"] != res["client"]["pid"]
        assert res["server"]["served"] == res["completed"]
    # nice -n -10 starts the whole service under it: server and client both.
    nice = rep["scenarios"]["nice"]
    assert nice["sched"]["nice"] == nice["client"]["sched"]["nice"] == -10
    assert rep["scenarios"]["alone"]["sched"]["nice"] == 0
    # The hogs really ran, during the measurement, in the scenarios that have them.
    assert "contention_cpu_s" not in rep["scenarios"]["alone"]
    for name in ("contended", "nice", "cgroup"):
        assert rep["scenarios"][name]["contention_cpu_s"] > 0.5
        assert rep["scenarios"][name]["contention_check"]["processes"] >= 3
    assert rep["scenarios"]["cgroup"]["hog_cgroup"]["knob"] in ("cpu.shares=2", "cpu.weight=1")
    md = (tmp_path / "report.md").read_text()
    assert all(f"| {n} |" in md for n in rep["scenarios"])
    assert "| ainative |" not in md
    png = (tmp_path / "latency.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert "p99 ms" in r.stdout and "cgroup" in r.stdout
    _no_stress_cgroups_left(before)


@ROOT
def test_compare_with_ainative_lets_the_daemon_classify_on_its_own(tmp_path: Path) -> None:
    before = _stress_cgroups()
    r = subprocess.run([*AINATIVE, "stress", "--compare", "--model", "mlp-small", "--rate",
                        "300", "--duration", "4s", "--scenarios", "ainative",
                        "--contention", "cpu:2", "--rounds", "2", "--json", "--report",
                        str(tmp_path)],
                       capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    res = rep["scenarios"]["ainative"]
    assert "error" not in res, res
    # Two rounds of 2 s, merged: both rounds' requests are in the merged figures.
    assert rep["rounds"] == 2 and len(res["rounds"]) == 2
    assert res["completed"] == sum(x["completed"] for x in res["rounds"]) > 2 * 300
    assert "p99 ms by round" in (tmp_path / "report.md").read_text()
    a = res["ainative"]
    # The daemon found the model server by itself (no rule, no registration, no
    # environment variable names it): by its runtime and its listening socket.
    assert a["workload"]["class"] == "inference"
    assert any("listen" in s for s in a["workload"]["signals"]), a["workload"]
    assert a["client_class"] is None  # the load client is nothing it manages
    assert a["hogs_demoted"] == a["hogs"] >= 3  # stress-ng and its two workers
    # Protected by demoting the hogs: the CPU priority of the server and of its client is
    # left as it was (raising the server's alone made the pair's tail worse).
    assert res["sched"]["nice"] == 0 and res["sched"]["policy"] == "other"
    assert res["client"]["sched"]["nice"] == 0 and res["client"]["pid"] != res["pid"]
    assert res["completed"] > 0
    _no_stress_cgroups_left(before)


def test_a_failing_scenario_is_reported_not_fatal(tmp_path: Path) -> None:
    from ainative.stress.compare import run_compare
    from ainative.stress.config import WorkloadConfig
    from ainative.stress.report import errors, markdown

    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    cfg = WorkloadConfig(str(bad), "bad.onnx", rate=100, duration=1, warmup_s=0.1)
    rep = run_compare(cfg, [parse_scenario("cpu:1")], str(tmp_path / "work"),
                      ("alone", "contended"))
    assert list(rep["scenarios"]) == ["alone", "contended"]
    for name, res in rep["scenarios"].items():
        assert "onnxruntime cannot load it" in res["error"], (name, res)
    assert len(errors(rep)) == 2
    md = markdown(rep)
    assert "| alone | error |" in md and "onnxruntime cannot load it" in md


def test_sigint_during_compare_still_writes_the_report(tmp_path: Path) -> None:
    p = subprocess.Popen([*AINATIVE, "stress", "--compare", "--model", "mlp-small", "--rate",
                          "200", "--duration", "20s", "--scenarios", "alone,contended",
                          "--rounds", "1", "--report", str(tmp_path)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(8)  # well into the first scenario's measurement
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=90)
    assert p.returncode == 0, err
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["interrupted"] is True
    assert list(rep["scenarios"]) == ["alone"]  # the scenarios after it never started
    alone = rep["scenarios"]["alone"]
    assert alone["interrupted"] is True and 0 < alone["completed"] < 200 * 20
    assert "Interrupted" in (tmp_path / "report.md").read_text()
    assert "alone (interrupted)" in out


def test_hogs_run_and_stop() -> None:
    with Hogs([parse_scenario("cpu:2")]) as hogs:
        pids = hogs.pids()
        assert len(pids) >= 2
        assert hogs.cpu_seconds() > 0.1
    time.sleep(0.2)
    assert not [p for p in pids if psutil.pid_exists(p)
                and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]


def test_internal_hogs_are_named_for_the_rules() -> None:
    with Hogs([parse_scenario("cpu:1")], use_stress_ng=False) as hogs:
        names = {psutil.Process(p).name() for p in hogs.pids()}
        assert names == {"ainative-hog"}


def test_bad_contention_specs() -> None:
    for spec in ("gpu:1", "cpu:x", "cpu:0", "mem:lots"):
        with pytest.raises(ContentionError):
            parse_scenario(spec)
    assert parse_scenario("mem:1G").amount == 1 << 30


def test_pool_staging_reports_the_pools_stats() -> None:
    r = subprocess.run([*AINATIVE, "stress", "--model", "mlp-small", "--rate", "200",
                        "--duration", "1s", "--warmup", "0.2s", "--pool", "8M", "--json"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    run = json.loads(r.stdout)["scenarios"]["run"]
    pool = run["pool"]
    # One staging buffer per request (warm-up included), every one given back.
    assert pool["alloc_count"] >= run["completed"] > 0
    assert pool["alloc_count"] == pool["free_count"] and pool["failures"] == 0
    assert pool["total"] == 8 << 20 and "lock" in pool


def test_bad_sizes_and_durations_are_usage_errors() -> None:
    for args, expect in ((["--pool", "lots"], "--pool"), (["--duration", "soon"], "30s, 10m"),
                         (["--compare", "--scenarios", "alone,bogus"], "bogus")):
        r = subprocess.run([*AINATIVE, "stress", *args], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 2 and expect in r.stderr and "Traceback" not in r.stderr


def test_sigint_works_when_started_with_sigint_ignored(tmp_path: Path) -> None:
    # What a shell does to a background job (`ainative stress ... &`): kill -INT must still
    # end the run with its summary, and the summary must not race the load workers.
    p = subprocess.Popen([*AINATIVE, "stress", "--model", "mlp-small", "--rate", "200",
                          "--duration", "60s", "--json"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    time.sleep(5)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    run = json.loads(out)["scenarios"]["run"]
    assert run["interrupted"] is True and 0 < run["completed"] < 200 * 60


@ROOT
def test_demo_finds_the_model_server_and_restores_it() -> None:
    # `ainative demo` runs the stress pair at a low rate under a scoped daemon: the server
    # is found on its own, its I/O priority raised while it serves, and given it back on stop.
    r = subprocess.run([*AINATIVE, "demo", "--seconds", "1"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "launched an ONNX Runtime model server" in r.stdout
    from ainative.platform.linux.knobs import default_slice_ns

    # The built-in inference class's 0.1 ms slice, where the kernel has custom slices.
    tail = ", slice 0.1ms" if default_slice_ns() else ""
    assert f"every server thread while managed: ['nice 0, io be:0{tail}']" in r.stdout
    assert "slice 0.1ms" not in r.stdout.split("daemon stopped")[1]
    assert "(restored)" in r.stdout and "NOT restored" not in r.stdout
