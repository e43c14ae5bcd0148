"""Registering a pool with CUDA (cudaHostRegister) when a CUDA runtime is importable, and
measuring host-to-device copy speed. Everything here is optional: without CUDA the pool
works and says it is unregistered, and why."""

from __future__ import annotations

import ctypes
import ctypes.util
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

CUDA_HOST_REGISTER_PORTABLE = 1


@dataclass
class CudaRuntime:
    name: str
    register: Callable[[int, int], int]  # (ptr, size) -> cudaError code
    unregister: Callable[[int], int]


def _via_torch() -> CudaRuntime | None:
    import torch

    if not torch.cuda.is_available():
        return None
    rt = torch.cuda.cudart()
    return CudaRuntime(
        "torch",
        lambda p, n: int(rt.cudaHostRegister(p, n, CUDA_HOST_REGISTER_PORTABLE)),
        lambda p: int(rt.cudaHostUnregister(p)))


def _via_cupy() -> CudaRuntime | None:
    import cupy

    if cupy.cuda.runtime.getDeviceCount() < 1:
        return None
    rt = cupy.cuda.runtime

    def reg(p: int, n: int) -> int:
        rt.hostRegister(p, n, CUDA_HOST_REGISTER_PORTABLE)
        return 0

    def unreg(p: int) -> int:
        rt.hostUnregister(p)
        return 0

    return CudaRuntime("cupy", reg, unreg)


def _libcudart_runtime(lib: ctypes.CDLL, name: str) -> CudaRuntime:
    return CudaRuntime(
        f"libcudart ({name})",
        lambda p, n: int(lib.cudaHostRegister(p, n, CUDA_HOST_REGISTER_PORTABLE)),
        lambda p: int(lib.cudaHostUnregister(p)))


def _via_libcudart() -> CudaRuntime | None:
    # cuda-python and plain installs both provide libcudart; ctypes needs no binding.
    candidates = [ctypes.util.find_library("cudart"), "libcudart.so", "libcudart.so.12",
                  "libcudart.so.11.0"]
    for name in [c for c in candidates if c]:
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        count = ctypes.c_int(0)
        if lib.cudaGetDeviceCount(ctypes.byref(count)) != 0 or count.value < 1:
            return None
        lib.cudaHostRegister.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint]
        lib.cudaHostUnregister.argtypes = [ctypes.c_void_p]
        return _libcudart_runtime(lib, name)
    return None


_cache: dict[str, Any] = {}


def find_runtime() -> tuple[CudaRuntime | None, str]:
    """The first CUDA runtime that works, or None and why not (cached)."""
    if "rt" in _cache:
        return _cache["rt"], _cache["why"]
    why = []
    rt: CudaRuntime | None = None
    for probe in (_via_torch, _via_cupy, _via_libcudart):
        try:
            rt = probe()
        except ImportError:
            why.append(f"{probe.__name__[5:]}: not installed")
            continue
        except Exception as e:
            why.append(f"{probe.__name__[5:]}: {e}")
            continue
        if rt is not None:
            break
        why.append(f"{probe.__name__[5:]}: no CUDA device")
    reason = f"registered through {rt.name}" if rt else "no CUDA runtime: " + "; ".join(why)
    _cache["rt"], _cache["why"] = rt, reason
    return rt, reason


def h2d_bandwidth(host: Any, repeats: int = 20) -> dict[str, Any] | None:
    """GB/s copying a NumPy array to the GPU (torch or cupy), or None without either."""
    try:
        import torch

        if torch.cuda.is_available():
            src = torch.from_numpy(host)
            dst = torch.empty(src.shape, dtype=src.dtype, device="cuda")
            dst.copy_(src, non_blocking=False)
            torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(repeats):
                dst.copy_(src, non_blocking=True)
            torch.cuda.synchronize()
            dt = time.perf_counter() - t
            return {"gb_per_s": host.nbytes * repeats / dt / 1e9, "via": "torch"}
    except ImportError:
        pass
    try:
        import cupy

        dst = cupy.empty(host.shape, dtype=host.dtype)
        dst.set(host)
        cupy.cuda.runtime.deviceSynchronize()
        t = time.perf_counter()
        for _ in range(repeats):
            dst.set(host)
        cupy.cuda.runtime.deviceSynchronize()
        dt = time.perf_counter() - t
        return {"gb_per_s": host.nbytes * repeats / dt / 1e9, "via": "cupy"}
    except ImportError:
        return None
