"""`ainative pool limits` tells the truth about this process's limits, and `ainative pool
bench` parts measure what they say."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys

import pytest
from click.testing import CliRunner

from ainative.cli import main
from ainative.mem import PinnedPool
from ainative.mem.arena import thp_mode
from ainative.mem.bench import overhead, page_faults
from ainative.mem.limits import has_cap_ipc_lock


def test_limits_json_matches_the_process() -> None:
    r = CliRunner().invoke(main, ["pool", "limits", "--size", "64MiB", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    soft = resource.getrlimit(resource.RLIMIT_MEMLOCK)[0]
    assert out["rlimit_memlock_soft"] == (None if soft == resource.RLIM_INFINITY else soft)
    assert out["cap_ipc_lock"] == has_cap_ipc_lock()
    assert out["size"] == 64 << 20
    assert out["locked"] == (has_cap_ipc_lock() or soft == resource.RLIM_INFINITY
                             or soft >= 64 << 20)
    assert out["transparent_hugepages"] == thp_mode()
    assert out["hugepages"] == (thp_mode() in ("always", "madvise"))
    if not os.path.exists("/dev/nvidiactl"):
        assert out["cuda_registered"] is False and out["cuda_detail"].startswith("no CUDA")


def test_limits_create_agrees_with_the_forecast() -> None:
    r = CliRunner().invoke(main, ["pool", "limits", "--size", "8MiB", "--create", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    made = out["created"]
    assert made["total"] == 8 << 20
    assert made["locked"] == out["locked"] and made["hugepages"] == out["hugepages"]
    assert made["cuda_registered"] == out["cuda_registered"]


def test_limits_human_and_bad_sizes() -> None:
    r = CliRunner().invoke(main, ["pool", "limits"])
    assert r.exit_code == 0 and "RLIMIT_MEMLOCK" in r.output and "a 256 MiB pool" in r.output
    for args in (["limits", "--size", "lots"], ["limits", "--size", "0"],
                 ["bench", "--capacity", "-5"], ["bench", "--capacity", "8MiB"]):
        bad = CliRunner().invoke(main, ["pool", *args])
        assert bad.exit_code == 1, (args, bad.output)
        # A ClickException: a one-line message and exit 1, never an uncaught exception.
        assert "Error:" in bad.output and isinstance(bad.exception, SystemExit), bad.output
    assert "at least 64 MiB" in CliRunner().invoke(
        main, ["pool", "bench", "--capacity", "8MiB"]).output


UNPRIV = """
import json, os, resource
from click.testing import CliRunner
from ainative.cli import main
import ainative.mem.forecast, ainative.mem.cuda
ainative.mem.cuda.find_runtime()
os.setgid(65534); os.setuid(65534)
resource.setrlimit(resource.RLIMIT_MEMLOCK, (1 << 20, 1 << 20))
r = CliRunner().invoke(main, ["pool", "limits", "--size", "16MiB"])
print(json.dumps({"code": r.exit_code, "out": r.output}))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another user")
def test_limits_for_a_process_that_may_not_lock_names_the_fix() -> None:
    r = subprocess.run([sys.executable, "-c", UNPRIV], capture_output=True, text=True,
                       timeout=60, cwd="/")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["code"] == 0
    out = res["out"]
    assert "CAP_IPC_LOCK     no" in out
    assert "locked         no" in out and "ulimit -l" in out and "1024 KiB" in out


def test_bench_parts_on_a_real_pool() -> None:
    with PinnedPool("64MiB", lock="try", report_to_daemon=False) as pool:
        pf = page_faults(pool, 4 << 20, 3)
        assert pf["rounds"] == 3 and pf["bytes"] == 4 << 20
        if pool.locked:
            assert pf["pool"] == 0
        o = overhead(pool)
        assert o["buffers"] > 10 and 0 <= o["overhead_pct"] < 25
        assert o["reserved"] >= o["requested"] and o["pow2_reserved"] >= o["requested"]
        assert o["pool_filled_pct"] > 50
        s = pool.stats()
        assert s["blocks_in_use"] == 0 and s["largest_free_extent"] == 64 << 20
        assert s["failures"] >= 1  # the mix fills the pool until an allocation fails
