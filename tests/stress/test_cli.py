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


@pytest.mark.skipif(os.geteuid() != 0, reason="the ainative and chrt scenarios need root")
def test_short_compare_writes_report_with_scenarios(tmp_path: Path) -> None:
    r = subprocess.run([*AINATIVE, "stress", "--compare", "--model", "mlp-small", "--rate",
                        "300", "--duration", "2s", "--scenarios", "alone,contended,ainative",
                        "--contention", "cpu:2", "--report", str(tmp_path)],
                       capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr
    rep = json.loads((tmp_path / "report.json").read_text())
    assert list(rep["scenarios"]) == ["alone", "contended", "ainative"]
    for name, res in rep["scenarios"].items():
        assert "error" not in res, (name, res)
        assert res["completed"] > 0
    assert rep["scenarios"]["contended"]["contention_cpu_s"] > 1.0  # the hogs really ran
    a = rep["scenarios"]["ainative"]["ainative"]
    assert a["workload"]["class"] == "inference" and a["hogs_demoted"] == a["hogs"] > 0
    md = (tmp_path / "report.md").read_text()
    assert all(f"| {n} |" in md for n in rep["scenarios"])
    png = (tmp_path / "latency.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert "p99 ms" in r.stdout
    # Nothing left behind: no ainative cgroup, no hog.
    for base in Path("/sys/fs/cgroup").glob("*"):
        assert not list(base.glob("ainative-stress-*"))


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
