"""GPU metrics for Prometheus, named like NVIDIA's DCGM exporter where they overlap.

Existing Grafana dashboards query dcgm-exporter's families (DCGM_FI_DEV_GPU_UTIL, ...)
with its labels, so the same names, units and labels here make them work unchanged on a
machine that runs ainative instead. What dcgm-exporter exposes was looked up, not guessed:

- family names and units: its default collector list, NVIDIA/dcgm-exporter
  etc/default-counters.csv (clocks in MHz, temperature in C, power in W, utilisation in %,
  framebuffer used/free in MiB); these are the names before dcgm-exporter 4.9, whose
  release notes rename them and change units (the dashboards in use query these);
- labels: its GPU rendering template, internal/pkg/rendermetrics/render_metrics.go
  (gpu, UUID, pci_bus_id, device, modelName, Hostname), with device "nvidia<gpu>" and
  gpu the device index (internal/pkg/collector).

DCGM dropped per-process fields, so the per-process families are ainative's own. A field
the GPU does not support is left out of its family (as dcgm-exporter skips blank values),
never written as 0. Use: ``registry.register(GpuCollector())``, or with any reader that
returns a GpuReport (tests inject one).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from ainative.gpu.nvml import read_gpus
from ainative.gpu.report import GpuReport, GpuStatus

DCGM_LABELS = ["gpu", "UUID", "pci_bus_id", "device", "modelName", "Hostname"]
PROCESS_LABELS = ["gpu", "pid", "process"]
_MIB = 1 << 20

# name -> (help, value from a GPU's status; None leaves the GPU out of the family)
_DCGM: dict[str, tuple[str, Callable[[GpuStatus], float | None]]] = {
    "DCGM_FI_DEV_GPU_UTIL": ("GPU utilisation (in %).", lambda g: g.utilization_gpu),
    "DCGM_FI_DEV_MEM_COPY_UTIL": ("Memory (controller) utilisation (in %).",
                                  lambda g: g.utilization_memory),
    "DCGM_FI_DEV_FB_USED": ("Framebuffer memory used (in MiB).",
                            lambda g: None if g.memory_used is None else g.memory_used // _MIB),
    "DCGM_FI_DEV_FB_FREE": ("Framebuffer memory free (in MiB).",
                            lambda g: None if g.memory_free is None else g.memory_free // _MIB),
    "DCGM_FI_DEV_GPU_TEMP": ("GPU temperature (in C).", lambda g: g.temperature_c),
    "DCGM_FI_DEV_POWER_USAGE": ("Power draw (in W).", lambda g: g.power_w),
    "DCGM_FI_DEV_SM_CLOCK": ("SM clock frequency (in MHz).", lambda g: g.clock_sm_mhz),
    "DCGM_FI_DEV_MEM_CLOCK": ("Memory clock frequency (in MHz).", lambda g: g.clock_mem_mhz),
}
_AVAILABLE = ("ainative_gpu_available",
              "1 when NVML answers and reports at least one GPU, else 0.")
_PROC_MEM = ("ainative_gpu_process_memory_bytes",
             "GPU memory used by a process on a GPU (bytes), as NVML reports it.")
_PROC_SM = ("ainative_gpu_process_sm_utilization_percent",
            "Share of a GPU's SMs a process used over NVML's latest sample (in %).")


class GpuCollector(Collector):
    """A custom collector: every scrape reads the GPUs once through ``reader``."""

    def __init__(self, reader: Callable[[], GpuReport] = read_gpus,
                 hostname: str | None = None) -> None:
        self.reader = reader
        self.hostname = hostname if hostname is not None else socket.gethostname()

    def describe(self) -> Iterator[GaugeMetricFamily]:
        # Names only, so registering does not read the GPUs (and name clashes are caught).
        yield from self._families().values()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            rep = self.reader()
        except Exception as e:  # a scrape must never fail because of the GPU
            rep = GpuReport(False, f"GPU reader failed: {e!r}")
        fams = self._families()
        fams[_AVAILABLE[0]].add_metric([], 1.0 if rep.available else 0.0)
        for g in rep.gpus:
            labels = self._labels(g)
            for name, (_, value) in _DCGM.items():
                v = value(g)
                if v is not None:
                    fams[name].add_metric(labels, float(v))
            self._processes(g, fams)
        yield from fams.values()

    def _labels(self, g: GpuStatus) -> list[str]:
        return [str(g.index), g.uuid, g.pci_bus_id or "", f"nvidia{g.index}", g.name,
                self.hostname]

    @staticmethod
    def _processes(g: GpuStatus, fams: dict[str, GaugeMetricFamily]) -> None:
        # A pid can be listed as compute and graphics: one series per (gpu, pid).
        mem: dict[int, int] = {}
        sm: dict[int, float] = {}
        names: dict[int, str] = {}
        for p in g.processes:
            names[p.pid] = p.name or ""
            if p.used_memory_bytes is not None:
                mem[p.pid] = max(mem.get(p.pid, 0), p.used_memory_bytes)
            if p.sm_utilization is not None:
                sm[p.pid] = p.sm_utilization
        for pid, v in sorted(mem.items()):
            fams[_PROC_MEM[0]].add_metric([str(g.index), str(pid), names[pid]], float(v))
        for pid, u in sorted(sm.items()):
            fams[_PROC_SM[0]].add_metric([str(g.index), str(pid), names[pid]], u)

    @staticmethod
    def _families() -> dict[str, GaugeMetricFamily]:
        fams = {name: GaugeMetricFamily(name, doc, labels=DCGM_LABELS)
                for name, (doc, _) in _DCGM.items()}
        fams[_AVAILABLE[0]] = GaugeMetricFamily(*_AVAILABLE, labels=[])
        for name, doc in (_PROC_MEM, _PROC_SM):
            fams[name] = GaugeMetricFamily(name, doc, labels=PROCESS_LABELS)
        return fams
