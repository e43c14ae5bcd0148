"""GPU telemetry, `ainative gpu` and the DCGM-named Prometheus families.

There is no GPU on the development machine, so NVML is replaced AT THE NVML BOUNDARY
ONLY: a fake `pynvml` module (put in sys.modules) answers the nvml* calls the telemetry
makes, with realistic values built from the real pynvml structures, and raises the real
pynvml exception classes (NVMLError_NotSupported, ...) where a real driver would. All of
ainative above that boundary (reader, report, CLI, collector) is the real code. Expected
values are derived from the fake's inputs in the tests, never from ainative's output.

One test runs the real CLI as a subprocess against the real library, without a GPU; the
GPU-gated check with real fields is tests/test_nvml.py::test_with_a_gpu_fields_are_real.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from dataclasses import fields
from pathlib import Path
from typing import Any

import pynvml as real  # the real bindings: their error classes and structures
import pytest
from click.testing import CliRunner
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from ainative.cli import main
from ainative.gpu import nvml
from ainative.gpu.metrics import GpuCollector
from ainative.gpu.report import (
    GpuJson,
    GpuProcess,
    GpuProcessJson,
    GpuReport,
    GpuStatus,
    report_json,
)

HAVE_GPU = os.path.exists("/dev/nvidia0")
CHECKOUT = Path(__file__).resolve().parents[2]
MIB = 1024 * 1024
NOT_VISIBLE_PID = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1000  # other pid ns
ME = os.getpid()
MY_NAME = Path("/proc/self/comm").read_text().strip()

# What the fake driver reports: an A100 that supports everything, and a T4-like board
# whose driver lacks power readings, max clocks, graphics processes and process samples.
GPUS: list[dict[str, Any]] = [
    {"name": "NVIDIA A100-SXM4-40GB", "uuid": "GPU-1f6c5a8e-7d44-2b1c-9a3e-0c5d6e7f8a9b",
     "bus": b"00000000:07:00.0", "util": (87, 41),
     # total, used, free bytes as nvidia-smi shows them; reserved by the driver on top
     "mem": (42_949_672_960, 31_457_280_000, 10_990_125_056), "reserved": 502_267_904,
     "memory_v2": True,
     "temp": 64, "power_mw": 287_455, "limit_mw": 400_000, "clocks": (1410, 1215),
     "max_clocks": (1410, 1215), "pcie": (4, 16),
     "compute": [(ME, 30_000_000_000), (NOT_VISIBLE_PID, 1_073_741_824)], "graphics": []},
    {"name": "Tesla T4", "uuid": "GPU-8a7b6c5d-4e3f-2a1b-0c9d-8e7f6a5b4c3d",
     "bus": b"00000000:3B:00.0", "util": (0, 0),
     "mem": (16_106_127_360, 419_430_400, 15_581_839_360), "reserved": 104_857_600,
     "memory_v2": False,  # an older driver: v1 only, whose "used" counts the reserved
     "temp": 38, "power_mw": None, "limit_mw": 70_000, "clocks": (300, 405),
     "max_clocks": None, "pcie": None, "compute": [], "graphics": None},
]


class FakeNvml:
    """The nvml* calls, answering from GPUS; per-process samples are added by tests."""

    def __init__(self) -> None:
        self.samples: list[list[Any]] = [[], []]
        self.sample_calls: list[tuple[int, int]] = []  # (gpu, lastSeenTimeStamp) asked

    def module(self) -> types.ModuleType:
        m = types.ModuleType("pynvml")
        for k in ("NVML_TEMPERATURE_GPU", "NVML_CLOCK_SM", "NVML_CLOCK_MEM", "nvmlMemory_v2"):
            setattr(m, k, getattr(real, k))
        for k in dir(self):
            if k.startswith("nvml"):
                setattr(m, k, getattr(self, k))
        return m

    def add_sample(self, gpu: int, pid: int, ts: int, sm: int, mem: int) -> None:
        self.samples[gpu].append(real.c_nvmlProcessUtilizationSample_t(
            pid=pid, timeStamp=ts, smUtil=sm, memUtil=mem, encUtil=0, decUtil=0))

    @staticmethod
    def _g(h: Any) -> dict[str, Any]:
        return GPUS[h["index"]]

    def nvmlInit(self) -> None:
        pass

    def nvmlSystemGetDriverVersion(self) -> str:
        return "550.54.15"

    def nvmlDeviceGetCount(self) -> int:
        return len(GPUS)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> dict[str, int]:
        if not 0 <= i < len(GPUS):
            raise real.NVMLError_InvalidArgument()
        return {"index": i}

    def nvmlDeviceGetName(self, h: Any) -> str:
        return str(self._g(h)["name"])

    def nvmlDeviceGetUUID(self, h: Any) -> str:
        return str(self._g(h)["uuid"])

    def nvmlDeviceGetUtilizationRates(self, h: Any) -> Any:
        gpu, mem = self._g(h)["util"]
        return real.c_nvmlUtilization_t(gpu=gpu, memory=mem)

    def nvmlDeviceGetMemoryInfo(self, h: Any, version: int | None = None) -> Any:
        g = self._g(h)
        total, used, free = g["mem"]
        if version is None:
            return real.c_nvmlMemory_t(total=total, used=used + g["reserved"], free=free)
        assert version == real.nvmlMemory_v2
        if not g["memory_v2"]:
            raise real.NVMLError_FunctionNotFound()
        return real.c_nvmlMemory_v2_t(version=version, total=total, reserved=g["reserved"],
                                      used=used, free=free)

    def nvmlDeviceGetTemperature(self, h: Any, sensor: int) -> int:
        assert sensor == real.NVML_TEMPERATURE_GPU
        return int(self._g(h)["temp"])

    def nvmlDeviceGetPowerUsage(self, h: Any) -> int:
        if self._g(h)["power_mw"] is None:
            raise real.NVMLError_NotSupported()
        return int(self._g(h)["power_mw"])

    def nvmlDeviceGetEnforcedPowerLimit(self, h: Any) -> int:
        return int(self._g(h)["limit_mw"])

    def _clock(self, key: str, h: Any, kind: int) -> int:
        vals = self._g(h)[key]
        if vals is None:
            raise real.NVMLError_NotSupported()
        return int(vals[{real.NVML_CLOCK_SM: 0, real.NVML_CLOCK_MEM: 1}[kind]])

    def nvmlDeviceGetClockInfo(self, h: Any, kind: int) -> int:
        return self._clock("clocks", h, kind)

    def nvmlDeviceGetMaxClockInfo(self, h: Any, kind: int) -> int:
        return self._clock("max_clocks", h, kind)

    def nvmlDeviceGetPciInfo(self, h: Any) -> Any:
        return real.nvmlPciInfo_t(busId=self._g(h)["bus"])

    def nvmlDeviceGetCurrPcieLinkGeneration(self, h: Any) -> int:
        if self._g(h)["pcie"] is None:
            raise real.NVMLError_Unknown()  # not "not supported": an error to report
        return int(self._g(h)["pcie"][0])

    def nvmlDeviceGetCurrPcieLinkWidth(self, h: Any) -> int:
        if self._g(h)["pcie"] is None:
            raise real.NVMLError_Unknown()
        return int(self._g(h)["pcie"][1])

    def _procs(self, key: str, h: Any) -> list[Any]:
        procs = self._g(h)[key]
        if procs is None:
            raise real.NVMLError_NotSupported()
        return [real.nvmlFriendlyObject({"pid": pid, "usedGpuMemory": mem,
                                         "gpuInstanceId": 0xFFFFFFFF,
                                         "computeInstanceId": 0xFFFFFFFF})
                for pid, mem in procs]

    def nvmlDeviceGetComputeRunningProcesses(self, h: Any) -> list[Any]:
        return self._procs("compute", h)

    def nvmlDeviceGetGraphicsRunningProcesses(self, h: Any) -> list[Any]:
        return self._procs("graphics", h)

    def nvmlDeviceGetProcessUtilization(self, h: Any, last_seen: int) -> list[Any]:
        i = h["index"]
        self.sample_calls.append((i, last_seen))
        if i == 1:
            raise real.NVMLError_NotSupported()
        new = [s for s in self.samples[i] if s.timeStamp > last_seen]
        if not new:
            raise real.NVMLError_NotFound()  # what NVML answers when nothing is newer
        return new


def _fresh_nvml_state(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nvml, "_state", {"init": False, "error": None, "nvml": None})


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeNvml:
    f = FakeNvml()
    monkeypatch.setitem(sys.modules, "pynvml", f.module())
    _fresh_nvml_state(monkeypatch)
    return f


def test_every_field_comes_from_nvml(fake: FakeNvml) -> None:
    rep = nvml.NvmlReader()()
    assert rep.available and rep.driver_version == "550.54.15"
    assert [g.index for g in rep.gpus] == [0, 1]
    g, src = rep.gpus[0], GPUS[0]
    assert (g.name, g.uuid, g.pci_bus_id) == (src["name"], src["uuid"], src["bus"].decode())
    assert (g.utilization_gpu, g.utilization_memory) == src["util"]
    assert (g.memory_total, g.memory_used, g.memory_free) == src["mem"]
    assert g.temperature_c == src["temp"]
    assert g.power_w == pytest.approx(src["power_mw"] / 1000)
    assert g.power_limit_w == pytest.approx(src["limit_mw"] / 1000)
    assert (g.clock_sm_mhz, g.clock_mem_mhz) == src["clocks"]
    assert (g.clock_sm_max_mhz, g.clock_mem_max_mhz) == src["max_clocks"]
    assert (g.pcie_generation, g.pcie_width) == src["pcie"]
    assert g.unsupported == [] and g.errors == {}


def test_unsupported_fields_are_none_and_named(fake: FakeNvml) -> None:
    g, src = nvml.NvmlReader()().gpus[1], GPUS[1]
    assert g.power_w is None and g.clock_sm_max_mhz is None and g.clock_mem_max_mhz is None
    assert set(g.unsupported) == {"power_w", "clock_sm_max_mhz", "clock_mem_max_mhz",
                                  "processes.graphics", "processes.sm_utilization"}
    # another NVML error is not "not supported": it is reported with NVML's words
    assert g.pcie_generation is None and g.pcie_width is None
    assert g.errors == {"pcie_generation": str(real.NVMLError_Unknown()),
                        "pcie_width": str(real.NVMLError_Unknown())}
    # and everything else on that GPU is still there
    assert g.name == src["name"] and g.memory_free == src["mem"][2]
    assert g.memory_used == src["mem"][1] + src["reserved"]  # v1: what that driver says
    assert g.power_limit_w == pytest.approx(src["limit_mw"] / 1000)
    assert (g.clock_sm_mhz, g.clock_mem_mhz) == src["clocks"] and g.processes == []


def test_processes_names_and_memory(fake: FakeNvml) -> None:
    procs = nvml.NvmlReader()().gpus[0].processes
    assert [(p.pid, p.kind, p.used_memory_bytes) for p in procs] == [
        (pid, "compute", mem) for pid, mem in GPUS[0]["compute"]]
    names = {p.pid: p.name for p in procs}
    assert names == {ME: MY_NAME, NOT_VISIBLE_PID: None}  # another pid namespace: None


def test_process_sm_utilization_follows_the_last_timestamp(fake: FakeNvml) -> None:
    now = [1000.0]
    reader = nvml.NvmlReader(sample_max_age_s=30.0, clock=lambda: now[0])

    def sm() -> dict[int, float | None]:
        return {p.pid: p.sm_utilization for p in reader().gpus[0].processes}

    assert sm() == {ME: None, NOT_VISIBLE_PID: None}  # no sample yet: unknown, not 0
    assert fake.sample_calls[-2:] == [(0, 0), (1, 0)]
    fake.add_sample(0, ME, ts=5_000_100, sm=35, mem=12)
    fake.add_sample(0, ME, ts=5_000_200, sm=71, mem=20)  # the latest one counts
    fake.add_sample(0, 777_777, ts=5_000_150, sm=99, mem=1)  # a pid gone since
    assert sm() == {ME: 71.0, NOT_VISIBLE_PID: None}
    assert reader().gpus[0].processes[0].memory_utilization == 20.0
    assert fake.sample_calls[-2] == (0, 5_000_200)  # asks only for newer samples
    now[0] += 20  # nothing new yet: the last sample is still recent
    assert sm()[ME] == 71.0
    fake.add_sample(0, ME, ts=5_900_000, sm=8, mem=3)
    assert sm()[ME] == 8.0 and fake.sample_calls[-2] == (0, 5_000_200)
    now[0] += 31  # no sample for longer than the age limit: unknown again
    assert sm()[ME] is None and fake.sample_calls[-2] == (0, 5_900_000)


def test_no_pynvml_no_driver_never_raise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails
    _fresh_nvml_state(monkeypatch)
    rep = nvml.NvmlReader()()
    assert (rep.available, rep.gpus) == (False, [])
    assert rep.reason == "nvidia-ml-py (pynvml) is not installed"

    def init() -> None:
        raise real.NVMLError_DriverNotLoaded()

    mod = types.ModuleType("pynvml")
    mod.nvmlInit = init  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pynvml", mod)
    _fresh_nvml_state(monkeypatch)
    rep = nvml.NvmlReader()()
    assert not rep.available and "driver is installed but not loaded" in rep.reason


def test_json_schema_mirrors_the_records() -> None:
    assert set(GpuJson.__annotations__) == {f.name for f in fields(GpuStatus)}
    assert set(GpuProcessJson.__annotations__) == {f.name for f in fields(GpuProcess)}


def test_cli_json(fake: FakeNvml) -> None:
    r = CliRunner().invoke(main, ["gpu", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["available"] is True and out["schema"] == 1
    g0, g1 = out["gpus"]
    assert g0["uuid"] == GPUS[0]["uuid"] and g0["memory_used"] == GPUS[0]["mem"][1]
    assert g0["power_w"] == pytest.approx(GPUS[0]["power_mw"] / 1000)
    assert [(p["pid"], p["name"]) for p in g0["processes"]] == [
        (ME, MY_NAME), (NOT_VISIBLE_PID, None)]
    assert g1["power_w"] is None and "power_w" in g1["unsupported"]
    assert set(g0) == set(GpuJson.__annotations__)


def test_cli_human(fake: FakeNvml) -> None:
    r = CliRunner().invoke(main, ["gpu"], terminal_width=200)
    assert r.exit_code == 0, r.output
    for text in (GPUS[0]["name"], GPUS[1]["name"], "not supported", str(NOT_VISIBLE_PID),
                 f"{GPUS[0]['mem'][1] // MIB} / {GPUS[0]['mem'][0] // MIB} MiB"):
        assert text in r.output


def test_cli_without_a_gpu_is_plain(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)
    _fresh_nvml_state(monkeypatch)
    r = CliRunner().invoke(main, ["gpu"])
    assert r.exit_code == 0 and r.exception is None
    assert "nvidia-ml-py (pynvml) is not installed" in r.output
    r = CliRunner().invoke(main, ["gpu", "--json"])
    out = json.loads(r.output)
    assert (out["available"], out["gpus"]) == (False, [])
    assert out["reason"] == "nvidia-ml-py (pynvml) is not installed"


@pytest.mark.skipif(HAVE_GPU, reason="this checks the no-GPU path with the real library")
def test_real_cli_subprocess_without_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    # What the real library says here, read in this process with fresh state ...
    _fresh_nvml_state(monkeypatch)
    here = nvml.NvmlReader()()
    assert not here.available and here.reason
    # ... is what the real command prints, with no traceback.
    env = {**os.environ, "PYTHONPATH": str(CHECKOUT / "src")}
    p = subprocess.run([sys.executable, "-m", "ainative", "gpu", "--json"], cwd=CHECKOUT,
                       env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    out = json.loads(p.stdout)
    assert out["available"] is False and out["gpus"] == []
    assert out["reason"] == here.reason and ("NVML" in out["reason"]
                                             or "nvidia" in out["reason"].lower())


def _scrape(reader: Any) -> dict[str, list[Any]]:
    reg = CollectorRegistry()
    reg.register(GpuCollector(reader, hostname="node-7"))
    text = generate_latest(reg).decode()
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def test_prometheus_dcgm_names_labels_and_values(fake: FakeNvml) -> None:
    fams = _scrape(nvml.NvmlReader())
    src0, src1 = GPUS
    by_gpu = {name: {s.labels["gpu"]: s for s in samples} for name, samples in fams.items()
              if name.startswith("DCGM_")}
    s = by_gpu["DCGM_FI_DEV_FB_USED"]["0"]
    assert s.labels == {"gpu": "0", "UUID": src0["uuid"], "pci_bus_id": src0["bus"].decode(),
                        "device": "nvidia0", "modelName": src0["name"], "Hostname": "node-7"}
    assert s.value == src0["mem"][1] // MIB
    assert by_gpu["DCGM_FI_DEV_FB_FREE"]["1"].value == src1["mem"][2] // MIB
    assert by_gpu["DCGM_FI_DEV_GPU_UTIL"]["0"].value == src0["util"][0]
    assert by_gpu["DCGM_FI_DEV_MEM_COPY_UTIL"]["0"].value == src0["util"][1]
    assert by_gpu["DCGM_FI_DEV_GPU_TEMP"]["1"].value == src1["temp"]
    assert by_gpu["DCGM_FI_DEV_POWER_USAGE"]["0"].value == pytest.approx(
        src0["power_mw"] / 1000)
    assert "1" not in by_gpu["DCGM_FI_DEV_POWER_USAGE"]  # not supported: absent, not 0
    assert by_gpu["DCGM_FI_DEV_SM_CLOCK"]["1"].value == src1["clocks"][0]
    assert by_gpu["DCGM_FI_DEV_MEM_CLOCK"]["0"].value == src0["clocks"][1]
    assert [s.value for s in fams["ainative_gpu_available"]] == [1.0]
    mem = {(s.labels["gpu"], s.labels["pid"], s.labels["process"]): s.value
           for s in fams["ainative_gpu_process_memory_bytes"]}
    assert mem == {("0", str(pid), MY_NAME if pid == ME else ""): float(b)
                   for pid, b in src0["compute"]}


def test_prometheus_process_sm_utilization(fake: FakeNvml) -> None:
    fake.add_sample(0, ME, ts=42, sm=63, mem=9)
    fams = _scrape(nvml.NvmlReader())
    [s] = fams["ainative_gpu_process_sm_utilization_percent"]
    assert s.labels == {"gpu": "0", "pid": str(ME), "process": MY_NAME} and s.value == 63


def test_prometheus_registering_reads_nothing_and_failures_read_as_unavailable() -> None:
    calls: list[int] = []

    def broken() -> GpuReport:
        calls.append(1)
        raise RuntimeError("boom")

    reg = CollectorRegistry(auto_describe=True)
    reg.register(GpuCollector(broken, hostname="h"))
    assert calls == []  # describe() gives the names without touching NVML
    fams = {f.name: f.samples for f in text_string_to_metric_families(
        generate_latest(reg).decode())}
    assert calls == [1] and [s.value for s in fams["ainative_gpu_available"]] == [0.0]
    assert fams["DCGM_FI_DEV_GPU_UTIL"] == []
    fams = _scrape(lambda: GpuReport(False, "no driver"))
    assert [s.value for s in fams["ainative_gpu_available"]] == [0.0]


def test_report_json_round_trips(fake: FakeNvml) -> None:
    rep = nvml.NvmlReader()()
    out = json.loads(json.dumps(report_json(rep)))
    assert out["gpus"][1]["errors"] == rep.gpus[1].errors
    assert out["gpus"][0]["processes"][0]["pid"] == ME
