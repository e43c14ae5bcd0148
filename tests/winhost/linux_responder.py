"""The Linux side of tests/windows: answers each request a Windows test writes into DIR
(winhelp.linux_side) with what /proc says about the Wine process whose command line
holds the request's marker: its main thread's Cpus_allowed_list, every task's, and VmLck.
Each answer is also appended to DIR/log.jsonl for tests/winhost to check. Runs until
DIR/stop exists. Started by scripts/windows-tests.

Usage: python tests/winhost/linux_responder.py DIR
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any


def _status(path: str) -> dict[str, str]:
    out: dict[str, str] = {}
    with open(path) as fh:
        for line in fh:
            key, _, value = line.partition(":")
            out[key] = value.strip()
    return out


def find(marker: str) -> list[int]:
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as fh:
                if marker.encode() in fh.read():
                    pids.append(int(name))
        except OSError:
            continue
    return sorted(pids)


def answer(req: dict[str, Any]) -> dict[str, Any]:
    pids = find(str(req["marker"]))
    out: dict[str, Any] = {"checkpoint": req.get("checkpoint"), "marker": req["marker"],
                           "expect": req.get("expect"), "pids": pids}
    if len(pids) != 1:
        out["error"] = f"{len(pids)} Linux processes hold the marker"
        return out
    pid = pids[0]
    st = _status(f"/proc/{pid}/status")
    out["pid"] = pid
    out["main_cpus"] = st.get("Cpus_allowed_list")
    out["vmlck_kib"] = int(st.get("VmLck", "0 kB").split()[0])
    tasks = []
    for tid in sorted(os.listdir(f"/proc/{pid}/task"), key=int):
        try:
            tasks.append(_status(f"/proc/{pid}/task/{tid}/status").get("Cpus_allowed_list"))
        except OSError:
            continue
    out["task_cpus"] = tasks
    return out


def main(d: Path) -> None:
    log = d / "log.jsonl"
    while not (d / "stop").exists():
        for req_path in sorted(d.glob("*.req.json")):
            try:
                req = json.loads(req_path.read_text())
            except ValueError:
                continue
            rep = answer(req)
            with open(log, "a") as fh:
                fh.write(json.dumps(rep) + "\n")
            tmp = req_path.with_name(req_path.name.replace(".req.json", ".rep.tmp"))
            tmp.write_text(json.dumps(rep))
            os.replace(tmp, req_path.with_name(req_path.name.replace(".req.", ".rep.")))
            req_path.unlink()
        time.sleep(0.05)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
