"""daemon, status, explain, register, restore, resume, reload, demo."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click

from ainative.cli.plan_cmd import rules_dir_option, rules_option, window_option
from ainative.ipc.client import (
    DEFAULT_EVENTS_SOCKET,
    Client,
    DaemonError,
    default_socket_path,
)

socket_option = click.option(
    "--socket", "socket_path", default=None, metavar="PATH",
    help="Control socket (default $AINATIVE_SOCKET or /run/ainative/ainative.sock).")
json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


class OptionError(click.ClickException):
    """A bad option value: one line (the message names the option and the fix), no usage
    text, the exit status of a usage error."""

    exit_code = 2


def _client(socket_path: str | None) -> Client:
    return Client(socket_path or default_socket_path())


def _call(socket_path: str | None, op: str, **args: Any) -> dict[str, Any]:
    try:
        return _client(socket_path).request(op, **args)
    except DaemonError as e:
        raise click.ClickException(str(e)) from e


@click.command()
@click.option("--rules", "rules", multiple=True, type=click.Path(dir_okay=False),
              help="Extra rule file (TOML); repeatable; read after the built-in rules and "
                   "/etc/ainative/rules.d/*.toml.")
@click.option("--rules-dir", default="/etc/ainative/rules.d", show_default=True,
              help="Directory of *.toml rule files ('' to skip).")
@click.option("--state-dir", default="/var/lib/ainative", show_default=True,
              help="Where the change journal lives.")
@socket_option
@click.option("--scope-descendants", "scope", type=int, default=None, metavar="PID",
              help="Manage only the descendants of this process (not the process itself).")
@click.option("--dry-run", is_flag=True, help="Decide and report; change nothing.")
@click.option("--no-cgroups", is_flag=True, help="Do not use cgroups.")
@click.option("--cgroup-root", default="ainative", show_default=True,
              help="Name of ainative's own cgroup subtree.")
@click.option("--socket-mode", default="0666", show_default=True,
              help="Permissions of the control socket (octal); who may do what is still "
                   "checked per request from the caller's credentials.")
@click.option("--socket-group", default=None, metavar="GROUP",
              help="Group owning the control socket (with --socket-mode 0660: only its "
                   "members and root may connect).")
@click.option("--reconcile-interval", default=1.0, show_default=True,
              help="Seconds between checks for new threads and manual changes.")
@click.option("--metrics-address", "metrics_address", default=None, metavar="HOST:PORT|off",
              help="Where to serve Prometheus metrics (/metrics). Default 127.0.0.1:9464 "
                   "(loopback); port 0 takes a free port (`ainative status` shows it); "
                   "'off' serves none. Another address than loopback is logged as a "
                   "warning: the metrics name local processes.")
@click.option("--events-socket", "events_socket", default=None, metavar="PATH|off",
              help="Where in-process spans are received (AINATIVE_EVENTS of the traced "
                   "processes). Default events.sock beside the control socket "
                   "(/run/ainative/events.sock); any local user may send their own "
                   "processes' spans; 'off' receives none.")
@click.option("--events-retention", "events_retention", default=None, metavar="DURATION",
              help="How long the event store (events.db in the state dir) keeps events "
                   "(30m, 24h, 7d). Default 7d; the newest 2,000,000 are kept at most.")
@click.option("--runqueue", type=click.Choice(["auto", "schedstat", "off"]),
              default="schedstat", show_default=True,
              help="Run-queue waits of serving and AI processes: /proc schedstat sums "
                   "(schedstat); per-wakeup eBPF with who ran instead where the host allows, "
                   "else schedstat (auto: bcc and LLVM add about 120 MB to the daemon's "
                   "RSS); none. `ainative status` says which runs and why.")
@click.option("--otlp-endpoint", "otlp_endpoint", default=None, metavar="URL",
              help="Also export every event over OTLP/HTTP to this OpenTelemetry collector "
                   "(e.g. http://127.0.0.1:4318): spans named after the GenAI semantic "
                   "conventions, gen_ai.server.request.duration. Needs the 'otlp' extra.")
@click.option("--log-format", type=click.Choice(["json", "text"]), default="json",
              show_default=True)
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              default="info", show_default=True)
def daemon(rules: tuple[str, ...], rules_dir: str, state_dir: str, socket_path: str | None,
           scope: int | None, dry_run: bool, no_cgroups: bool, cgroup_root: str,
           socket_mode: str, socket_group: str | None, reconcile_interval: float,
           metrics_address: str | None, events_socket: str | None,
           events_retention: str | None, runqueue: str, otlp_endpoint: str | None,
           log_format: str, log_level: str) -> None:
    """Run the daemon in the foreground. SIGTERM/SIGINT undo every change and exit."""
    from ainative import log
    from ainative.daemon.exporter import DEFAULT_ADDRESS, AddressError, parse_address
    from ainative.daemon.server import Daemon, DaemonConfig, StartupError
    from ainative.daemon.telemetry import RUNQUEUE_MODES
    from ainative.telemetry.store import DEFAULT_RETENTION_S
    from ainative.units import UnitError, parse_duration

    log.setup(log_format, log_level)
    try:
        metrics = parse_address(metrics_address or DEFAULT_ADDRESS)
    except AddressError as e:
        raise OptionError(str(e)) from None
    try:
        mode = int(socket_mode, 8)
        if not 0 <= mode <= 0o777:
            raise ValueError
    except ValueError:
        raise click.BadParameter(f"{socket_mode!r} is not an octal mode like 0660",
                                 param_hint="--socket-mode") from None
    try:
        retention = (parse_duration(events_retention, "--events-retention")
                     if events_retention is not None else DEFAULT_RETENTION_S)
    except UnitError as e:
        raise OptionError(str(e)) from None
    control = socket_path or default_socket_path()
    if events_socket is None:
        events_socket = os.path.join(os.path.dirname(os.path.abspath(control)),
                                     os.path.basename(DEFAULT_EVENTS_SOCKET))
    if not events_socket:
        raise OptionError("--events-socket: give a path, or off")
    rq = next(m for m in RUNQUEUE_MODES if m == runqueue)  # click checked the choice
    cfg = DaemonConfig(
        rules=list(rules), rules_dir=rules_dir or None, state_dir=state_dir,
        socket_path=control, socket_mode=mode,
        socket_group=socket_group, scope_pid=scope, dry_run=dry_run,
        reconcile_interval=reconcile_interval, cgroup_root=cgroup_root, cgroups=not no_cgroups,
        metrics_address=metrics,
        events_socket=None if events_socket == "off" else events_socket,
        events_retention_s=retention, runqueue=rq,
        otlp_endpoint=otlp_endpoint or None,
    )
    try:
        d = Daemon(cfg)
        sys.exit(d.run())
    except StartupError as e:
        raise click.ClickException(str(e)) from e


@click.command()
@socket_option
@json_option
def status(socket_path: str | None, as_json: bool) -> None:
    """What ainative sees and does: mechanisms, GPU, AI tasks and the knobs applied."""
    st = _call(socket_path, "status")
    if as_json:
        st.pop("ok", None)
        click.echo(json.dumps(st, indent=2, default=str))
        return
    from ainative.cli.views import render_status

    render_status(st)


@click.command()
@click.argument("pid", type=int)
@socket_option
@json_option
@click.option("--offline", is_flag=True,
              help="Decide from /proc in this command, as `ainative plan` does, even when a "
                   "daemon runs (used anyway when none answers).")
@rules_option
@rules_dir_option
@window_option
def explain(pid: int, socket_path: str | None, as_json: bool, offline: bool,
            rules: tuple[str, ...], rules_dir: str, window: float | None) -> None:
    """Every signal checked for PID, the class chosen, and what is (or would be) applied."""
    ex: dict[str, Any] | None = None
    if not offline:
        try:
            ex = _client(socket_path).request("explain", pid=pid)
        except DaemonError as e:
            if "cannot reach" not in str(e):
                raise click.ClickException(str(e)) from e
    if ex is None:
        from ainative.cli.plan_cmd import offline_explain

        ex = offline_explain(pid, rules, rules_dir, window)
    if as_json:
        ex.pop("ok", None)
        click.echo(json.dumps(ex, indent=2, default=str))
        return
    from ainative.cli.views import render_explain

    render_explain(ex)


@click.command()
@click.argument("pid", type=int)
@click.option("--class", "cls", required=True, help="Class to give the process.")
@socket_option
def register(pid: int, cls: str, socket_path: str | None) -> None:
    """Register PID explicitly in a class (your own processes; root: any)."""
    r = _call(socket_path, "register", pid=pid, **{"class": cls})
    if r.get("would_apply"):
        would = ", ".join(f"{k}={v}" for k, v in r["would_apply"].items())
        click.echo(f"pid {pid} registered as {cls}; would apply (dry run): {would}")
    else:
        applied = ", ".join(f"{k}={v}" for k, v in r.get("applied", {}).items())
        click.echo(f"pid {pid} registered as {cls}; "
                   + (f"applied: {applied}" if applied else f"now: {r.get('state', '')}"))
    for k, v in (r.get("errors") or {}).items():
        click.echo(f"  not applied: {k}: {v}")


@click.command()
@socket_option
@click.option("--state-dir", default=None, metavar="DIR",
              help="Used when no daemon answers: the dead daemon's state dir (default: the "
                   "one its socket's pointer names, else /var/lib/ainative).")
def restore(socket_path: str | None, state_dir: str | None) -> None:
    """Undo every change ainative made (the daemon then pauses until `ainative resume`)."""
    path = socket_path or default_socket_path()
    try:
        r = _client(path).request("restore")
        how = "daemon"
    except DaemonError as e:
        if "cannot reach" not in str(e):
            raise click.ClickException(str(e)) from e
        from ainative.daemon.restore import find_state_dir, offline_restore
        from ainative.daemon.server import StartupError

        try:
            found = find_state_dir(path, state_dir)
            r = offline_restore(found.state_dir)
        except StartupError as e2:
            raise click.ClickException(str(e2)) from e2
        how = f"journal in {found.state_dir}, found from {found.how} (no daemon running)"
    click.echo(f"restored via {how}: {r['undone']} undone, {r['skipped_gone']} skipped "
               f"(process gone), {r['skipped_changed']} left (changed by someone else since), "
               f"{r['failed']} failed, {r.get('inherited', 0)} inherited values put back"
               + (f", {r['unusable']} journal records unusable" if r.get("unusable") else ""))
    for line in r.get("details", []):
        click.echo(f"  {line}")


@click.command()
@socket_option
def resume(socket_path: str | None) -> None:
    """Manage processes again after `ainative restore`."""
    _call(socket_path, "resume")
    click.echo("resumed")


@click.command()
@socket_option
def reload(socket_path: str | None) -> None:
    """Re-read rule files (like SIGHUP); on error the last good rules stay in force."""
    r = _call(socket_path, "reload")
    click.echo("reloaded: " + ", ".join(r.get("rules", [])))


@click.command()
@click.option("--seconds", default=4.0, show_default=True, help="How long to let it run.")
def demo(seconds: float) -> None:
    """Start the daemon scoped to a real ONNX Runtime process it launches, show status."""
    from ainative.cli.demo import run_demo

    sys.exit(run_demo(seconds))


def register_core_commands(group: click.Group) -> None:
    for cmd in (daemon, status, explain, register, restore, resume, reload, demo):
        group.add_command(cmd)


def _is_root() -> bool:
    return os.geteuid() == 0
