"""ainative stress (being built)."""

import click


@click.command()
def stress() -> None:
    """Real-inference stress test (being built)."""
    raise click.ClickException("not built yet")
