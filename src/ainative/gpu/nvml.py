"""NVML telemetry per GPU and per process, through nvidia-ml-py (pynvml).

Without a driver or a GPU every call returns an empty/unavailable answer with a reason;
nothing here raises for a missing GPU.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


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


# NVML error values (nvml.h) worth a plain sentence; any other is reported as NVML words it.
_INIT_ERRORS = {
    12: "NVML library not found (no NVIDIA driver on this machine)",  # LIBRARY_NOT_FOUND
    9: "NVIDIA driver is installed but not loaded (no GPU, or the module failed)",
    4: "NVML refused access (no permission on /dev/nvidia*)",  # NO_PERMISSION
}

_lock = threading.Lock()
_state: dict[str, Any] = {"init": False, "error": None, "nvml": None}


def _nvml() -> Any:
    """The initialised pynvml module, or raise RuntimeError with a plain reason (cached:
    a machine without a driver does not grow one while the daemon runs)."""
    with _lock:
        if _state["init"]:
            return _state["nvml"]
        if _state["error"] is not None:
            raise RuntimeError(_state["error"])
        try:
            import pynvml

            pynvml.nvmlInit()
        except ImportError:
            _state["error"] = "nvidia-ml-py (pynvml) is not installed"
        except Exception as e:
            known = _INIT_ERRORS.get(getattr(e, "value", None))  # type: ignore[arg-type]
            _state["error"] = known or f"NVML unavailable: {e!s}"
        else:
            _state["init"], _state["nvml"] = True, pynvml
            return pynvml
        raise RuntimeError(_state["error"])


def _field(fn: Callable[[], T]) -> T | None:
    # Each field on its own: a GPU that does not support one still reports the others.
    try:
        return fn()
    except Exception:
        return None


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _processes(nv: Any, h: Any) -> list[GpuProcess]:
    out: list[GpuProcess] = []
    for kind, getter in (("compute", "nvmlDeviceGetComputeRunningProcesses"),
                         ("graphics", "nvmlDeviceGetGraphicsRunningProcesses")):
        procs = _field(lambda g=getter: getattr(nv, g)(h)) or []  # type: ignore[misc]
        for p in procs:
            mem = getattr(p, "usedGpuMemory", None)
            # NVML_VALUE_NOT_AVAILABLE is reported as a huge unsigned value or None.
            if mem is None or mem >= (1 << 63):
                mem = None
            out.append(GpuProcess(int(p.pid), mem, kind))
    return out


def read_gpus() -> GpuReport:
    try:
        nv = _nvml()
    except RuntimeError as e:
        return GpuReport(False, str(e))
    try:
        count = nv.nvmlDeviceGetCount()
    except Exception as e:
        return GpuReport(False, f"NVML could not count GPUs: {e!s}")
    driver = _field(lambda: _text(nv.nvmlSystemGetDriverVersion())) or "?"
    gpus = []
    for i in range(count):
        h = _field(lambda i=i: nv.nvmlDeviceGetHandleByIndex(i))  # type: ignore[misc]
        if h is None:
            continue
        util = _field(lambda h=h: nv.nvmlDeviceGetUtilizationRates(h))  # type: ignore[misc]
        mem = _field(lambda h=h: nv.nvmlDeviceGetMemoryInfo(h))  # type: ignore[misc]
        power = _field(lambda h=h: nv.nvmlDeviceGetPowerUsage(h))  # type: ignore[misc]
        gpus.append(GpuStatus(
            index=i,
            name=_field(lambda h=h: _text(nv.nvmlDeviceGetName(h))) or "?",  # type: ignore[misc]
            uuid=_field(lambda h=h: _text(nv.nvmlDeviceGetUUID(h))) or "?",  # type: ignore[misc]
            utilization_gpu=float(util.gpu) if util is not None else None,
            utilization_memory=float(util.memory) if util is not None else None,
            memory_used=int(mem.used) if mem is not None else None,
            memory_total=int(mem.total) if mem is not None else None,
            temperature_c=_field(lambda h=h: float(  # type: ignore[misc]
                nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU))),
            power_w=power / 1000.0 if power is not None else None,
            processes=_processes(nv, h),
        ))
    if not gpus:
        return GpuReport(False, f"NVML works (driver {driver}) but reports no GPU")
    return GpuReport(True, f"driver {driver}", gpus)


def compute_pids() -> set[int]:
    """PIDs of every compute process on any GPU; empty without NVML."""
    rep = read_gpus()
    return {p.pid for g in rep.gpus for p in g.processes if p.kind == "compute"}


def cached_compute_pids(ttl: float = 2.0) -> Callable[[], set[int]]:
    """compute_pids() remembered for ttl seconds, and empty (never raising) when NVML
    fails: the classifier asks for it per process, and NVML calls cost milliseconds."""
    cache: dict[str, Any] = {"t": -1e9, "v": set()}

    def get() -> set[int]:
        now = time.monotonic()
        if now - cache["t"] > ttl:
            try:
                cache["v"] = compute_pids()
            except Exception:
                cache["v"] = set()
            cache["t"] = now
        return set(cache["v"])

    return get
