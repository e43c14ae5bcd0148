"""ainative gpu: what each GPU is doing (utilisation, memory, temperature, power, clocks)
and which processes use it (memory, SM utilisation), from NVML.

Without a GPU, a driver or pynvml it prints the plain reason and exits 0: having no GPU
is a fact about the machine, not an error. ``--json`` prints the report in the stable
schema of ainative.gpu.report (the same keys with or without a GPU).
"""

from __future__ import annotations

import json
import time

import click
from rich.console import Console
from rich.table import Table

from ainative.gpu.nvml import NvmlReader
from ainative.gpu.report import GpuReport, GpuStatus, report_json

NA = "n/a"


def _num(v: float | None, unit: str = "", digits: int = 0) -> str:
    return NA if v is None else f"{v:.{digits}f}{unit}"


def _mib(v: int | None) -> str:
    return NA if v is None else f"{v >> 20}"


def _gpu_table(g: GpuStatus) -> Table:
    t = Table(title=f"GPU {g.index}: {g.name}", title_justify="left", show_header=False)
    t.add_column("field", style="bold")
    t.add_column("value", overflow="fold")
    pcie = (NA if g.pcie_generation is None and g.pcie_width is None else
            f"gen {_num(g.pcie_generation)} x{_num(g.pcie_width)}")
    rows = [
        ("uuid", g.uuid),
        ("utilisation", f"{_num(g.utilization_gpu, '%')} GPU, "
                        f"{_num(g.utilization_memory, '%')} memory"),
        ("memory", f"{_mib(g.memory_used)} / {_mib(g.memory_total)} MiB used"),
        ("temperature", _num(g.temperature_c, " C")),
        ("power", f"{_num(g.power_w, ' W', 1)} (limit {_num(g.power_limit_w, ' W')})"),
        ("SM clock", f"{_num(g.clock_sm_mhz, ' MHz')} (max {_num(g.clock_sm_max_mhz, ' MHz')})"),
        ("memory clock",
         f"{_num(g.clock_mem_mhz, ' MHz')} (max {_num(g.clock_mem_max_mhz, ' MHz')})"),
        ("PCIe", f"{pcie}, bus {g.pci_bus_id or NA}"),
    ]
    if g.unsupported:
        rows.append(("not supported", ", ".join(g.unsupported)))
    if g.errors:
        rows.append(("read errors", "; ".join(f"{k}: {v}" for k, v in g.errors.items())))
    for k, v in rows:
        t.add_row(k, v)
    return t


def _process_table(rep: GpuReport) -> Table:
    t = Table(title="processes on the GPUs", title_justify="left", header_style="bold")
    for col in ("gpu", "pid", "name", "kind", "memory MiB", "SM %", "mem %"):
        t.add_column(col, justify="left" if col in ("name", "kind") else "right")
    for g in rep.gpus:
        for p in g.processes:
            t.add_row(str(g.index), str(p.pid), p.name or "(not visible here)", p.kind,
                      _mib(p.used_memory_bytes), _num(p.sm_utilization),
                      _num(p.memory_utilization))
    return t


def render(rep: GpuReport, console: Console) -> None:
    if not rep.available:
        console.print(f"No GPU telemetry: {rep.reason}", highlight=False)
        return
    console.print(f"NVIDIA driver {rep.driver_version or '?'}, {len(rep.gpus)} GPU(s)",
                  highlight=False)
    for g in rep.gpus:
        console.print(_gpu_table(g))
    if any(g.processes for g in rep.gpus):
        console.print(_process_table(rep))
    else:
        console.print("No process is using a GPU.")


@click.command()
@click.option("--json", "as_json", is_flag=True,
              help="The report as JSON (one object; one line per reading with --watch).")
@click.option("--watch", type=click.FloatRange(min=0.1), default=None, metavar="SECONDS",
              help="Read again every SECONDS until interrupted.")
def gpu(as_json: bool, watch: float | None) -> None:
    """Each GPU's utilisation, memory, temperature, power and clocks, and the processes
    on it with their GPU memory and SM utilisation. Without a GPU, says why."""
    reader = NvmlReader()  # keeps the process-utilisation samples between --watch reads
    console = Console()
    try:
        while True:
            rep = reader()
            if as_json:
                click.echo(json.dumps(report_json(rep), indent=None if watch else 2))
            else:
                if watch:
                    console.clear()
                render(rep, console)
            if watch is None:
                return
            time.sleep(watch)
    except KeyboardInterrupt:
        return
