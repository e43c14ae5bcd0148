"""NVML telemetry per GPU and per process, through nvidia-ml-py (pynvml).

Without a driver or a GPU every call returns an empty/unavailable answer with a reason;
nothing here raises for a missing GPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class GpuProcess:
    pid: int
    used_memory_bytes: int | None
    kind: str  # "compute" or "graphics"


@dataclass
class GpuStatus:
    index: int
    name: str
    uuid: str
    utilization_gpu: float | None  # percent
    utilization_memory: float | None
    memory_used: int | None
    memory_total: int | None
    temperature_c: float | None
    power_w: float | None
    processes: list[GpuProcess] = field(default_factory=list)


@dataclass
class GpuReport:
    available: bool
    reason: str  # why not available, or driver version when available
    gpus: list[GpuStatus] = field(default_factory=list)


def read_gpus() -> GpuReport:
    raise NotImplementedError


def compute_pids() -> set[int]:
    """PIDs of every compute process on any GPU; empty without NVML."""
    raise NotImplementedError
