"""ainative stress: real-inference load at a fixed rate, alone or compared under remedies."""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import time
from typing import TYPE_CHECKING, Any

import click

# Only names here: NumPy, ONNX and friends load when `stress` runs, not with every
# ainative command.
from ainative.cli import stress_inputs
from ainative.stress.catalog import BUILTIN, DEFAULT_SCENARIOS, DESCRIPTIONS, MODES, SCENARIOS
from ainative.units import UnitError, parse_duration, parse_size

if TYPE_CHECKING:
    from ainative.stress.config import WorkloadConfig


def _duration(text: str, option: str = "--duration") -> float:
    try:
        return parse_duration(text, option)
    except UnitError as e:
        raise click.BadParameter(e.reason, param_hint=e.option) from None


def _service_time(session: Any, feeds: dict[str, Any], budget_s: float = 0.3) -> float:
    """Seconds per inference, after a few runs to warm up."""
    for _ in range(3):
        session.run(None, feeds)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < budget_s or n < 3:
        session.run(None, feeds)
        n += 1
    return (time.perf_counter() - t0) / n


# With --compare, each scenario's load runs this long before it is measured (config.py
# says why); a single run measures from its first request.
LOAD_WARMUP_S = 2.0


def _warmup(text: str | None, compare: bool) -> float:
    if text is None:
        return 0.5 if compare else 1.0
    return 0.0 if text.strip() in ("0", "0s") else _duration(text, "--warmup")


def _pool_size(text: str | None) -> str | None:
    if text is None:
        return None
    try:
        if parse_size(text) <= 0:
            raise ValueError
    except ValueError:
        raise click.BadParameter(f"{text!r}: use a size such as 64M or 1G",
                                 param_hint="--pool") from None
    return text


def _print_table(report: dict[str, Any]) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from ainative.stress import report as rp

    # Light rules: the frames and throughput tables are wide.
    t = Table(title=rp.TITLES[rp.mode(report)], box=box.SIMPLE_HEAD)
    for h in rp.header(report):
        t.add_column(h, justify="left" if h == "scenario" else "right")
    for row in rp.table_rows(report):
        t.add_row(*row)
    # Not on a terminal (a log, a pipe), nothing wraps lines: print the table whole.
    term = Console()
    console = Console(width=max(120, term.width) if term.is_terminal else 200)
    console.print(t)
    for name in report["scenarios"]:
        console.print(f"  {name:10s} {DESCRIPTIONS.get(name, '')}", highlight=False)
    lines = rp.round_lines(report)
    if lines:
        console.print(f"{rp.ROUND_FIGURE[rp.mode(report)][1]} by round ({report['rounds']} "
                      "rounds, each row merges them): "
                      + "; ".join(lines), highlight=False)
    for e in rp.errors(report):
        console.print(Text("error ", style="red") + Text(e))
    for c in rp.caveat_lines(report):
        console.print(Text(c, style="yellow" if c.startswith("warning") else ""))
    v = report.get("verdict") or {}
    if v:
        click.echo("verdict: " + ", ".join(f"{k}={val}" for k, val in v.items()))


def _summary(r: dict[str, Any]) -> str:
    lat, res = r["latency"], r["resources"]
    slope = res["rss_slope_mib_per_hour"]
    return "\n".join([
        f"duration      {r['elapsed_s']:.1f} s{'  (interrupted)' if r['interrupted'] else ''}",
        f"inferences    {r['completed']} of {r['scheduled']} scheduled "
        f"({r['workers']} worker(s), service time {r['service_time_ms']:.3f} ms)",
        f"throughput    {r['throughput_per_s']:.1f} /s",
        f"late          {r['late']}   dropped {r['dropped']}   errors {r['errors']}",
        f"latency ms    p50 {lat['p50_ms']:.3f}  p90 {lat['p90_ms']:.3f}  "
        f"p99 {lat['p99_ms']:.3f}  p99.9 {lat['p99_9_ms']:.3f}{_p99_9_caveat(r)}  "
        f"max {lat['max_ms']:.3f}",
        f"server        pid {r['pid']}: cpu user {res['cpu_user_s']:.2f} s  system "
        f"{res['cpu_system_s']:.2f} s  run-queue wait {res['run_queue_wait_s']:.3f} s",
        f"memory        peak RSS {res['peak_rss_mib']} MiB  slope "
        f"{'n/a (run too short)' if slope is None else f'{slope:+.2f} MiB/h'}",
        f"gpu           {'yes' if r['gpu'].get('available') else r['gpu'].get('reason')}",
        *_mode_lines(r),
        *_extra_lines(r),
    ])


def _p99_9_caveat(r: dict[str, Any]) -> str:
    from ainative.stress.caveats import CAVEAT_MARK, p99_9_trusted

    n = int(r.get("completed") or 0)
    return "" if p99_9_trusted(n) else f"{CAVEAT_MARK} (of {n} samples: about the slowest)"


def _mode_lines(r: dict[str, Any]) -> list[str]:
    if r.get("mode") == "throughput":
        return [f"closed loop   {r['throughput_per_s']:.1f} requests/s, "
                f"{r['samples_per_s']:.0f} samples/s"]
    if r.get("mode") == "frames":
        return [f"frames        {r['achieved_fps']:.1f} fps on time of {r['target_fps']:g}; "
                f"deadline misses {r['deadline_misses']} (late {r['late_frames']}, "
                f"skipped {r['skipped_frames']})"]
    return []


def _extra_lines(r: dict[str, Any]) -> list[str]:
    out = []
    c = r.get("client")
    if c:
        cpu = c["cpu_user_s"] + c["cpu_system_s"]
        out.append(f"load client   pid {c['pid']}: cpu {cpu:.2f} s  run-queue wait "
                   f"{c['run_queue_wait_s']:.3f} s")
    if "contention_cpu_s" in r:
        out.append(f"contention    {r['contention_tool']}, hogs used {r['contention_cpu_s']:.1f} "
                   "CPU-seconds during the run")
    p = r.get("pool")
    if p:
        out.append(f"pool          {p.get('total', 0) >> 20} MiB, {p.get('lock')}, "
                   f"peak {p.get('peak')} B in use, {p.get('alloc_count')} allocations, "
                   f"{p.get('failures')} failures")
    return out


@click.command()
@click.option("--model", default="mlp", show_default=True,
              help=f"Built-in model ({', '.join(BUILTIN)}) or a path to an .onnx file.")
@click.option("--batch", default=8, show_default=True, type=click.IntRange(1, 65536))
@click.option("--threads", default=1, show_default=True, type=click.IntRange(1, 256),
              help="ONNX Runtime intra-op threads.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--rate", default=1000.0, show_default=True, type=click.FloatRange(min=0.001),
              help="Requests per second (open loop).")
@click.option("--mode", "mode", type=click.Choice(list(MODES)), default="latency",
              show_default=True,
              help="latency: open loop at --rate; throughput: closed loop, the most "
                   "requests/s; frames: one frame at a time at --fps, deadline misses.")
@click.option("--fps", default=None, type=click.FloatRange(min=0.001),
              help="With --mode frames: the frame rate [default: 60].")
@click.option("--duration", default="30s", show_default=True,
              help="30s, 10m, 24h ... (with --compare: per scenario).")
@click.option("--workers", default=0, type=click.IntRange(0, 64),
              help="Concurrent workers (0: as many as the rate needs).")
@click.option("--contention", "contention", multiple=True, metavar="KIND:N",
              help="cpu:N hogs, mem:SIZE, io:N (repeatable). --compare defaults to cpu:4.")
@click.option("--compare", is_flag=True, help="Run alone/contended/ainative/nice/chrt/cgroup.")
@click.option("--scenarios", default=",".join(DEFAULT_SCENARIOS), show_default=True,
              help="Which --compare scenarios to run, comma-separated.")
@click.option("--rounds", default=3, show_default=True, type=click.IntRange(1, 100),
              help="With --compare: run the scenarios in turn this many times, each for "
                   "duration/rounds, and merge, so a stretch of machine noise is shared "
                   "out rather than landing on one scenario.")
@click.option("--report", "report_dir", default=None, metavar="DIR",
              help="Write report.json, report.md and latency.png here.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--progress-interval", default=5.0, show_default=True,
              type=click.FloatRange(min=0.1),
              help="Seconds between plain progress lines (when not on a terminal).")
@click.option("--warmup", default=None, metavar="DURATION",
              help="Inference before measuring starts [default: 1s; 0.5s per scenario with "
                   "--compare, to keep the whole comparison short].")
@click.option("--max-queue", default="1s", show_default=True,
              help="Requests that would start later than this are dropped (and counted).")
@click.option("--pool", "pool", default=None, metavar="SIZE",
              help="Stage every request's inputs in a pinned ainative pool of SIZE "
                   "(e.g. 64M) and report its stats.")
@stress_inputs.feed_options
def stress(model: str, batch: int, threads: int, device: str, rate: float, mode: str,
           fps: float | None, duration: str,
           workers: int, contention: tuple[str, ...], compare: bool, scenarios: str,
           rounds: int, report_dir: str | None, as_json: bool, progress_interval: float,
           warmup: str | None,
           max_queue: str, pool: str | None, **feed_args: Any) -> None:
    """Real ONNX Runtime inference at a fixed rate, measured from each request's scheduled
    time (so queueing counts). Ctrl-C ends early and still prints the summary.

    \b
    ainative stress --duration 10m                      one run, alone
    ainative stress --contention cpu:4 --duration 1m    one run against 4 CPU hogs
    ainative stress --compare --duration 12s --report reports/compare
                                                        alone, contended, ainative,
                                                        nice -10, chrt -f 10, cgroup
    ainative stress --compare --mode throughput --batch 64     most requests/s, each way
    ainative stress --compare --mode frames --fps 60 --model attention --batch 8
                                                        frames on time, deadline misses
    """
    from ainative.stress import models
    from ainative.stress.config import WorkloadConfig
    from ainative.stress.contention import ContentionError, parse_scenario
    from ainative.stress.report import errors
    from ainative.stress.runner import WorkloadError

    # A shell starts background jobs with SIGINT ignored, and Python then keeps it so;
    # `kill -INT` must still end the run early with its summary, as documented.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    dur = _duration(duration)
    rate = _mode_rate(mode, fps, workers, rate)
    chosen = tuple(s.strip() for s in scenarios.split(",") if s.strip())
    bad = [s for s in chosen if s not in SCENARIOS]
    if compare and (bad or not chosen):
        raise click.BadParameter(f"unknown scenario(s) {bad}; choose from "
                                 f"{', '.join(SCENARIOS)}", param_hint="--scenarios")
    warmup_s, max_queue_s = _warmup(warmup, compare), _duration(max_queue, "--max-queue")
    pool_size = _pool_size(pool)
    if report_dir:
        stress_inputs.check_report_dir(report_dir)
    tmp = tempfile.mkdtemp(prefix="ainative-stress-")
    keep_tmp = False
    try:
        conts = [parse_scenario(c) for c in contention]
        if compare and not conts:
            conts = [parse_scenario("cpu:4")]
        path = models.materialise(model, tmp)
        name = model if model in BUILTIN else os.path.basename(model)
        wcfg = WorkloadConfig(model_path=path, model_name=name, rate=rate, duration=dur,
                              batch=batch, threads=threads, device=device, workers=workers,
                              warmup_s=warmup_s, max_queue_s=max_queue_s, pool=pool_size,
                              load_warmup_s=LOAD_WARMUP_S if compare else 0.0, mode=mode)
        # The inputs, shaped and filled by --shape/--dim/--input/--inputs, and the batch
        # the run really uses, into wcfg; printed before the run.
        prepared = stress_inputs.prepare(wcfg, feed_args)
        if compare:
            report = _compare(wcfg, conts, chosen, tmp, as_json, rounds)
            keep_tmp = bool(errors(report))
        else:
            report = _single(wcfg, conts, dur, progress_interval, as_json, tmp)
    except (models.ModelError, ContentionError, WorkloadError) as e:
        raise click.ClickException(str(e)) from e
    finally:
        if keep_tmp:
            click.echo(f"logs of the scenarios kept in {tmp}", err=True)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    notes = stress_inputs.annotate(report, prepared)  # capacity, when not sustainable
    report_error = ""
    if report_dir:
        paths, report_error = stress_inputs.write_report_or_say(report, report_dir)
        if paths and not as_json:
            click.echo(f"report: {', '.join(paths)}", err=True)
    if as_json:
        slim = json.loads(json.dumps(report))
        for r in slim["scenarios"].values():
            r.pop("distribution", None)
        click.echo(json.dumps(slim, indent=2))
    elif compare:
        _print_table(report)
    else:
        click.echo(_summary(report["scenarios"]["run"]))
    for note in notes:
        click.echo(note, err=True)
    if report_error:
        raise click.ClickException(report_error)


def _mode_rate(mode: str, fps: float | None, workers: int, rate: float) -> float:
    """The rate the mode runs at: --fps for frames (which run one at a time)."""
    if mode != "frames":
        if fps is not None:
            raise click.BadParameter("only with --mode frames", param_hint="--fps")
        return rate
    if workers:
        raise click.BadParameter("--mode frames runs one frame at a time",
                                 param_hint="--workers")
    return 60.0 if fps is None else fps


def _compare(wcfg: WorkloadConfig, conts: list[Any], chosen: tuple[str, ...], workdir: str,
             quiet: bool, rounds: int) -> dict[str, Any]:
    from ainative.stress import models, modes
    from ainative.stress.compare import run_compare

    # Fail here, not in every scenario, on a model that cannot be fed; and fix the worker
    # count from an uncontended measurement, so every scenario runs the same load the
    # same way.
    session = models.open_session(wcfg.model_path, wcfg.threads, wcfg.device)
    feeds = models.workload_feeds(session, wcfg)
    if not wcfg.workers:
        wcfg.workers = modes.workers(wcfg, _service_time(session, feeds))
    del session, feeds

    def done(n: str, r: dict[str, Any]) -> None:
        if not quiet:
            click.echo(f"  {n:10s} " + (_headline(r) if "error" not in r
                                        else "error: " + r["error"]), err=True)

    if not quiet:
        turns = f" in {rounds} rounds of {wcfg.duration / rounds:g} s" if rounds > 1 else ""
        click.echo(f"comparing {len(chosen)} scenarios, {wcfg.duration:g} s each{turns} "
                   f"(contention {', '.join(c.label for c in conts)}) ...", err=True)
    return run_compare(wcfg, conts, workdir, chosen, on_result=done, rounds=rounds)


def _headline(r: dict[str, Any]) -> str:
    if r.get("mode") == "throughput":
        return f"{r['throughput_per_s']:.1f} req/s"
    if r.get("mode") == "frames":
        return f"{r['achieved_fps']:.1f} fps on time, {r['deadline_misses']} missed"
    return f"p99 {r['latency']['p99_ms']:.2f} ms"


def _single(wcfg: WorkloadConfig, conts: list[Any], dur: float, interval: float,
            quiet: bool, workdir: str) -> dict[str, Any]:
    """One run of the model server and its load client (runner.py), the same pair
    --compare runs, so a system-wide daemon finds the server the same way."""
    from ainative.stress.compare import machine_info
    from ainative.stress.contention import Hogs
    from ainative.stress.progress import PlainProgress, make_progress
    from ainative.stress.runner import run_workload

    hogs = Hogs(conts) if conts else None
    hog_cpu0 = [0.0]

    def started() -> None:
        if hogs is not None:
            hog_cpu0[0] = hogs.cpu_seconds()

    try:
        if hogs is not None:
            hogs.start()
        # With --json, stdout carries only the JSON; progress still goes to stderr.
        prog = make_progress(dur, interval, "plain" if quiet else "auto")
        if prog is None:
            r = run_workload(wcfg, before_start=started, workdir=workdir)
        else:
            # A live bar refreshes each second; plain lines come once per interval, and
            # their figures cover that whole interval.
            tick = 1.0 if not isinstance(prog, PlainProgress) else interval
            with prog:
                r = run_workload(wcfg, on_tick=prog, tick_s=tick, before_start=started,
                                 workdir=workdir)
        if hogs is not None:
            r["contention_tool"] = hogs.tool
            r["contention_check"] = hogs.verified
            r["contention_cpu_s"] = round(hogs.cpu_seconds() - hog_cpu0[0], 2)
    finally:
        if hogs is not None:
            hogs.stop()
    return {"config": r["config"], "contention": [c.label for c in conts],
            "machine": machine_info(), "scenarios": {"run": r}, "interrupted": r["interrupted"]}
