"""The CUDA probe behind PinnedPool leaves no CUDA library mapped where CUDA cannot be used.

The daemon takes a process that maps libcudart.so* or libcuda.so* for an AI runtime, so a
process that only made a PinnedPool on a machine without a usable GPU must not end up
mapping either. These tests guard against such a mapped runtime: each runs a child that
makes a pool with CUDA registration asked for and then lists the basenames in its own
/proc/self/maps. They can only catch a runtime left mapped where a libcudart exists to be
loaded, so they skip, saying so, where none does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

# Makes the pool in a thread that then exits, and starts more threads afterwards: an
# unloaded library must leave nothing (a thread-specific destructor, say) that runs at a
# thread's exit. argv[1] == "forced" pretends an NVIDIA device node exists, so the probe
# does load libcudart, sees it fail (no driver here) and has to unload it again.
CHILD = """
import json, os, sys, threading
from ainative.mem import cuda
from ainative.mem.pool import PinnedPool

if sys.argv[1] == "forced":
    cuda.NVIDIA_NODES = ("/",)
out = {}

def make():
    with PinnedPool("1MiB", lock="try", cuda_register=True,
                    report_to_daemon=False) as pool:
        out["registered"], out["reason"] = pool.cuda_registered, pool.cuda_reason

t = threading.Thread(target=make)
t.start()
t.join()
for _ in range(3):
    t = threading.Thread(target=lambda: None)
    t.start()
    t.join()
with open("/proc/self/maps") as fh:
    paths = [line[line.index("/"):].strip() for line in fh if "/" in line]
out["mapped"] = sorted({os.path.basename(p) for p in paths})
print(json.dumps(out))
"""

# Which libcudart the probe would find, loaded in a throwaway child (never in pytest's
# own process, which other tests may look at).
FIND = """
import ctypes
from ainative.mem.cuda import libcudart_candidates
for name in libcudart_candidates():
    try:
        ctypes.CDLL(name)
    except OSError:
        continue
    print(name)
    break
"""

NVIDIA_NODES = ("/dev/nvidiactl", "/dev/dxg")


def loadable_libcudart() -> str | None:
    r = subprocess.run([sys.executable, "-c", FIND], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip() or None


def run_child(mode: str) -> dict[str, Any]:
    r = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True,
                       timeout=60)
    # A crash at a thread's exit (code of an unloaded library run) shows here as -11.
    assert r.returncode == 0, (r.returncode, r.stderr)
    out: dict[str, Any] = json.loads(r.stdout)
    return out


def cuda_libraries(mapped: list[str]) -> list[str]:
    return [b for b in mapped if b.startswith(("libcudart", "libcuda.so"))]


@pytest.fixture(scope="module")
def libcudart() -> str:
    name = loadable_libcudart()
    if name is None:
        pytest.skip("no libcudart installed here (pip nvidia-cuda-runtime or ldconfig), so "
                    "no CUDA runtime could be left mapped by the probe")
    return name


def test_a_pool_without_usable_cuda_maps_no_cuda_library(libcudart: str) -> None:
    out = run_child("plain")
    if out["registered"]:
        # CUDA works here: the process really uses it, so the runtime stays mapped.
        assert "registered through" in out["reason"]
        return
    assert out["reason"].startswith("no CUDA runtime"), out["reason"]
    assert cuda_libraries(out["mapped"]) == [], out
    if not any(os.path.exists(n) for n in NVIDIA_NODES):
        # No driver: libcudart is not even loaded, and torch/cupy are not imported.
        assert "libcudart: not loaded: no GPU driver's device node" in out["reason"]
        assert not [b for b in out["mapped"] if b.startswith(("libtorch", "libc10"))]


@pytest.mark.skipif(any(os.path.exists(n) for n in NVIDIA_NODES),
                    reason="an NVIDIA driver node exists: a failed probe may leave libcuda "
                           "loaded, and libcudart with it, by design")
def test_a_libcudart_loaded_and_found_unusable_is_unloaded(libcudart: str) -> None:
    out = run_child("forced")
    assert out["registered"] is False
    # It was loaded and called (the error comes from cudaGetDeviceCount) ...
    assert "cudaGetDeviceCount error" in out["reason"], out["reason"]
    # ... and is gone again, without a crash when the probing thread exited.
    assert cuda_libraries(out["mapped"]) == [], out
