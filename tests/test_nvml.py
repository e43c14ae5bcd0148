"""NVML telemetry: without a GPU it says why and never raises; with one, real fields."""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any

import pytest

from ainative.gpu import nvml

HAVE_GPU = os.path.exists("/dev/nvidia0")


@pytest.mark.skipif(HAVE_GPU, reason="this checks the no-GPU path")
def test_without_a_gpu_everything_answers_plainly() -> None:
    rep = nvml.read_gpus()
    assert rep.available is False and rep.gpus == []
    assert "NVML" in rep.reason or "nvidia" in rep.reason.lower()
    assert nvml.compute_pids() == set()
    assert nvml.read_gpus().reason == rep.reason  # cached, still no exception


@pytest.mark.gpu
@pytest.mark.skipif(not HAVE_GPU, reason="no NVIDIA GPU here (/dev/nvidia0 absent)")
def test_with_a_gpu_fields_are_real() -> None:
    rep = nvml.read_gpus()
    assert rep.available, rep.reason
    g = rep.gpus[0]
    assert g.name != "?" and g.uuid.startswith("GPU-")
    assert g.memory_total and g.memory_used is not None and g.memory_used <= g.memory_total
    assert g.utilization_gpu is None or 0 <= g.utilization_gpu <= 100
    assert isinstance(nvml.compute_pids(), set)


class _NotSupported(Exception):
    pass


def _fake_nvml() -> Any:
    """A one-GPU NVML with a driver that lacks power readings: only reachable with a GPU,
    so its answers are simulated to check the field-by-field handling."""
    def no_power(_h: object) -> int:
        raise _NotSupported("Not Supported")

    procs = [SimpleNamespace(pid=101, usedGpuMemory=1 << 30),
             SimpleNamespace(pid=102, usedGpuMemory=None),  # what pynvml makes of N/A
             SimpleNamespace(pid=103, usedGpuMemory=(1 << 64) - 1)]  # raw N/A
    return SimpleNamespace(
        NVML_TEMPERATURE_GPU=0,
        nvmlDeviceGetCount=lambda: 1,
        nvmlSystemGetDriverVersion=lambda: b"550.1",
        nvmlDeviceGetHandleByIndex=lambda i: ("h", i),
        nvmlDeviceGetName=lambda h: b"Fake GPU",
        nvmlDeviceGetUUID=lambda h: "GPU-0000",
        nvmlDeviceGetUtilizationRates=lambda h: SimpleNamespace(gpu=40, memory=10),
        nvmlDeviceGetMemoryInfo=lambda h: SimpleNamespace(used=2 << 30, total=16 << 30),
        nvmlDeviceGetTemperature=lambda h, kind: 55,
        nvmlDeviceGetPowerUsage=no_power,
        nvmlDeviceGetComputeRunningProcesses=lambda h: procs,
        nvmlDeviceGetGraphicsRunningProcesses=lambda h: [SimpleNamespace(
            pid=201, usedGpuMemory=4096)],
    )


def test_a_missing_field_leaves_the_others(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(nvml._state, "init", True)
    monkeypatch.setitem(nvml._state, "nvml", _fake_nvml())
    rep = nvml.read_gpus()
    assert rep.available and rep.reason == "driver 550.1"
    g = rep.gpus[0]
    assert (g.name, g.uuid, g.power_w) == ("Fake GPU", "GPU-0000", None)
    assert (g.utilization_gpu, g.memory_used, g.temperature_c) == (40.0, 2 << 30, 55.0)
    mem = {p.pid: p.used_memory_bytes for p in g.processes}
    assert mem == {101: 1 << 30, 102: None, 103: None, 201: 4096}
    assert nvml.compute_pids() == {101, 102, 103}
