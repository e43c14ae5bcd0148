"""NVML telemetry per GPU and per process, through nvidia-ml-py (pynvml).

Without a driver or a GPU every call returns an unavailable report with a plain reason;
nothing here raises for a missing GPU. Each field is read on its own: one that a GPU or
driver does not support is None and named in the GPU's `unsupported` (any other failure
goes to `errors`, with NVML's words), and the other fields still come.

Per-process SM utilisation comes from NVML's sample buffer
(nvmlDeviceGetProcessUtilization), asked from the last sample timestamp seen on that GPU,
so repeated reads fetch only new samples; the latest one per process is kept a while, so
two readers (the daemon's sampler and a Prometheus scrape) do not take each other's.
The records returned are in report.py.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import psutil

from ainative.gpu.report import GpuProcess, GpuReport, GpuStatus

__all__ = ["GpuProcess", "GpuReport", "GpuStatus", "NvmlReader", "cached_compute_pids",
           "compute_pids", "read_gpus"]

T = TypeVar("T")

# NVML error values (nvml.h) worth a plain sentence; any other is reported as NVML words it.
_INIT_ERRORS = {
    12: "NVML library not found (no NVIDIA driver on this machine)",  # LIBRARY_NOT_FOUND
    9: "NVIDIA driver is installed but not loaded (no GPU, or the module failed)",
    4: "NVML refused access (no permission on /dev/nvidia*)",  # NO_PERMISSION
}
_NOT_SUPPORTED = {3, 13}  # NOT_SUPPORTED, FUNCTION_NOT_FOUND (a driver older than the call)
_NOT_FOUND = 6  # from nvmlDeviceGetProcessUtilization: no sample newer than the timestamp

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


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


class _Fields:
    """Reads one field at a time and remembers which ones NVML could not give."""

    def __init__(self) -> None:
        self.unsupported: list[str] = []
        self.errors: dict[str, str] = {}

    def note(self, e: BaseException, names: tuple[str, ...]) -> None:
        for n in names:
            if getattr(e, "value", None) in _NOT_SUPPORTED:
                self.unsupported.append(n)
            else:
                self.errors[n] = str(e) or type(e).__name__

    def get(self, fn: Callable[[], T], *names: str) -> T | None:
        try:
            return fn()
        except Exception as e:
            self.note(e, names)
            return None


def _memory(v: int | None) -> int | None:
    # NVML_VALUE_NOT_AVAILABLE is reported as a huge unsigned value, or None by pynvml.
    return None if v is None or v >= (1 << 63) else int(v)


def _percent(v: Any) -> float | None:
    return float(v) if v is not None and 0 <= v <= 100 else None


def _memory_info(nv: Any, h: Any) -> Any:
    # v2 leaves the driver's reserved memory out of "used", as nvidia-smi and DCGM do (on
    # an H100 with driver 580, v1 counted ~480 MiB more); a driver without v2 gets v1.
    v2 = getattr(nv, "nvmlMemory_v2", None)
    if v2 is not None:
        try:
            return nv.nvmlDeviceGetMemoryInfo(h, version=v2)
        except Exception as e:
            if getattr(e, "value", None) not in _NOT_SUPPORTED:
                raise
    return nv.nvmlDeviceGetMemoryInfo(h)


def _process_name(pid: int) -> str | None:
    # NVML gives host pids: one in another container (pid namespace) is not visible here.
    try:
        return psutil.Process(pid).name()
    except (psutil.Error, OSError):
        return None


@dataclass
class _Sample:
    sm: float | None
    mem: float | None
    seen: float  # monotonic time it was first fetched


class _ProcessSampler:
    """Per GPU: the last NVML sample timestamp fetched and the latest sample per pid."""

    def __init__(self, max_age_s: float, clock: Callable[[], float]) -> None:
        self.max_age_s, self.clock = max_age_s, clock
        self._lock = threading.Lock()
        self._since: dict[str, int] = {}
        self._latest: dict[str, dict[int, _Sample]] = {}

    def read(self, nv: Any, h: Any, gpu: str, pids: set[int],
             f: _Fields) -> dict[int, _Sample]:
        with self._lock:
            since = self._since.get(gpu, 0)
            try:
                samples = nv.nvmlDeviceGetProcessUtilization(h, since)
            except Exception as e:
                samples = []
                if getattr(e, "value", None) != _NOT_FOUND:
                    f.note(e, ("processes.sm_utilization",))
            now = self.clock()
            latest = self._latest.setdefault(gpu, {})
            for s in sorted(samples, key=lambda s: int(s.timeStamp)):
                latest[int(s.pid)] = _Sample(_percent(s.smUtil), _percent(s.memUtil), now)
                self._since[gpu] = max(self._since.get(gpu, 0), int(s.timeStamp))
            for pid in [p for p, s in latest.items()
                        if p not in pids or now - s.seen > self.max_age_s]:
                del latest[pid]
            return dict(latest)


class NvmlReader:
    """Reads every GPU into a GpuReport (call it); never raises. One reader keeps the
    per-GPU process-utilisation state, so a caller that reads repeatedly should keep
    one (read_gpus uses a module-wide one). A process's SM utilisation is its latest NVML
    sample, dropped (None) once no newer one has come for sample_max_age_s."""

    def __init__(self, sample_max_age_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._samples = _ProcessSampler(sample_max_age_s, clock)

    def __call__(self) -> GpuReport:
        try:
            nv = _nvml()
        except RuntimeError as e:
            return GpuReport(False, str(e))
        try:
            count = int(nv.nvmlDeviceGetCount())
        except Exception as e:
            return GpuReport(False, f"NVML could not count GPUs: {e!s}")
        driver = _Fields().get(lambda: _text(nv.nvmlSystemGetDriverVersion()))
        gpus = []
        for i in range(count):
            h = _Fields().get(partial(nv.nvmlDeviceGetHandleByIndex, i))
            if h is None:
                continue
            try:
                gpus.append(self._gpu(nv, i, h))
            except Exception as e:  # an answer NVML should not give: say so, go on
                gpus.append(GpuStatus(i, "?", "?", errors={"read": f"{e!r}"}))
        if not gpus:
            return GpuReport(False, f"NVML works (driver {driver or '?'}) but reports no GPU",
                             driver_version=driver)
        return GpuReport(True, f"driver {driver or '?'}", gpus, driver)

    def _gpu(self, nv: Any, i: int, h: Any) -> GpuStatus:
        f = _Fields()
        name = f.get(lambda: _text(nv.nvmlDeviceGetName(h)), "name")
        uuid = f.get(lambda: _text(nv.nvmlDeviceGetUUID(h)), "uuid")
        g = GpuStatus(index=i, name=name or "?", uuid=uuid or "?")
        util = f.get(lambda: nv.nvmlDeviceGetUtilizationRates(h),
                     "utilization_gpu", "utilization_memory")
        if util is not None:
            g.utilization_gpu, g.utilization_memory = float(util.gpu), float(util.memory)
        mem = f.get(lambda: _memory_info(nv, h),
                    "memory_used", "memory_total", "memory_free")
        if mem is not None:
            g.memory_used, g.memory_total = _memory(mem.used), _memory(mem.total)
            g.memory_free = _memory(getattr(mem, "free", None))
        g.temperature_c = f.get(lambda: float(
            nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU)), "temperature_c")
        g.power_w = f.get(lambda: nv.nvmlDeviceGetPowerUsage(h) / 1000.0, "power_w")
        g.power_limit_w = f.get(lambda: nv.nvmlDeviceGetEnforcedPowerLimit(h) / 1000.0,
                                "power_limit_w")
        sm, memclk = getattr(nv, "NVML_CLOCK_SM", 1), getattr(nv, "NVML_CLOCK_MEM", 2)
        g.clock_sm_mhz = f.get(lambda: int(nv.nvmlDeviceGetClockInfo(h, sm)), "clock_sm_mhz")
        g.clock_mem_mhz = f.get(lambda: int(nv.nvmlDeviceGetClockInfo(h, memclk)),
                                "clock_mem_mhz")
        g.clock_sm_max_mhz = f.get(lambda: int(nv.nvmlDeviceGetMaxClockInfo(h, sm)),
                                   "clock_sm_max_mhz")
        g.clock_mem_max_mhz = f.get(lambda: int(nv.nvmlDeviceGetMaxClockInfo(h, memclk)),
                                    "clock_mem_max_mhz")
        g.pci_bus_id = f.get(lambda: _text(nv.nvmlDeviceGetPciInfo(h).busId), "pci_bus_id")
        g.pcie_generation = f.get(lambda: int(nv.nvmlDeviceGetCurrPcieLinkGeneration(h)),
                                  "pcie_generation")
        g.pcie_width = f.get(lambda: int(nv.nvmlDeviceGetCurrPcieLinkWidth(h)), "pcie_width")
        g.processes = self._processes(nv, h, uuid or str(i), f)
        g.unsupported, g.errors = f.unsupported, f.errors
        return g

    def _processes(self, nv: Any, h: Any, gpu: str, f: _Fields) -> list[GpuProcess]:
        out: list[GpuProcess] = []
        for kind, getter in (("compute", "nvmlDeviceGetComputeRunningProcesses"),
                             ("graphics", "nvmlDeviceGetGraphicsRunningProcesses")):
            procs = f.get(partial(getattr(nv, getter), h), f"processes.{kind}") or []
            out += [GpuProcess(int(p.pid), _memory(getattr(p, "usedGpuMemory", None)), kind)
                    for p in procs]
        util = self._samples.read(nv, h, gpu, {p.pid for p in out}, f)
        names = {pid: _process_name(pid) for pid in {p.pid for p in out}}
        for p in out:
            p.name = names[p.pid]
            s = util.get(p.pid)
            if s is not None:
                p.sm_utilization, p.memory_utilization = s.sm, s.mem
        return out


_reader = NvmlReader()


def read_gpus() -> GpuReport:
    """Every GPU and its processes now (module-wide reader); never raises."""
    return _reader()


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
