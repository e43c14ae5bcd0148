"""ainative pool (being built)."""

import click


@click.command()
def pool() -> None:
    """Pinned-memory pool limits and benchmark (being built)."""
    raise click.ClickException("not built yet")
