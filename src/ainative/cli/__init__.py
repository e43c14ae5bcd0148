"""The ``ainative`` command line. Each command group lives in its own module."""

from __future__ import annotations

import click

from ainative import __version__
from ainative.cli.core_cmds import register_core_commands
from ainative.cli.gpu_cmd import gpu
from ainative.cli.monitor_cmd import monitor
from ainative.cli.plan_cmd import plan
from ainative.cli.pool_cmd import pool
from ainative.cli.stress_cmd import stress
from ainative.cli.trace_cmd import trace


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ainative")
def main() -> None:
    """ainative: find AI workloads, protect their latency, undo everything."""


register_core_commands(main)
main.add_command(stress)
main.add_command(pool)
main.add_command(plan)
main.add_command(gpu)
main.add_command(trace)
main.add_command(monitor)
