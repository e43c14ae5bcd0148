"""`ainative pool limits` tells the truth about this process's limits."""

from __future__ import annotations

import json
import resource

from click.testing import CliRunner

from ainative.cli import main
from ainative.mem.limits import has_cap_ipc_lock


def test_limits_json_matches_the_process() -> None:
    r = CliRunner().invoke(main, ["pool", "limits", "--size", "64MiB", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    soft = resource.getrlimit(resource.RLIMIT_MEMLOCK)[0]
    assert out["rlimit_memlock_soft"] == (None if soft == resource.RLIM_INFINITY else soft)
    assert out["cap_ipc_lock"] == has_cap_ipc_lock()
    assert out["size"] == 64 << 20
    assert out["would_lock"] == (has_cap_ipc_lock() or soft == resource.RLIM_INFINITY
                                 or soft >= 64 << 20)


def test_limits_human_and_bad_size() -> None:
    r = CliRunner().invoke(main, ["pool", "limits"])
    assert r.exit_code == 0 and "RLIMIT_MEMLOCK" in r.output and "a 256 MiB pool" in r.output
    bad = CliRunner().invoke(main, ["pool", "limits", "--size", "lots"])
    assert bad.exit_code == 1 and "bad --size" in bad.output and "Traceback" not in bad.output
