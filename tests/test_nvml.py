"""NVML telemetry: without a GPU it says why and never raises; with one, real fields."""

from __future__ import annotations

import os

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
