"""`ainative monitor`: the command. The textual app (cli/monitor.py) is imported only
when the command runs: textual costs about 25 MB of RSS, and every other command, the
daemon included, goes through the same CLI module."""

from __future__ import annotations

import click

from ainative.cli.core_cmds import socket_option
from ainative.ipc.client import default_socket_path


@click.command()
@socket_option
@click.option("--interval", default=1.0, show_default=True, type=click.FloatRange(0.1, 3600),
              help="Seconds between refreshes.")
@click.option("--once", is_flag=True, help="Print one frame as plain text and exit.")
def monitor(socket_path: str | None, interval: float, once: bool) -> None:
    """Live view of AI processes, their latency, the GPU and the pinned pools."""
    from ainative.cli.monitor import run_monitor

    run_monitor(socket_path or default_socket_path(), interval, once)
