"""The leader of one ``--compare`` scenario: a process that starts the hogs and the
workload (the model server and its load client, runner.py) as its own descendants, so a
daemon scoped to it (``--scope-descendants``) sees all of them, and nothing else of the
caller's.

It talks to the caller over stdin/stdout, one line each way at a time:

    caller -> leader   start            (the daemon, if any, now watches the leader)
    leader -> caller   ready {json}     (hogs verified, server and client warmed up:
                                         {"workload": server pid, "client": client pid,
                                          "hogs": [pids]})
    caller -> leader   go               (anything else, or EOF: give up cleanly)

and writes the scenario's result JSON to --result. It imports no ONNX Runtime itself, so
it can never be mistaken for the model server. SIGINT is passed on to the load client,
which ends its run early and still reports; SIGTERM stops everything.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from types import FrameType
from typing import Any

from ainative.stress import machine_load
from ainative.stress.config import WorkloadConfig
from ainative.stress.contention import ContentionError, Hogs, parse_scenario
from ainative.stress.remedies import HogCgroup, RemedyError, prefix
from ainative.stress.results import write_result
from ainative.stress.runner import Workload, WorkloadError
from ainative.stress.runner import wait_line as _wait_line


class ScenarioError(Exception):
    pass


def wait_line(proc: subprocess.Popen[str], want: str, timeout: float) -> str:
    """The first line from proc's stdout that starts with want (its rest is returned)."""
    try:
        return _wait_line(proc, want, timeout)
    except WorkloadError as e:
        raise ScenarioError(str(e)) from None


def _check_remedy(scenario: str, sched: dict[str, Any], who: str = "the workload") -> None:
    """nice without the right to raise priority warns and runs the workload anyway; such a
    result would be labelled with a remedy that never happened."""
    if scenario == "nice" and sched.get("nice") != -10:
        raise ScenarioError(f"nice -n -10 did not take effect ({who} ran at nice "
                            f"{sched.get('nice')}); it needs root or CAP_SYS_NICE")
    if scenario == "chrt" and sched.get("policy") != "fifo":
        raise ScenarioError(f"chrt -f 10 did not take effect ({who} ran with policy "
                            f"{sched.get('policy')}); it needs root or CAP_SYS_NICE")


class Leader:
    def __init__(self, spec: dict[str, Any], workdir: str) -> None:
        self.spec = spec
        self.workdir = workdir
        self.scenario: str = spec["scenario"]
        self.workload: Workload | None = None
        self.hogs: Hogs | None = None
        self.cgroup: HogCgroup | None = None

    def forward_sigint(self, signum: int, frame: FrameType | None) -> None:
        if self.workload is not None:
            self.workload.interrupt()

    def run(self, stdin: Any) -> dict[str, Any]:
        t0 = time.monotonic()
        conts = [parse_scenario(c) for c in self.spec["contention"]]
        extra: dict[str, Any] = {"scenario": self.scenario}
        probe_s = float(self.spec.get("baseline_probe_s") or 0.0)
        # What the machine does with nothing of ours running yet: the baseline's
        # neighbours (machine_load.py says why).
        before = machine_load.probe(probe_s) if probe_s > 0 else None
        # A remedy given as a prefix starts both processes, as a user would a service.
        self.workload = Workload(WorkloadConfig(**self.spec["workload"]), self.workdir,
                                 prefix(self.scenario))
        self.workload.spawn_server()
        # The hogs start and are checked while the model server loads and warms up.
        if conts:
            self.hogs = Hogs(conts, self.spec.get("use_stress_ng"))
            self.hogs.spawn()
            extra["contention_tool"] = self.hogs.tool
            extra["contention_check"] = self.hogs.verify()
            if self.spec.get("hog_cgroup"):
                self.cgroup = HogCgroup(self.spec.get("cgroup_name"))
                self.cgroup.add(self.hogs.pids())
                extra["hog_cgroup"] = {"path": self.cgroup.dir,
                                       "knob": "=".join(self.cgroup.knob)}
        try:
            self.workload.wait_ready(120)
        except WorkloadError as e:
            raise ScenarioError(str(e)) from None
        hog_pids = self.hogs.pids() if self.hogs else []
        extra["setup_s"] = round(time.monotonic() - t0, 2)
        print("ready " + json.dumps({"workload": self.workload.server_pid,
                                     "client": self.workload.client_pid, "hogs": hog_pids}),
              flush=True)
        if stdin.readline().strip() != "go":
            raise ScenarioError("cancelled before the measurement began")
        if self.cgroup is not None:
            # stress-ng may have forked since; children follow their parent, but be sure.
            self.cgroup.add(self.hogs.pids() if self.hogs else [])
        hog_cpu0 = self.hogs.cpu_seconds() if self.hogs else 0.0
        window = machine_load.Window(
            own_pids=[self.workload.server_pid, self.workload.client_pid],
            hog_pids=self.hogs.pids() if self.hogs else [])
        self.workload.go()
        res = self.workload.wait()
        load = window.close()
        if self.hogs is not None:
            extra["contention_cpu_s"] = round(self.hogs.cpu_seconds() - hog_cpu0, 2)
        cpu_hogs = sum(c.amount for c in conts if c.kind == "cpu")
        extra["machine_load"] = {**load, "cpu_hogs": cpu_hogs, "before": before}
        if "error" in res:
            raise ScenarioError(res["error"])
        _check_remedy(self.scenario, res.get("sched") or {}, "the model server")
        _check_remedy(self.scenario, (res.get("client") or {}).get("sched") or {},
                      "the load client")
        res.update(extra)
        return res

    def cleanup(self) -> None:
        if self.workload is not None:
            self.workload.close()
        if self.hogs is not None:
            self.hogs.stop()
        if self.cgroup is not None:
            self.cgroup.remove()


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--spec", required=True)
    ap.add_argument("--result", required=True)
    args = ap.parse_args(argv)
    spec = json.loads(args.spec)
    leader = Leader(spec, os.path.dirname(os.path.abspath(args.result)))
    signal.signal(signal.SIGINT, leader.forward_sigint)
    signal.signal(signal.SIGTERM, _terminate)
    out: dict[str, Any]
    try:
        if sys.stdin.readline().strip() != "start":
            return 3
        out = leader.run(sys.stdin)
    except (ScenarioError, ContentionError, RemedyError, WorkloadError) as e:
        out = {"error": str(e)}
    except SystemExit:
        out = {"error": "stopped"}
    except Exception as e:  # one broken scenario must not take the comparison with it
        out = {"error": f"{type(e).__name__}: {e}"}
    finally:
        leader.cleanup()
    return write_result(args.result, out)


if __name__ == "__main__":
    sys.exit(main())
