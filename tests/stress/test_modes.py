"""The stress modes for the seed's table rows: the closed loop (most requests/s), the frame
loop (frames on time, deadline misses), and each compared alone / contended / ainative /
nice / chrt in one run, with real model servers, real ONNX Runtime and real hogs.

Asserted: structure and internal consistency (counts that add up, figures derived from
them), never how fast anything ran; the machine is shared."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ainative.stress import modes
from ainative.stress.config import WorkloadConfig
from ainative.stress.metrics import new_histogram, summarise
from ainative.stress.rounds import encode_histogram, merge_rounds

AINATIVE = [sys.executable, "-m", "ainative"]
FIVE = ("alone", "contended", "ainative", "nice", "chrt")
ROOT = pytest.mark.skipif(os.geteuid() != 0,
                          reason="the chrt and ainative scenarios need root")


def cfg(mode: str, rate: float = 100.0, **kw: Any) -> WorkloadConfig:
    return WorkloadConfig("unused.onnx", "test", rate=rate, mode=mode, **kw)


def matmul() -> None:
    a = np.ones((64, 64), np.float32)
    a @ a


def test_closed_loop_counts_what_it_started_and_finished() -> None:
    loop = modes.make_loop(cfg("throughput", workers=3), 3, 0.5, matmul)
    assert isinstance(loop, modes.ClosedLoop)
    res = loop.run()
    assert res.completed > 0 and res.errors == 0
    assert res.histogram.get_total_count() == res.completed
    # Started = finished + still in flight at the end (at most one per worker).
    assert res.completed <= res.scheduled <= res.completed + 3
    assert res.late == res.dropped == res.missed == 0


def test_closed_loop_counts_failures() -> None:
    calls = [0]
    lock = threading.Lock()

    def flaky() -> None:
        with lock:
            calls[0] += 1
            n = calls[0]
        if n % 3 == 0:
            raise RuntimeError("model failed")

    res = modes.make_loop(cfg("throughput"), 2, 0.3, flaky).run()
    assert res.errors > 0 and res.first_error == "RuntimeError: model failed"
    assert res.completed + res.errors <= res.scheduled <= res.completed + res.errors + 2


def test_frame_loop_counts_late_and_skipped_frames() -> None:
    rate = 50.0
    period = 1.0 / rate
    calls = [0]

    def frame() -> None:
        calls[0] += 1
        if calls[0] in (5, 12):  # three periods: this frame is late, the next skipped
            time.sleep(3 * period)

    loop = modes.make_loop(cfg("frames", rate=rate), 4, 0.6, frame)
    assert loop.cfg.workers == 1  # one frame at a time, whatever was asked
    res = loop.run()
    assert res.missed >= 2 and res.dropped >= 2
    assert res.completed + res.dropped <= res.scheduled <= res.completed + res.dropped + 1
    out = {"config": {"mode": "frames", "rate": rate, "batch": 1},
           "completed": res.completed, "dropped": res.dropped, "late_frames": res.missed,
           "scheduled": res.scheduled, "elapsed_s": res.elapsed_s}
    f = modes.figures(out)
    assert f["frames_on_time"] + f["late_frames"] == res.completed
    assert f["deadline_misses"] == f["late_frames"] + f["skipped_frames"] >= 4
    assert f["achieved_fps"] == round(f["frames_on_time"] * rate / res.scheduled, 2)
    assert f["achieved_fps"] < rate


def test_workers_per_mode() -> None:
    cpus = len(os.sched_getaffinity(0))
    assert modes.workers(cfg("throughput"), 0.01) == cpus
    assert modes.workers(cfg("throughput", threads=cpus), 0.01) == 1
    assert modes.workers(cfg("throughput", workers=5), 0.01) == 5
    assert modes.workers(cfg("frames", workers=5), 0.01) == 1
    with pytest.raises(ValueError, match="unknown mode"):
        modes.make_loop(cfg("bogus"), 1, 1.0, matmul)


def frame_round(completed: int, late: int, skipped: int) -> dict[str, Any]:
    h = new_histogram()
    for _ in range(completed):
        h.record_value(5000)
    r = {"config": {"mode": "frames", "rate": 60.0, "batch": 1},
         "scheduled": completed + skipped, "completed": completed, "late": 0,
         "dropped": skipped, "errors": 0, "elapsed_s": (completed + skipped) / 60.0,
         "throughput_per_s": 0.0, "latency": summarise(h), "histogram": encode_histogram(h),
         "late_frames": late, "resources": {"run_queue_wait_s": 0.0}}
    r.update(modes.figures(r))
    return r


def test_frame_rounds_merge_by_their_counts() -> None:
    m = merge_rounds([frame_round(60, 0, 0), frame_round(50, 5, 10)])
    assert m["late_frames"] == 5 and m["skipped_frames"] == 10
    assert m["deadline_misses"] == 15 and m["frames_on_time"] == 105
    assert m["achieved_fps"] == pytest.approx(105 * 60.0 / 120)


def check_common(rep: dict[str, Any], tmp_path: Path) -> None:
    from ainative.stress.report import write_report

    assert tuple(rep["scenarios"]) == FIVE
    for name, r in rep["scenarios"].items():
        assert "error" not in r, (name, r.get("error"))
        assert r["scenario"] == name and r["mode"] == rep["config"]["mode"]
        assert r["completed"] > 0
        if rep["rounds"] == 1:  # (merged rounds keep the last round's server figures)
            assert r["server"]["served"] >= r["completed"]
        ml = r["machine_load"]
        for key in ("window_s", "busy_cpu_s", "own_cpu_s", "hog_cpu_s", "other_cpu_s",
                    "steal_cpu_s", "cpus", "top"):
            assert key in ml, (name, key)
        assert ml["own_cpu_s"] > 0 and ml["window_s"] > 0
        assert (ml["hog_cpu_s"] > 0) == (name != "alone")
    alone = rep["scenarios"]["alone"]["machine_load"]
    # The machine was watched before each round of "alone" started anything.
    assert all(x["before"]["window_s"] > 0 for x in alone.get("rounds", [alone]))
    assert rep["scenarios"]["chrt"]["sched"]["policy"] == "fifo"
    assert rep["scenarios"]["ainative"]["ainative"]["workload"]["class"] == "inference"
    assert isinstance(rep["warnings"], list)
    paths = write_report(rep, str(tmp_path / "report"))
    md = Path(paths["markdown"]).read_text()
    assert all(f"| {n} |" in md for n in FIVE) and "p99.9 ms (n)" in md
    # A p99.9 from fewer than 1,000 samples is marked, and only then.
    few = [n for n, r in rep["scenarios"].items() if r["completed"] < 1000]
    assert ("p99.9 from fewer than 1,000 samples" in md) == bool(few)
    for line in md.splitlines():
        if any(line.startswith(f"| {n} |") for n in FIVE):
            assert ("†" in line) == any(line.startswith(f"| {n} |") for n in few), line
    assert Path(paths["png"]).read_bytes()[:4] == b"\x89PNG"


@ROOT
def test_throughput_mode_compares_five_scenarios(tmp_path: Path) -> None:
    from ainative.stress import models
    from ainative.stress.compare import run_compare
    from ainative.stress.contention import parse_scenario

    path = models.materialise("mlp-small", str(tmp_path))
    wcfg = WorkloadConfig(path, "mlp-small", duration=1.0, batch=16, warmup_s=0.2,
                          load_warmup_s=0.3, mode="throughput")
    rep = run_compare(wcfg, [parse_scenario("cpu:2")], str(tmp_path / "work"), FIVE)
    check_common(rep, tmp_path)
    cpus = len(os.sched_getaffinity(0))
    for name, r in rep["scenarios"].items():
        assert r["workers"] == cpus and r["late"] == r["dropped"] == 0
        assert r["samples_per_s"] == round(r["completed"] * 16 / r["elapsed_s"], 1), name
        assert r["completed"] <= r["scheduled"] <= r["completed"] + cpus
    v = rep["verdict"]
    assert set(v) == {f"{n}_vs_alone_req_per_s" for n in FIVE[1:]}
    alone = rep["scenarios"]["alone"]["throughput_per_s"]
    assert v["chrt_vs_alone_req_per_s"] == round(
        rep["scenarios"]["chrt"]["throughput_per_s"] / alone, 2)


@ROOT
def test_frames_mode_compares_five_scenarios_in_rounds(tmp_path: Path) -> None:
    from ainative.stress import models
    from ainative.stress.compare import run_compare
    from ainative.stress.contention import parse_scenario

    path = models.materialise("mlp-small", str(tmp_path))
    wcfg = WorkloadConfig(path, "mlp-small", rate=60.0, duration=2.0, batch=8,
                          warmup_s=0.2, load_warmup_s=0.3, mode="frames")
    rep = run_compare(wcfg, [parse_scenario("cpu:2")], str(tmp_path / "work"), FIVE,
                      rounds=2)
    check_common(rep, tmp_path)
    for r in rep["scenarios"].values():
        assert r["workers"] == 1 and r["target_fps"] == 60.0
        assert r["frames_on_time"] + r["late_frames"] == r["completed"]
        assert r["deadline_misses"] == r["late_frames"] + r["skipped_frames"]
        assert r["skipped_frames"] == r["dropped"]
        assert 0 <= r["achieved_fps"] <= 60.0
        # Two rounds merged: their counts summed, each round's window kept.
        assert len(r["rounds"]) == 2 and len(r["machine_load"]["rounds"]) == 2
        assert r["machine_load"]["window_s"] == pytest.approx(
            sum(x["window_s"] for x in r["machine_load"]["rounds"]), abs=0.01)
    v = rep["verdict"]
    assert set(v["deadline_misses"]) == set(FIVE)
    assert "ainative_vs_alone_fps" in v


def test_frames_from_the_command_line(tmp_path: Path) -> None:
    r = subprocess.run([*AINATIVE, "stress", "--model", "mlp-small", "--mode", "frames",
                        "--fps", "30", "--duration", "1s", "--warmup", "0.2s"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "fps on time of 30" in r.stdout and "deadline misses" in r.stdout
    assert "p99.9" in r.stdout and "† (of " in r.stdout  # 30 frames: no p99.9 to speak of


def test_mode_options_are_checked() -> None:
    for args, expect in ((["--fps", "30"], "only with --mode frames"),
                         (["--mode", "frames", "--workers", "2"], "one frame at a time"),
                         (["--mode", "sideways"], "sideways")):
        r = subprocess.run([*AINATIVE, "stress", *args], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 2 and expect in r.stderr, (args, r.stderr)
        assert "Traceback" not in r.stderr


def test_attention_large_is_built_in(tmp_path: Path) -> None:
    from ainative.stress import models

    sess = models.open_session(models.materialise("attention-large", str(tmp_path)), 1,
                               "cpu")
    x = np.zeros((1, 1024, 768), np.float32)
    (y,) = sess.run(None, {"x": x})
    assert y.shape == (1, 1024, 768)


def test_report_gives_sample_counts_caveats_and_warnings(tmp_path: Path) -> None:
    from ainative.stress.report import markdown, table_rows, write_report

    few, many = frame_round(50, 5, 10), frame_round(1200, 0, 0)
    rep = {"config": {**few["config"], "model_name": "m", "threads": 1, "duration": 2.0},
           "contention": ["cpu:4"], "machine": {"cpus": 2, "kernel": "6.1"}, "rounds": 1,
           "scenarios": {"alone": many, "contended": few},
           "warnings": ["baseline disturbed: during 'alone' other processes used 0.50 CPUs"]}
    rows = dict((r[0], r) for r in table_rows(rep))
    # p99 (n) and p99.9 (n): 1,200 frames -> 12 and 1; 50 frames -> 0.5 -> at least 1.
    assert rows["alone"][9] == f"{many['latency']['p99_ms']:.2f} (12)"
    assert rows["alone"][10] == f"{many['latency']['p99_9_ms']:.2f} (1)"
    assert rows["contended"][10].endswith("† (1)")
    assert rows["contended"][3] == f"{few['achieved_fps'] / many['achieved_fps']:.2f}"
    md = markdown(rep)
    assert "- warning: baseline disturbed: during 'alone'" in md
    assert "p99.9 from fewer than 1,000 samples" in md
    png = Path(write_report(rep, str(tmp_path))["png"]).read_bytes()
    assert png[:4] == b"\x89PNG"
