"""Runs tests/windows in a real Windows CPython under Wine (scripts/windows-tests: it
installs Wine, the CPython and the Windows wheels on first use and caches them in
.wincache/), fails when they fail, and checks from Linux the two effects Wine really
applies: the affinity the Windows backend set on a Windows process (its Linux threads'
Cpus_allowed_list) and the pool's VirtualLock (VmLck). Everything else under Wine is an
API contract (the call succeeds and the value reads back); WINDOWS.md says which.

Skips with the script's one-line reason where Wine or the Windows Python cannot be set
up (not root and no wine installed, no network for the first download, not x86_64).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

CHECKOUT = Path(__file__).resolve().parents[2]
SCRIPT = CHECKOUT / "scripts" / "windows-tests"


@pytest.fixture(scope="module")
def wine_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    side = tmp_path_factory.mktemp("linux-side")
    env = dict(os.environ, AINATIVE_LINUX_SIDE_DIR=str(side))
    proc = subprocess.run([str(SCRIPT), "-q", "-rs", "tests/windows"], cwd=CHECKOUT, env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=1500)
    out = proc.stdout + proc.stderr
    if proc.returncode == 3:
        pytest.skip(next((line for line in out.splitlines() if "skipped:" in line),
                         out.strip()[-300:]))
    log = side / "log.jsonl"
    answers = [json.loads(line) for line in log.read_text().splitlines()] \
        if log.exists() else []
    return {"rc": proc.returncode, "out": out, "answers": answers}


def _answer(run: dict[str, Any], checkpoint: str) -> dict[str, Any]:
    got = [a for a in run["answers"] if a.get("checkpoint") == checkpoint]
    assert len(got) >= 1, f"no Linux-side reading for {checkpoint!r}: {run['answers']}"
    assert "error" not in got[-1], got[-1]
    return dict(got[-1])


@pytest.mark.timeout(1600)
def test_the_windows_tests_pass_under_wine(wine_run: dict[str, Any]) -> None:
    assert wine_run["rc"] == 0, wine_run["out"][-6000:]
    assert " passed" in wine_run["out"], wine_run["out"][-3000:]
    # No skip but the one Wine's own service manager forces in a fresh prefix (the test
    # says why; the service's logic is checked through the fake boundary here).
    summary = wine_run["out"].split("short test summary")[-1]
    skips = [line for line in summary.splitlines() if line.startswith("SKIPPED")]
    assert all("Wine's service manager did not keep the service" in line
               for line in skips), wine_run["out"][-3000:]


@pytest.mark.timeout(1600)
def test_the_affinity_set_on_a_windows_process_is_in_force_on_linux(
        wine_run: dict[str, Any]) -> None:
    before = _answer(wine_run, "before")
    applied = _answer(wine_run, "applied")
    restored = _answer(wine_run, "restored")
    assert before["pid"] == applied["pid"] == restored["pid"]
    # The class's affinity "0" reached the process's Linux threads...
    assert applied["main_cpus"] == "0"
    assert applied["task_cpus"].count("0") >= 2, applied
    # ...and the restore gave back exactly what was there before.
    assert restored["main_cpus"] == before["main_cpus"]
    if before["main_cpus"] != "0":
        assert restored["task_cpus"].count("0") < applied["task_cpus"].count("0")


@pytest.mark.timeout(1600)
def test_the_windows_pool_is_locked_memory_on_linux(wine_run: dict[str, Any]) -> None:
    locked = _answer(wine_run, "pool_locked")
    closed = _answer(wine_run, "pool_closed")
    want = locked["expect"]["vmlck_kib_at_least"]
    assert locked["vmlck_kib"] >= want, locked
    assert closed["vmlck_kib"] < want, closed
