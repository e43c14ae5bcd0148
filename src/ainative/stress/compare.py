"""``--compare``: the same load, in one go, alone, contended, and contended under each
remedy: ainative (its daemon scoped to this run, no manual help), ``nice -n -10``,
``chrt -f 10``, and the hogs demoted into a cgroup with the smallest CPU share.

Each scenario runs the workload in a fresh child process, so each remedy acts on that
child alone and one scenario cannot leak into the next.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from ainative.stress.contention import Hogs, Scenario
from ainative.stress.runner import WorkloadConfig

SCENARIOS = ("alone", "contended", "ainative", "nice", "chrt", "cgroup")
DESCRIPTIONS = {
    "alone": "no contention",
    "contended": "with the hogs, nothing done",
    "ainative": "hogs + ainative daemon (automatic)",
    "nice": "hogs + workload under nice -n -10",
    "chrt": "hogs + workload under chrt -f 10",
    "cgroup": "hogs demoted to a cgroup (cpu.shares=2 / cpu.weight=1)",
}


class ScenarioError(Exception):
    pass


def _wait_line(proc: subprocess.Popen[str], want: str, timeout: float) -> None:
    import selectors

    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not sel.select(timeout=0.2):
            if proc.poll() is not None:
                break
            continue
        line = proc.stdout.readline()
        if not line:
            break
        if line.strip() == want:
            return
    raise ScenarioError(f"workload did not get ready (exit code {proc.poll()})")


class DaemonRun:
    """ainative's daemon as a child, scoped to this process and its descendants."""

    def __init__(self, workdir: str) -> None:
        self.workdir = workdir
        self.sock = os.path.join(workdir, "ainative.sock")
        self.log_path = os.path.join(workdir, "daemon.log")
        self.cgroup_root = f"ainative-stress-{os.getpid()}"
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "ainative", "daemon", "--scope-descendants",
                 str(os.getpid()), "--state-dir", os.path.join(workdir, "state"),
                 "--socket", self.sock, "--rules-dir", "", "--cgroup-root", self.cgroup_root,
                 "--reconcile-interval", "0.5"],
                stdout=log, stderr=subprocess.STDOUT)
        from ainative.daemon.client import Client, DaemonError

        self.client = Client(self.sock, timeout=5)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ScenarioError(f"ainative daemon exited at start; see {self.log_path}")
            try:
                self.client.request("ping")
                return
            except DaemonError:
                time.sleep(0.05)
        raise ScenarioError("ainative daemon did not answer within 20 s")

    def tasks(self) -> dict[int, dict[str, Any]]:
        return {t["pid"]: t for t in self.client.status().get("tasks", [])}

    def wait_managed(self, workload: int, hogs: list[int], timeout: float = 15.0
                     ) -> dict[str, Any]:
        """Until the workload is inference and every hog background, with knobs applied."""
        deadline = time.monotonic() + timeout
        tasks: dict[int, dict[str, Any]] = {}
        while time.monotonic() < deadline:
            tasks = self.tasks()
            w = tasks.get(workload)
            ok_w = bool(w and w["class"] == "inference" and w.get("applied"))
            ok_h = all(h in tasks and tasks[h]["class"] == "background"
                       and tasks[h].get("applied") for h in hogs)
            if ok_w and ok_h:
                break
            time.sleep(0.1)
        w = tasks.get(workload)
        return {
            "workload": {"class": w["class"], "applied": w.get("applied"),
                         "signals": w.get("signals")} if w else None,
            "hogs_demoted": sum(1 for h in hogs if h in tasks
                                and tasks[h]["class"] == "background"),
            "hogs": len(hogs),
        }

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class HogCgroup:
    """What an admin would do by hand: put the hogs in a group with the least CPU share."""

    def __init__(self, pids: list[int]) -> None:
        from ainative.platform.linux.cgroups import discover

        cpu = next((h for h in discover() if "cpu" in h.controllers), None)
        if cpu is None:
            raise ScenarioError("no cgroup hierarchy with the cpu controller")
        self.dir = os.path.join(cpu.mount, f"ainative-stress-hogs-{os.getpid()}")
        self.root = cpu.mount
        os.makedirs(self.dir, exist_ok=True)
        knob, value = ("cpu.weight", "1") if cpu.is_v2 else ("cpu.shares", "2")
        self._write(os.path.join(self.dir, knob), value)
        for pid in pids:
            try:
                self._write(os.path.join(self.dir, "cgroup.procs"), str(pid))
            except ProcessLookupError:
                continue

    @staticmethod
    def _write(path: str, value: str) -> None:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)

    def remove(self) -> None:
        try:
            with open(os.path.join(self.dir, "cgroup.procs")) as fh:
                left = fh.read().split()
            for pid in left:
                try:
                    self._write(os.path.join(self.root, "cgroup.procs"), pid)
                except OSError:
                    pass
            os.rmdir(self.dir)
        except OSError:
            pass


def run_scenario(name: str, wcfg: WorkloadConfig, contention: list[Scenario], workdir: str,
                 use_stress_ng: bool | None = None) -> dict[str, Any]:
    os.makedirs(workdir, exist_ok=True)
    result_path = os.path.join(workdir, "result.json")
    hogs = Hogs(contention, use_stress_ng) if name != "alone" and contention else None
    daemon: DaemonRun | None = None
    cg: HogCgroup | None = None
    child: subprocess.Popen[str] | None = None
    extra: dict[str, Any] = {}
    try:
        if name == "ainative":
            daemon = DaemonRun(workdir)  # first, so it sees the hogs and workload start
        if hogs is not None:
            hogs.start()
            extra["contention_tool"] = hogs.tool
        if name == "cgroup":
            if hogs is None:
                raise ScenarioError("the cgroup scenario needs contention")
            cg = HogCgroup(hogs.pids())
        prefix = {"nice": ["nice", "-n", "-10"], "chrt": ["chrt", "-f", "10"]}.get(name, [])
        for tool in prefix[:1]:
            if shutil.which(tool) is None:
                raise ScenarioError(f"{tool} is not installed")
        child = subprocess.Popen(
            [*prefix, sys.executable, "-m", "ainative.stress.runner",
             "--config", json.dumps(asdict(wcfg)), "--result", result_path],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _wait_line(child, "ready", 120)
        if daemon is not None:
            extra["ainative"] = daemon.wait_managed(child.pid, hogs.pids() if hogs else [])
        hog_cpu0 = hogs.cpu_seconds() if hogs else 0.0
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()
        try:
            child.wait(timeout=wcfg.duration + 120)
        except subprocess.TimeoutExpired:
            child.kill()
            raise ScenarioError("workload did not finish in time") from None
        if hogs is not None:
            extra["contention_cpu_s"] = round(hogs.cpu_seconds() - hog_cpu0, 2)
        if not os.path.exists(result_path):
            err = child.stderr.read() if child.stderr else ""
            raise ScenarioError(f"workload wrote no result (exit {child.returncode}): "
                                f"{err.strip().splitlines()[-1] if err.strip() else ''}")
        with open(result_path) as fh:
            res: dict[str, Any] = json.load(fh)
        if "error" in res:
            raise ScenarioError(res["error"])
        res.update(extra)
        return res
    finally:
        if child is not None and child.poll() is None:
            child.kill()
            child.wait()
        if cg is not None:
            cg.remove()
        if hogs is not None:
            hogs.stop()
        if daemon is not None:
            daemon.stop()


def machine_info() -> dict[str, Any]:
    return {"kernel": platform.release(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "machine": platform.machine()}


def verdict(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """ainative's p99 against alone (target: within 1.5x) and against nice -10 (below)."""
    def p99(name: str) -> float | None:
        r = results.get(name)
        return None if not r or "error" in r else float(r["latency"]["p99_ms"])

    a, alone, nice = p99("ainative"), p99("alone"), p99("nice")
    out: dict[str, Any] = {}
    if a is not None and alone:
        out["ainative_vs_alone_p99"] = round(a / alone, 2)
        out["within_1_5x_alone"] = a <= 1.5 * alone
    if a is not None and nice is not None:
        out["below_nice"] = a < nice
    return out


def run_compare(wcfg: WorkloadConfig, contention: list[Scenario], workdir: str,
                scenarios: tuple[str, ...] = SCENARIOS, use_stress_ng: bool | None = None,
                on_result: Callable[[str, dict[str, Any]], None] | None = None
                ) -> dict[str, Any]:
    results: dict[str, dict[str, Any]] = {}
    interrupted = False
    for name in scenarios:
        try:
            results[name] = run_scenario(name, wcfg, contention, os.path.join(workdir, name),
                                         use_stress_ng)
        except KeyboardInterrupt:
            interrupted = True
            break
        except Exception as e:
            results[name] = {"error": f"{type(e).__name__}: {e}"}
        if on_result is not None:
            on_result(name, results[name])
    return {
        "config": asdict(wcfg),
        "contention": [s.label for s in contention],
        "machine": machine_info(),
        "scenarios": results,
        "interrupted": interrupted,
        "verdict": verdict(results),
    }
