"""ainative stress: real-inference load at a fixed rate, alone or compared under remedies."""

from __future__ import annotations

import json
import os
import re
import tempfile
from typing import Any

import click

from ainative.stress import models
from ainative.stress.compare import DESCRIPTIONS, SCENARIOS, run_compare
from ainative.stress.contention import ContentionError, Hogs, parse_scenario
from ainative.stress.progress import make_progress
from ainative.stress.report import HEADER, table_rows, write_report
from ainative.stress.runner import WorkloadConfig, run_workload

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*", text)
    if not m:
        raise click.BadParameter(f"{text!r}: use a number with s, m or h (30s, 10m, 24h)")
    value = float(m.group(1)) * _UNITS[m.group(2) or "s"]
    if value <= 0:
        raise click.BadParameter("duration must be positive")
    return value


def _print_table(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="latency from scheduled time (open loop)")
    for h in HEADER:
        t.add_column(h, justify="left" if h == "scenario" else "right")
    t.add_column("what")
    for name, row in zip(report["scenarios"], table_rows(report), strict=True):
        t.add_row(*row, DESCRIPTIONS.get(name, ""))
    Console(width=max(120, Console().width)).print(t)
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
        f"p99 {lat['p99_ms']:.3f}  p99.9 {lat['p99_9_ms']:.3f}  max {lat['max_ms']:.3f}",
        f"cpu           user {res['cpu_user_s']:.2f} s  system {res['cpu_system_s']:.2f} s  "
        f"run-queue wait {res['run_queue_wait_s']:.3f} s",
        f"memory        peak RSS {res['peak_rss_mib']} MiB  slope "
        f"{'n/a (run too short)' if slope is None else f'{slope:+.2f} MiB/h'}",
        f"gpu           {'yes' if r['gpu'].get('available') else r['gpu'].get('reason')}",
    ])


@click.command()
@click.option("--model", default="mlp", show_default=True,
              help=f"Built-in model ({', '.join(models.BUILTIN)}) or a path to an .onnx file.")
@click.option("--batch", default=8, show_default=True, type=click.IntRange(1, 65536))
@click.option("--threads", default=1, show_default=True, type=click.IntRange(1, 256),
              help="ONNX Runtime intra-op threads.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--rate", default=1000.0, show_default=True, type=click.FloatRange(min=0.001),
              help="Requests per second (open loop).")
@click.option("--duration", default="30s", show_default=True, help="30s, 10m, 24h ...")
@click.option("--workers", default=0, type=click.IntRange(0, 64),
              help="Concurrent workers (0: as many as the rate needs).")
@click.option("--contention", "contention", multiple=True, metavar="KIND:N",
              help="cpu:N hogs, mem:SIZE, io:N (repeatable). --compare defaults to cpu:4.")
@click.option("--compare", is_flag=True, help="Run alone/contended/ainative/nice/chrt/cgroup.")
@click.option("--scenarios", default=",".join(SCENARIOS), show_default=True,
              help="Which --compare scenarios to run, comma-separated.")
@click.option("--report", "report_dir", default=None, metavar="DIR",
              help="Write report.json, report.md and latency.png here.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--progress-interval", default=5.0, show_default=True,
              help="Seconds between plain progress lines (when not on a terminal).")
@click.option("--warmup", default="1s", show_default=True)
@click.option("--max-queue", default="1s", show_default=True,
              help="Requests that would start later than this are dropped (and counted).")
def stress(model: str, batch: int, threads: int, device: str, rate: float, duration: str,
           workers: int, contention: tuple[str, ...], compare: bool, scenarios: str,
           report_dir: str | None, as_json: bool, progress_interval: float, warmup: str,
           max_queue: str) -> None:
    """Real ONNX Runtime inference at a fixed rate, measured from each request's scheduled
    time. Ctrl-C ends early and still prints the summary."""
    dur = parse_duration(duration)
    try:
        conts = [parse_scenario(c) for c in contention]
        if compare and not conts:
            conts = [parse_scenario("cpu:4")]
        tmp = tempfile.mkdtemp(prefix="ainative-stress-")
        path = models.materialise(model, tmp)
        name = model if model in models.BUILTIN else os.path.basename(model)
        wcfg = WorkloadConfig(model_path=path, model_name=name, rate=rate, duration=dur,
                              batch=batch, threads=threads, device=device, workers=workers,
                              warmup_s=parse_duration(warmup), max_queue_s=parse_duration(
                                  max_queue))
        if compare:
            chosen = tuple(s.strip() for s in scenarios.split(",") if s.strip())
            bad = [s for s in chosen if s not in SCENARIOS]
            if bad:
                raise click.BadParameter(f"unknown scenario(s) {bad}; choose from "
                                         f"{', '.join(SCENARIOS)}")
            # Fail here, not in every scenario, on a model that cannot be fed.
            models.synthesise_inputs(models.open_session(path, threads, device), batch, name)

            def done(n: str, r: dict[str, Any]) -> None:
                if not as_json:
                    p99 = r["latency"]["p99_ms"] if "error" not in r else None
                    click.echo(f"  {n:10s} " + (f"p99 {p99:.2f} ms" if p99 is not None
                                                else r["error"]), err=True)

            if not as_json:
                click.echo(f"comparing {len(chosen)} scenarios, {dur:.0f} s each ...", err=True)
            report = run_compare(wcfg, conts, tmp, chosen, on_result=done)
        else:
            report = _single(wcfg, conts, dur, progress_interval, as_json)
    except (models.ModelError, ContentionError) as e:
        raise click.ClickException(str(e)) from e
    if report_dir:
        paths = write_report(report, report_dir)
        if not as_json:
            click.echo(f"report: {', '.join(paths.values())}", err=True)
    if as_json:
        slim = json.loads(json.dumps(report))
        for r in slim["scenarios"].values():
            r.pop("distribution", None)
        click.echo(json.dumps(slim, indent=2))
    elif compare:
        _print_table(report)
    else:
        click.echo(_summary(report["scenarios"]["run"]))


def _single(wcfg: WorkloadConfig, conts: list[Any], dur: float, interval: float,
            quiet: bool) -> dict[str, Any]:
    from ainative.stress.compare import machine_info

    hogs = Hogs(conts) if conts else None
    try:
        if hogs is not None:
            hogs.start()
        prog = make_progress(dur, interval, "none" if quiet else "auto")
        if prog is None:
            r = run_workload(wcfg, tick_s=1.0)
        else:
            with prog:
                r = run_workload(wcfg, on_tick=prog, tick_s=1.0)
    finally:
        if hogs is not None:
            hogs.stop()
    return {"config": r["config"], "contention": [c.label for c in conts],
            "machine": machine_info(), "scenarios": {"run": r}, "interrupted": r["interrupted"]}
