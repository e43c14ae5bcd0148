"""``ainative plan`` and the daemon-less ``ainative explain``: what the rules would do now.

Both read /proc themselves through the daemon's own code path (the supervisor in dry-run
mode: same rules, classifier and activity tracker, no journal, no writes), so what they
print is what a daemon started now would apply. Without root, other users' environments,
mapped files and sockets cannot be read; the signals say so.
"""

from __future__ import annotations

import json
import os
from typing import Any

import click

from ainative.core.classes import ConfigError
from ainative.core.supervisor import Supervisor

rules_option = click.option(
    "--rules", "rules", multiple=True, type=click.Path(dir_okay=False),
    help="Extra rule file (TOML), as given to the daemon; repeatable.")
rules_dir_option = click.option(
    "--rules-dir", default="/etc/ainative/rules.d", show_default=True,
    help="Directory of *.toml rule files ('' to skip).")
window_option = click.option(
    "--window", default=None, type=float, metavar="SECONDS",
    help="How long to watch CPU use for activity (default: the rules' active_window).")

NOTE = ("plan: read from /proc now by this command (no daemon involved); nothing is "
        "changed")


def dry_supervisor(rules: tuple[str, ...], rules_dir: str) -> Supervisor:
    """The daemon's supervisor over this machine's /proc, deciding and changing nothing."""
    from ainative.core.plan import dry_supervisor as make
    from ainative.core.rules import load_rules
    from ainative.gpu import nvml
    from ainative.platform import get_platform
    from ainative.platform.base import MechanismUnavailable

    try:
        rs = load_rules(list(rules), rules_dir or None)
    except ConfigError as e:
        raise click.ClickException(str(e)) from None
    try:
        backend = get_platform().backend
    except MechanismUnavailable as e:
        raise click.ClickException(str(e)) from None
    sup = make(backend, rs)
    sup.classifier.gpu_pids = nvml.cached_compute_pids()
    return sup


def _unprivileged_note() -> str:
    if os.geteuid() == 0:
        return ""
    return (" (not root: other users' environments, libraries and sockets are not "
            "readable, so their processes may be missing)")


@click.command()
@rules_option
@rules_dir_option
@window_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plan(rules: tuple[str, ...], rules_dir: str, window: float | None, as_json: bool) -> None:
    """Every process the rules would touch now: class, signals, activity, knobs."""
    from ainative.core.plan import activity_rules, offline_plan

    sup = dry_supervisor(rules, rules_dir)
    entries = offline_plan(sup, window)
    act = activity_rules(sup)
    if as_json:
        click.echo(json.dumps({"plan": entries, "activity": act, "rules": sup.rules.sources},
                              indent=2, default=str))
        return
    from ainative.cli.views import render_plan

    render_plan([dict(e) for e in entries], dict(act), NOTE + _unprivileged_note())


def offline_explain(pid: int, rules: tuple[str, ...], rules_dir: str,
                    window: float | None) -> dict[str, Any]:
    """``explain`` without a daemon: the decision, the class's knobs, activity and state."""
    from ainative.core.plan import activity_rules, offline_plan, state_of
    from ainative.platform.base import ProcessGone

    sup = dry_supervisor(rules, rules_dir)
    offline_plan(sup, window)  # every process: whether a serving one is busy matters too
    try:
        d = sup.decide(pid)
    except ProcessGone:
        raise click.ClickException(f"no process {pid}") from None
    except PermissionError as e:
        raise click.ClickException(f"process {pid} cannot be read: {e}") from None
    out: dict[str, Any] = d.to_json()
    if d.cls is not None:
        out["knobs"] = sup.rules.classes[d.cls].knobs_summary()
    m = sup.engine.managed.get(d.ident)
    if m is not None:
        out["state"] = state_of(sup, m)
        out["activity"] = sup.activity_view(m.ident)
    out["activity_rules"] = activity_rules(sup)
    out["offline"] = ("no daemon answered: decided from /proc by this command with the "
                      "daemon's rules and code; nothing is changed" + _unprivileged_note())
    return out
