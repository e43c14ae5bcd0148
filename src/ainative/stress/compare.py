"""``--compare``: the same load, in one go, alone, contended, and contended under each
remedy: ainative (its daemon scoped to this run, no manual help), ``nice -n -10``,
``chrt -f 10``, and the hogs demoted into a cgroup with the smallest CPU share.

Each scenario has a leader process of its own (see leader.py) that starts the hogs and
the workload (a model server behind a Unix socket and the load client driving it,
runner.py) as its descendants: a remedy acts on that workload alone, the daemon is scoped
to the leader and has to find the model server by itself, and one scenario cannot leak
into the next.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from typing import Any

import psutil

from ainative.stress.catalog import ABLATIONS, SCENARIOS
from ainative.stress.caveats import warnings
from ainative.stress.config import WorkloadConfig
from ainative.stress.contention import Scenario
from ainative.stress.leader import ScenarioError, wait_line
from ainative.stress.rounds import merge_rounds

# Before "alone" starts anything, its leader watches the machine this long: load there
# already (a build, a test suite) would make the baseline slow and every ratio to it kind.
BASELINE_PROBE_S = 0.5


class Interrupted(Exception):
    """Ctrl-C during a scenario; carries what that scenario measured up to then."""

    def __init__(self, result: dict[str, Any]) -> None:
        super().__init__("interrupted")
        self.result = result


def _send(proc: subprocess.Popen[str], line: str) -> None:
    assert proc.stdin is not None
    try:
        proc.stdin.write(line + "\n")
        proc.stdin.flush()
    except BrokenPipeError:
        pass


def _close_stdin(proc: subprocess.Popen[str]) -> None:
    try:
        if proc.stdin is not None:
            proc.stdin.close()
    except BrokenPipeError:
        pass


class DaemonRun:
    """ainative's daemon as a child, scoped to one scenario's leader and its descendants,
    with rules from nowhere but its built-in set and state in a directory of its own."""

    def __init__(self, workdir: str, scope_pid: int, rules_text: str | None = None) -> None:
        from ainative.ipc.launcher import ScopedDaemon

        # its own cgroup subtree: a system-wide ainative may be running too
        self.daemon = ScopedDaemon(workdir, scope_pid=scope_pid, rules_text=rules_text,
                                   cgroup_root=f"ainative-stress-{os.getpid()}")
        self.daemon.start(wait=False)
        self.log_path = self.daemon.log_path
        self.client = self.daemon.client

    def wait_ready(self) -> None:
        """Until it answers; it finds the scope's processes started before that itself."""
        from ainative.ipc.launcher import LaunchError

        try:
            self.daemon.wait_ready()
        except LaunchError as e:
            raise ScenarioError(str(e)) from e

    def tasks(self) -> dict[int, dict[str, Any]]:
        return {t["pid"]: t for t in self.client.status().get("tasks", [])}

    @staticmethod
    def _in_force(t: dict[str, Any] | None, cls: str) -> bool:
        return bool(t and t.get("class") == cls and t.get("active", True) and t.get("applied"))

    def wait_managed(self, workload: int, hogs: list[int], timeout: float = 5.0,
                     client: int | None = None) -> dict[str, Any]:
        """Until the model server is managed as inference, busy and boosted, and every hog
        as background (what `ainative status --json` shows); the measurement is worthless
        without the first. The load client's class (none, expected) is reported too."""
        from ainative.ipc.client import DaemonError

        deadline = time.monotonic() + timeout
        tasks: dict[int, dict[str, Any]] = {}
        t_start = time.monotonic()
        while True:
            try:
                tasks = self.tasks()
            except DaemonError as e:
                if not self.daemon.alive():
                    raise ScenarioError(f"ainative daemon died: {_last_line(self.log_path)}"
                                        ) from e
            ok_w = self._in_force(tasks.get(workload), "inference")
            # Hogs no rule knows (contention loop:N) are never classified: only the closed
            # loop reaches them, once the server waits, so there is nothing to wait for.
            ok_h = all(self._in_force(tasks.get(h), "background") for h in hogs
                       if h in tasks)
            if (ok_w and ok_h) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        w = tasks.get(workload)
        if not ok_w:
            seen = (f"it has it as class {w.get('class')!r}, active={w.get('active')}, "
                    f"applied={w.get('applied')}" if w else "it does not manage it")
            raise ScenarioError(f"ainative did not manage the model server (pid {workload}) "
                                f"as inference within {timeout:.0f} s: {seen}; see "
                                f"{self.log_path}")
        assert w is not None
        c = tasks.get(client) if client is not None else None
        return {
            "workload": {"class": w["class"], "applied": w.get("applied"),
                         "signals": w.get("signals")},
            "client_class": c.get("class") if c else None,
            "hogs_demoted": sum(1 for h in hogs if self._in_force(tasks.get(h), "background")),
            "hogs": len(hogs),
            "wait_s": round(time.monotonic() - t_start, 2),
        }

    def cpu_seconds(self) -> float | None:
        """The daemon's own CPU time so far (user + system), None once it is gone."""
        try:
            t = psutil.Process(self.daemon.pid).cpu_times()
        except psutil.Error:
            return None
        return float(t.user + t.system)

    def guard_steps(self) -> list[dict[str, Any]]:
        """Each change of the closed loop's step during the run, from the daemon's log:
        its time, the step and the measurement behind it."""
        out: list[dict[str, Any]] = []
        try:
            with open(self.log_path, errors="replace") as fh:
                for line in fh:
                    if '"guard_step"' not in line:
                        continue
                    try:
                        e = json.loads(line)
                    except ValueError:
                        continue
                    out.append({k: e.get(k) for k in ("ts", "step", "name", "why")})
        except OSError:
            pass
        return out

    def stop(self) -> None:
        """SIGTERM: the daemon undoes everything it changed and exits."""
        self.daemon.close()


def _last_line(path: str) -> str:
    from ainative.ipc.launcher import last_line

    return last_line(path)


def _stop_leader(leader: subprocess.Popen[str]) -> None:
    _close_stdin(leader)  # a leader still waiting for 'start' or 'go' gives up cleanly
    try:
        leader.wait(timeout=10)
        return
    except subprocess.TimeoutExpired:
        pass
    leader.terminate()  # it stops its hogs and workload on the way out
    try:
        leader.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(leader.pid, signal.SIGKILL)
        leader.wait()


def run_scenario(name: str, wcfg: WorkloadConfig, contention: list[Scenario], workdir: str,
                 use_stress_ng: bool | None = None) -> dict[str, Any]:
    """One scenario in a leader process of its own; the result JSON, or ScenarioError.
    Ctrl-C ends the scenario early and raises Interrupted with what it measured."""
    if name not in SCENARIOS:
        raise ScenarioError(f"unknown scenario {name!r}")
    if name == "cgroup" and not contention:
        raise ScenarioError("the cgroup scenario needs contention")
    os.makedirs(workdir, exist_ok=True)
    result_path = os.path.join(workdir, "result.json")
    spec = {"scenario": name, "workload": asdict(wcfg),
            "contention": [] if name == "alone" else [c.label for c in contention],
            "use_stress_ng": use_stress_ng, "hog_cgroup": name == "cgroup",
            "cgroup_name": f"ainative-stress-hogs-{os.getpid()}",
            "baseline_probe_s": BASELINE_PROBE_S if name == "alone" else 0.0}
    t0 = time.monotonic()
    daemon: DaemonRun | None = None
    extra: dict[str, Any] = {}
    interrupted = False
    with open(os.path.join(workdir, "leader.err"), "w") as err:
        # Its own process group: Ctrl-C on the terminal reaches it only through us, once.
        leader = subprocess.Popen(
            [sys.executable, "-m", "ainative.stress.leader", "--spec", json.dumps(spec),
             "--result", result_path],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True,
            process_group=0)
    try:
        try:
            if name == "ainative" or name in ABLATIONS:
                # Before anything is spawned, so it sees the hogs and the workload start.
                daemon = DaemonRun(workdir, leader.pid, rules_text=ABLATIONS.get(name))
            _send(leader, "start")
            if daemon is not None:
                daemon.wait_ready()  # while the leader starts the hogs and the workload
            info = json.loads(wait_line(leader, "ready ", 180) or "{}")
            if daemon is not None:
                extra["ainative"] = daemon.wait_managed(info["workload"], info["hogs"],
                                                        client=info.get("client"))
            _send(leader, "go")
            cpu0, t_go = daemon.cpu_seconds() if daemon else None, time.monotonic()
            try:
                leader.wait(timeout=wcfg.duration + 60)
            except subprocess.TimeoutExpired:
                raise ScenarioError("the scenario did not finish in time") from None
            if daemon is not None:
                # What protecting one busy server cost the daemon (the issue's < 1 % of a
                # core), and where its loop stood at the end.
                cpu1 = daemon.cpu_seconds()
                extra["daemon_pid"] = daemon.daemon.pid
                if cpu0 is not None and cpu1 is not None:
                    span = time.monotonic() - t_go
                    extra["daemon_cpu_percent"] = round((cpu1 - cpu0) / span * 100, 2)
                steps = daemon.guard_steps()
                extra["guard"] = {"max_step": max((e["step"] or 0 for e in steps), default=0),
                                  "changes": steps[:50]}
        except KeyboardInterrupt:
            interrupted = True
            if leader.poll() is None:
                leader.send_signal(signal.SIGINT)  # passed on to the load client
            _close_stdin(leader)
            try:
                leader.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        except ScenarioError as e:
            _stop_leader(leader)
            if not os.path.exists(result_path):
                raise
            with open(result_path) as fh:
                why = json.load(fh).get("error")
            # The leader's own reason (a model that failed to load) says more, unless all
            # it says is that we called the scenario off: then ours is the reason.
            cancelled = why is None or str(why).startswith("cancelled")
            raise ScenarioError(str(e) if cancelled else why) from None
    finally:
        _stop_leader(leader)
        if daemon is not None:
            daemon.stop()
    res: dict[str, Any]
    if os.path.exists(result_path):
        with open(result_path) as fh:
            res = json.load(fh)
    else:
        res = {"error": f"the scenario wrote no result (leader exit code {leader.returncode}"
                        f"): {_last_line(os.path.join(workdir, 'leader.err'))}"}
    res.update(extra)
    res["scenario_wall_s"] = round(time.monotonic() - t0, 1)
    if interrupted:
        raise Interrupted(res)
    if "error" in res:
        raise ScenarioError(res["error"])
    return res


def machine_info() -> dict[str, Any]:
    return {"kernel": platform.release(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "machine": platform.machine()}


def _rate_verdict(results: dict[str, dict[str, Any]], key: str, label: str
                  ) -> dict[str, Any]:
    """Throughput and frame modes: each remedy's rate as a fraction of alone's."""
    alone = (results.get("alone") or {}).get(key)
    out: dict[str, Any] = {}
    for name, r in results.items():
        if name != "alone" and "error" not in r and alone and r.get(key) is not None:
            out[f"{name}_vs_alone_{label}"] = round(float(r[key]) / float(alone), 2)
    return out


def verdict(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Latency mode: ainative's p99 against alone (target: within 1.5x) and against nice
    -10 (below). Throughput and frame modes: each scenario's rate against alone's, and
    the deadline misses."""
    mode = next((r.get("mode") for r in results.values() if r.get("mode")), "latency")
    if mode == "throughput":
        return _rate_verdict(results, "throughput_per_s", "req_per_s")
    if mode == "frames":
        v = _rate_verdict(results, "achieved_fps", "fps")
        v["deadline_misses"] = {n: r["deadline_misses"] for n, r in results.items()
                                if "deadline_misses" in r}
        return v
    def p99(name: str) -> float | None:
        r = results.get(name)
        return None if not r or "error" in r else float(r["latency"]["p99_ms"])

    a, alone, nice = p99("ainative"), p99("alone"), p99("nice")
    out: dict[str, Any] = {}
    if a is not None and alone:
        out["ainative_vs_alone_p99"] = round(a / alone, 2)
        out["within_1_5x_alone"] = a <= 1.5 * alone
        # Paired by round: alone and ainative of the same round ran minutes apart at most,
        # under the same stretch of host noise; the ratio of each pair, and their median,
        # say what the remedy did with that noise held (nearly) equal.
        ra = results["ainative"].get("rounds") or []
        rb = results["alone"].get("rounds") or []
        if len(ra) == len(rb) > 1 and all(x["p99_ms"] > 0 for x in rb):
            ratios = [x["p99_ms"] / y["p99_ms"] for x, y in zip(ra, rb, strict=True)]
            out["ainative_vs_alone_p99_by_round"] = [round(r, 2) for r in ratios]
            out["median_round_ratio"] = round(sorted(ratios)[len(ratios) // 2], 2)
    if a is not None and nice is not None:
        out["below_nice"] = a < nice
    return out


def run_compare(wcfg: WorkloadConfig, contention: list[Scenario], workdir: str,
                scenarios: tuple[str, ...] = SCENARIOS, use_stress_ng: bool | None = None,
                on_result: Callable[[str, dict[str, Any]], None] | None = None,
                rounds: int = 1) -> dict[str, Any]:
    """Each scenario for wcfg.duration in all, in ``rounds`` turns of duration/rounds
    (rounds.py says why), merged per scenario; on_result sees each merged scenario."""
    if rounds < 1:
        raise ValueError("rounds must be at least 1")
    per_round = replace(wcfg, duration=wcfg.duration / rounds)
    parts: dict[str, list[dict[str, Any]]] = {n: [] for n in scenarios}
    interrupted = False
    for rnd in range(rounds):
        for name in scenarios:
            if parts[name] and "error" in parts[name][-1]:
                continue  # a failed scenario is not run again
            where = os.path.join(workdir, name if rounds == 1 else f"{name}-{rnd + 1}")
            try:
                res = run_scenario(name, per_round, contention, where, use_stress_ng)
            except Interrupted as e:
                res, interrupted = e.result, True
            except KeyboardInterrupt:
                interrupted = True
                break
            except ScenarioError as e:
                res = {"error": str(e)}
            except Exception as e:  # one broken scenario must not take the others with it
                res = {"error": f"{type(e).__name__}: {e}"}
            parts[name].append(res)
            final = rnd == rounds - 1 or interrupted or "error" in res
            if final and on_result is not None:
                on_result(name, merge_rounds(parts[name]))
            if interrupted:
                break
        if interrupted:
            break
    results = {n: merge_rounds(p) for n, p in parts.items() if p}
    return {
        "config": asdict(wcfg),
        "contention": [s.label for s in contention],
        "machine": machine_info(),
        "rounds": rounds,
        "scenarios": results,
        "interrupted": interrupted,
        "verdict": verdict(results),
        "warnings": warnings(results),
    }
