"""What a GPU reading says, as typed records, and its JSON form.

The telemetry (nvml.py), the CLI (`ainative gpu`), the Prometheus collector (metrics.py)
and the daemon all pass these records around, so each field is named and typed once. A
field a GPU or driver cannot give is None, and its name is listed in `unsupported` (NVML
said "Not Supported") or `errors` (any other NVML failure, with NVML's words), so "0" is
never confused with "not measured".

The JSON form is versioned (`schema`) and always has the same keys, GPU or not.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TypedDict, cast

JSON_SCHEMA = 1


@dataclass
class GpuProcess:
    pid: int
    used_memory_bytes: int | None
    kind: str  # "compute" or "graphics"
    name: str | None = None  # None: pid not visible here (another container) or gone
    sm_utilization: float | None = None  # percent of the SMs over NVML's last sample
    memory_utilization: float | None = None  # percent of memory-controller time


@dataclass
class GpuStatus:
    index: int
    name: str
    uuid: str
    utilization_gpu: float | None = None  # percent
    utilization_memory: float | None = None  # percent (DCGM calls it memory copy util)
    memory_used: int | None = None  # bytes
    memory_total: int | None = None
    memory_free: int | None = None
    temperature_c: float | None = None
    power_w: float | None = None
    power_limit_w: float | None = None  # the enforced limit
    clock_sm_mhz: int | None = None
    clock_mem_mhz: int | None = None
    clock_sm_max_mhz: int | None = None
    clock_mem_max_mhz: int | None = None
    pci_bus_id: str | None = None
    pcie_generation: int | None = None  # current link
    pcie_width: int | None = None
    processes: list[GpuProcess] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)  # fields NVML does not support here
    errors: dict[str, str] = field(default_factory=dict)  # field -> why its read failed


@dataclass
class GpuReport:
    available: bool
    reason: str  # why not available, or driver version when available
    gpus: list[GpuStatus] = field(default_factory=list)
    driver_version: str | None = None


class GpuProcessJson(TypedDict):
    pid: int
    used_memory_bytes: int | None
    kind: str
    name: str | None
    sm_utilization: float | None
    memory_utilization: float | None


class GpuJson(TypedDict):
    index: int
    name: str
    uuid: str
    utilization_gpu: float | None
    utilization_memory: float | None
    memory_used: int | None
    memory_total: int | None
    memory_free: int | None
    temperature_c: float | None
    power_w: float | None
    power_limit_w: float | None
    clock_sm_mhz: int | None
    clock_mem_mhz: int | None
    clock_sm_max_mhz: int | None
    clock_mem_max_mhz: int | None
    pci_bus_id: str | None
    pcie_generation: int | None
    pcie_width: int | None
    processes: list[GpuProcessJson]
    unsupported: list[str]
    errors: dict[str, str]


class GpuReportJson(TypedDict):
    schema: int
    available: bool
    reason: str
    driver_version: str | None
    gpus: list[GpuJson]


def report_json(rep: GpuReport) -> GpuReportJson:
    """The report as plain JSON-able data (the TypedDicts above mirror the dataclasses,
    which a test checks)."""
    return {"schema": JSON_SCHEMA, "available": rep.available, "reason": rep.reason,
            "driver_version": rep.driver_version,
            "gpus": [cast(GpuJson, asdict(g)) for g in rep.gpus]}
