"""The leader of one ``--compare`` scenario: a process that starts the hogs and the
workload as its own children, so a daemon scoped to it (``--scope-descendants``) sees
both, and nothing else of the caller's.

It talks to the caller over stdin/stdout, one line each way at a time:

    caller -> leader   start            (the daemon, if any, now watches the leader)
    leader -> caller   ready {json}     (hogs verified, workload warmed up; pids inside)
    caller -> leader   go               (anything else, or EOF: give up cleanly)

and writes the scenario's result JSON to --result. It imports no ONNX Runtime itself, so
it can never be mistaken for the workload. SIGINT is passed on to the workload, which
ends its run early and still reports; SIGTERM stops everything.
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

from ainative.stress.contention import ContentionError, Hogs, parse_scenario
from ainative.stress.remedies import HogCgroup, RemedyError, prefix
from ainative.stress.results import write_result


class ScenarioError(Exception):
    pass


def wait_line(proc: subprocess.Popen[str], want: str, timeout: float) -> str:
    """The first line from proc's stdout that starts with want (its rest is returned)."""
    import selectors

    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not sel.select(timeout=0.2):
                if proc.poll() is not None:
                    break
                continue
            line = proc.stdout.readline()
            if not line:
                break
            if line.startswith(want):
                return line[len(want):].strip()
    finally:
        sel.close()
    code = proc.poll()
    raise ScenarioError(f"did not get ready within {timeout:.0f} s" if code is None
                        else f"exited with code {code} before it was ready")


def _tail(path: str) -> str:
    try:
        with open(path, errors="replace") as fh:
            lines = [ln for ln in fh.read().splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


def _error_of(path: str) -> str | None:
    try:
        with open(path) as fh:
            err = json.load(fh).get("error")
    except (OSError, ValueError, AttributeError):
        return None
    return str(err) if err else None


def _check_remedy(scenario: str, sched: dict[str, Any]) -> None:
    """nice without the right to raise priority warns and runs the workload anyway; such a
    result would be labelled with a remedy that never happened."""
    if scenario == "nice" and sched.get("nice") != -10:
        raise ScenarioError(f"nice -n -10 did not take effect (the workload ran at nice "
                            f"{sched.get('nice')}); it needs root or CAP_SYS_NICE")
    if scenario == "chrt" and sched.get("policy") != "fifo":
        raise ScenarioError(f"chrt -f 10 did not take effect (policy {sched.get('policy')}); "
                            "it needs root or CAP_SYS_NICE")


class Leader:
    def __init__(self, spec: dict[str, Any], workdir: str) -> None:
        self.spec = spec
        self.workdir = workdir
        self.scenario: str = spec["scenario"]
        self.child: subprocess.Popen[str] | None = None
        self.hogs: Hogs | None = None
        self.cgroup: HogCgroup | None = None

    def forward_sigint(self, signum: int, frame: FrameType | None) -> None:
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(signal.SIGINT)

    def run(self, stdin: Any) -> dict[str, Any]:
        t0 = time.monotonic()
        conts = [parse_scenario(c) for c in self.spec["contention"]]
        extra: dict[str, Any] = {"scenario": self.scenario}
        wres = os.path.join(self.workdir, "workload.json")
        werr = os.path.join(self.workdir, "workload.err")
        with open(werr, "w") as err:
            self.child = subprocess.Popen(
                [*prefix(self.scenario), sys.executable, "-m", "ainative.stress.runner",
                 "--config", json.dumps(self.spec["workload"]), "--result", wres],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True)
        # The hogs start and are checked while the workload loads and warms up.
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
            wait_line(self.child, "ready", 120)
        except ScenarioError as e:
            self.child.wait(timeout=5)
            # A model it could not load or feed says so in its result; a crash, on stderr.
            raise ScenarioError(_error_of(wres) or f"workload {e}: {_tail(werr)}") from None
        hog_pids = self.hogs.pids() if self.hogs else []
        extra["setup_s"] = round(time.monotonic() - t0, 2)
        print("ready " + json.dumps({"workload": self.child.pid, "hogs": hog_pids}),
              flush=True)
        if stdin.readline().strip() != "go":
            raise ScenarioError("cancelled before the measurement began")
        if self.cgroup is not None:
            # stress-ng may have forked since; children follow their parent, but be sure.
            self.cgroup.add(self.hogs.pids() if self.hogs else [])
        hog_cpu0 = self.hogs.cpu_seconds() if self.hogs else 0.0
        assert self.child.stdin is not None
        self.child.stdin.write("go\n")
        self.child.stdin.flush()
        self.child.wait()
        if self.hogs is not None:
            extra["contention_cpu_s"] = round(self.hogs.cpu_seconds() - hog_cpu0, 2)
        if not os.path.exists(wres):
            raise ScenarioError(f"workload wrote no result (exit code "
                                f"{self.child.returncode}): {_tail(werr)}")
        with open(wres) as fh:
            res: dict[str, Any] = json.load(fh)
        if "error" in res:
            raise ScenarioError(res["error"])
        _check_remedy(self.scenario, res.get("sched") or {})
        res.update(extra)
        return res

    def cleanup(self) -> None:
        if self.child is not None and self.child.poll() is None:
            self.child.kill()
            self.child.wait()
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
    except (ScenarioError, ContentionError, RemedyError) as e:
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
