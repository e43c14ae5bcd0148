"""ainative pool: what a pinned pool gets on this machine, and its benchmark."""

from __future__ import annotations

import json

import click

from ainative.core.classes import parse_size


@click.group()
def pool() -> None:
    """Pinned-memory pool: limits here, and a benchmark."""


@pool.command()
@click.option("--size", default="256MiB", show_default=True, help="Pool size to check.")
@click.option("--json", "as_json", is_flag=True)
def limits(size: str, as_json: bool) -> None:
    """Show RLIMIT_MEMLOCK, CAP_IPC_LOCK, THP, NUMA, CUDA, and what a pool of --size gets."""
    from ainative.mem.arena import numa_nodes, thp_mode
    from ainative.mem.cuda import find_runtime
    from ainative.mem.limits import lock_limits

    try:
        n = parse_size(size)
    except ValueError as e:
        raise click.ClickException(f"bad --size {size!r}: {e}") from e
    lim = lock_limits()
    _rt, cuda_why = find_runtime()

    def fmt(v: int | None) -> str:
        return "unlimited" if v is None else f"{v >> 10} KiB"

    out = {
        "rlimit_memlock_soft": lim.soft, "rlimit_memlock_hard": lim.hard,
        "cap_ipc_lock": lim.cap_ipc_lock, "locked_now": lim.locked_now,
        "transparent_hugepages": thp_mode(), "numa_nodes": numa_nodes(), "cuda": cuda_why,
        "size": n, "would_lock": lim.allows(n),
        "verdict": ("locked" if lim.allows(n) else "NOT locked: " + lim.explain(n)),
    }
    if as_json:
        click.echo(json.dumps(out, indent=2))
        return
    click.echo(f"RLIMIT_MEMLOCK   soft {fmt(lim.soft)}, hard {fmt(lim.hard)}")
    click.echo(f"CAP_IPC_LOCK     {'yes' if lim.cap_ipc_lock else 'no'}")
    click.echo(f"locked now       {lim.locked_now >> 10} KiB")
    click.echo(f"huge pages       THP {thp_mode()}")
    click.echo(f"NUMA nodes       {numa_nodes() or 'none reported'}")
    click.echo(f"CUDA             {cuda_why}")
    click.echo(f"a {n >> 20} MiB pool {out['verdict']}")


@pool.command()
@click.option("--capacity", default="256MiB", show_default=True)
@click.option("--json", "as_json", is_flag=True)
def bench(capacity: str, as_json: bool) -> None:
    """Alloc/free latency, page faults, allocator overhead, host-to-device speed."""
    from ainative.mem.bench import format_report, run
    from ainative.mem.limits import MemlockError

    try:
        r = run(capacity)
    except (MemlockError, ValueError) as e:
        raise click.ClickException(str(e)) from e
    click.echo(json.dumps(r, indent=2) if as_json else format_report(r))
