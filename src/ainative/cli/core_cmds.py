"""daemon, status, explain, register, restore, demo."""

from __future__ import annotations

import click


def register_core_commands(group: click.Group) -> None:
    pass
