"""ainative pool: what a pinned pool gets on this machine, and its benchmark."""

from __future__ import annotations

import json
from typing import Any

import click

from ainative.units import parse_size

LOCK_CHOICES: dict[str, str | bool] = {"required": "required", "try": "try", "never": False}


def _size(value: str, option: str) -> int:
    try:
        n = parse_size(value)
    except ValueError:
        n = 0
    if n <= 0:
        raise click.ClickException(f"bad {option} {value!r}: give a size like 256MiB, 2GiB "
                                   "or a number of bytes")
    return n


def _kib(v: int | None) -> str:
    return "unlimited" if v is None else f"{v >> 10} KiB"


def _yes(v: bool) -> str:
    return "yes" if v else "no"


@click.group()
def pool() -> None:
    """Pinned-memory pool: limits here, and a benchmark."""


@pool.command()
@click.option("--size", default="256MiB", show_default=True, help="Pool size to check.")
@click.option("--numa-node", type=int, default=None, help="NUMA node the pool would bind to.")
@click.option("--create", is_flag=True,
              help="Really make the pool (lock='try') and show what it got.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def limits(size: str, numa_node: int | None, create: bool, as_json: bool) -> None:
    """RLIMIT_MEMLOCK, CAP_IPC_LOCK, THP, NUMA and CUDA here, and what a pool of --size
    would get: locked or not (and the fix), huge pages, NUMA node, CUDA registration."""
    from ainative.mem.forecast import forecast

    n = _size(size, "--size")
    out: dict[str, Any] = forecast(n, numa_node)
    if create:
        out["created"] = _create(n, numa_node)
    if as_json:
        click.echo(json.dumps(out, indent=2))
        return
    click.echo(f"RLIMIT_MEMLOCK   soft {_kib(out['rlimit_memlock_soft'])}, "
               f"hard {_kib(out['rlimit_memlock_hard'])}")
    click.echo(f"CAP_IPC_LOCK     {_yes(out['cap_ipc_lock'])}")
    click.echo(f"locked now       {out['locked_now'] >> 10} KiB (VmLck)")
    click.echo(f"huge pages       THP {out['transparent_hugepages']}")
    click.echo(f"NUMA nodes       {out['numa_nodes'] or 'none reported'}")
    click.echo(f"CUDA             {out['cuda_detail']}")
    click.echo("")
    click.echo(f"a {_human(n)} pool here would get:")
    click.echo(f"  locked         {_yes(out['locked'])}: {out['lock_detail']}")
    click.echo(f"  huge pages     {_yes(out['hugepages'])}: {out['hugepages_detail']}")
    click.echo(f"  NUMA binding   {out['numa_node'] if out['numa_node'] is not None else 'none'}"
               f": {out['numa_detail']}")
    click.echo("  CUDA           " + ("registered: " + out["cuda_detail"]
                                        if out["cuda_registered"] else "unregistered (above)"))
    if create:
        c = out["created"]
        if "error" in c:
            click.echo(f"\ncreating it failed: {c['error']}")
        else:
            click.echo(f"\ncreated it: locked={c['locked']} ({c['lock']}), "
                       f"hugepages={c['hugepages']}, numa_node={c['numa_node']}, "
                       f"cuda_registered={c['cuda_registered']}")


def _human(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 else f"{n >> 10} KiB" if n >= 1 << 10 else f"{n} B"


def _create(n: int, numa_node: int | None) -> dict[str, Any]:
    from ainative.mem import PinnedPool

    try:
        with PinnedPool(n, numa_node=numa_node, lock="try", report_to_daemon=False) as p:
            s = p.stats()
    except (OSError, ValueError) as e:
        return {"error": str(e)}
    return {k: s[k] for k in ("total", "locked", "lock", "hugepages", "hugepages_detail",
                              "numa_node", "numa_detail", "cuda_registered", "cuda_detail")}


@pool.command()
@click.option("--capacity", default="256MiB", show_default=True,
              help="Pool size for the benchmark (at least 64MiB).")
@click.option("--lock", "lock", type=click.Choice(sorted(LOCK_CHOICES)), default="try",
              show_default=True,
              help="required: fail when the pool cannot be locked; try: run unlocked and say so.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def bench(capacity: str, lock: str, as_json: bool) -> None:
    """Alloc+free latency (pool, numpy.empty, fresh mmap), page faults of a hot loop,
    allocator overhead for a realistic size mix, host-to-device speed with a GPU."""
    from ainative.mem import MemlockError
    from ainative.mem.bench import format_report, run

    n = _size(capacity, "--capacity")
    try:
        r = run(n, lock=LOCK_CHOICES[lock])
    except (MemlockError, ValueError, OSError) as e:
        raise click.ClickException(str(e)) from e
    click.echo(json.dumps(r, indent=2) if as_json else format_report(r))
