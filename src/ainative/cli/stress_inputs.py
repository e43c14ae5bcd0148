"""`ainative stress`'s handling of the model's inputs: the flags that shape and fill them
(--shape, --dim, --input, --inputs), the table of what will be sent, printed before the
run, the checks that must fail before a run rather than after it (--pool too small for a
request), and what the report keeps of it all (the inputs, the real batch, warnings, and
whether the target rate was sustainable).

Kept apart from stress_cmd.py, which runs the modes and scenarios: this is about the
model a user brings, whatever mode runs it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from ainative.stress.config import WorkloadConfig
    from ainative.stress.feeds import Resolved

F = TypeVar("F", bound=Callable[..., Any])


def feed_options(f: F) -> F:
    """The input flags, for the stress command (its function takes them as **feed_args)."""
    for opt in reversed([
        click.option("--shape", "shapes", multiple=True, metavar="NAME=D0,D1,...",
                     help="An input's whole shape, e.g. x=1,3,640,640; its symbolic axes "
                          "take these sizes everywhere (repeatable)."),
        click.option("--dim", "dims", multiple=True, metavar="SYMBOL=N",
                     help="The size of a symbolic axis (height, sequence ...) wherever it "
                          "appears (repeatable)."),
        click.option("--input", "values", multiple=True, metavar="NAME=VALUE",
                     help="Fill an input with one value, e.g. sr=16000 (repeatable); "
                          "the others are random."),
        click.option("--inputs", "npz", default=None, metavar="FILE.npz",
                     help="Real inputs: arrays named after the model's inputs "
                          "(numpy.savez); their shapes count as --shape."),
    ]):
        f = opt(f)
    return f


@dataclass
class Prepared:
    resolved: Resolved
    requested_batch: int


def _workers_at_most(wcfg: WorkloadConfig) -> int:
    # How many requests can be staged at once: the workers asked for, else the most
    # config.choose_workers would pick.
    if wcfg.workers:
        return wcfg.workers
    return max(1, min(len(os.sched_getaffinity(0)) // max(1, wcfg.threads), 64))


def prepare(wcfg: WorkloadConfig, feed_args: dict[str, Any]) -> Prepared:
    """Resolve the model's inputs with the user's flags into wcfg (its inputs, and the
    batch the run really uses), check --pool against them, and print them to stderr.
    models.ModelError for inputs that cannot be made, click.ClickException for a --pool
    too small."""
    from ainative.stress import feeds, models, preflight

    try:
        opts = feeds.parse_options(feed_args.get("shapes", ()), feed_args.get("dims", ()),
                                   feed_args.get("values", ()), feed_args.get("npz"))
    except feeds.FeedError as e:
        raise models.ModelError(str(e)) from None
    ctx = click.get_current_context(silent=True)
    explicit = ctx is None or ctx.get_parameter_source("batch") not in (
        click.core.ParameterSource.DEFAULT, None)
    resolved = models.resolve(models.file_inputs(wcfg.model_path), wcfg.batch, opts,
                              wcfg.model_name, batch_explicit=explicit)
    prepared = Prepared(resolved, wcfg.batch)
    wcfg.inputs, wcfg.batch = resolved.specs, resolved.batch
    if wcfg.pool:
        try:
            preflight.check_pool(wcfg.pool, resolved.specs, _workers_at_most(wcfg))
        except preflight.PreflightError as e:
            raise click.ClickException(str(e)) from None
    for line in feeds.table(resolved, wcfg.model_name):
        click.echo(line, err=True)
    for w in resolved.warnings:
        click.echo(click.style("warning: ", fg="yellow") + w, err=True)
    return prepared


def annotate(report: dict[str, Any], prepared: Prepared) -> list[str]:
    """Keep the inputs and the real batch in the report, and each scenario's capacity
    when its target rate was not sustainable; the lines to tell the user about that."""
    from ainative.stress import capacity, feeds

    res = prepared.resolved
    report["inputs"] = {
        "batch": res.batch, "requested_batch": prepared.requested_batch,
        "batch_from": res.batch_from, "warnings": res.warnings,
        "tensors": [{"name": s["name"], "dtype": s["dtype"], "shape": s["shape"],
                     "fill": s.get("fill", {"kind": "random"}), "how": feeds.describe(s)}
                    for s in res.specs],
    }
    lines = []
    scenarios = report.get("scenarios", {})
    for name, r in scenarios.items():
        c = capacity.assess(r)
        if c is None:
            continue
        r["capacity"] = c
        msg = capacity.message(c)
        if msg:
            lines.append(msg if len(scenarios) == 1 else f"{name}: {msg}")
    return lines



def check_report_dir(directory: str) -> None:
    """--report must be writable before the run, or its summary would be lost after."""
    from ainative.stress.preflight import PreflightError
    from ainative.stress.preflight import check_report_dir as check

    try:
        check(directory)
    except PreflightError as e:
        raise click.ClickException(str(e)) from None


def write_report_or_say(report: dict[str, Any], directory: str) -> tuple[list[str], str]:
    """The files written, or why they could not be (a disk that filled during the run):
    the caller still prints the summary, then the error."""
    from ainative.stress.report import write_report

    try:
        return list(write_report(report, directory).values()), ""
    except OSError as e:
        return [], f"--report {directory}: cannot write the report ({e.strerror or e})"
