"""Registering a pool with CUDA (cudaHostRegister) when a CUDA runtime is importable, and
measuring host-to-device copy speed. Everything here is optional: without CUDA the pool
works and says it is unregistered, and why."""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

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


def _wheel_libcudart() -> list[str]:
    # cuda-python's runtime comes as the nvidia-cuda-runtime wheel, outside ldconfig's path.
    try:
        import nvidia.cuda_runtime as wheel
    except ImportError:
        return []
    return sorted(p for d in wheel.__path__
                  for p in glob.glob(os.path.join(d, "lib", "libcudart.so*")))


def _error(lib: ctypes.CDLL, code: int) -> str:
    lib.cudaGetErrorString.restype = ctypes.c_char_p
    text = lib.cudaGetErrorString(code)
    hint = "" if os.path.exists("/dev/nvidiactl") else "; no NVIDIA driver loaded here"
    return f"error {code} ({text.decode() if text else 'unknown'}{hint})"


def load_libcudart() -> tuple[ctypes.CDLL, str]:
    """libcudart with at least one usable device, through ctypes (no Python binding needed).
    ImportError when there is no libcudart; RuntimeError saying why when it cannot run."""
    candidates = [*_wheel_libcudart(), ctypes.util.find_library("cudart"), "libcudart.so",
                  "libcudart.so.12", "libcudart.so.11.0"]
    for name in [c for c in candidates if c]:
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        count = ctypes.c_int(0)
        code = lib.cudaGetDeviceCount(ctypes.byref(count))
        if code != 0:
            raise RuntimeError(f"{name}: cudaGetDeviceCount {_error(lib, code)}")
        if count.value < 1:
            raise RuntimeError(f"{name}: no CUDA device")
        lib.cudaHostRegister.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint]
        lib.cudaHostUnregister.argtypes = [ctypes.c_void_p]
        lib.cudaMalloc.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t]
        lib.cudaFree.argtypes = [ctypes.c_void_p]
        lib.cudaMemcpy.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t,
                                   ctypes.c_int]
        return lib, name
    raise ImportError("libcudart not found")


def _via_libcudart() -> CudaRuntime | None:
    lib, name = load_libcudart()
    return CudaRuntime(
        f"libcudart ({name})",
        lambda p, n: int(lib.cudaHostRegister(p, n, CUDA_HOST_REGISTER_PORTABLE)),
        lambda p: int(lib.cudaHostUnregister(p)))


_cache: dict[str, Any] = {}


T = TypeVar("T")


def _first_that_works(tries: list[tuple[str, Callable[[], T | None]]]) -> tuple[T | None, str,
                                                                              list[str]]:
    """The first library (torch, cupy, libcudart) that gives an answer, its name, and why
    each one before it did not."""
    why: list[str] = []
    for name, attempt in tries:
        try:
            got = attempt()
        except ImportError:
            why.append(f"{name}: not installed")
            continue
        except Exception as e:
            why.append(f"{name}: {e}")
            continue
        if got is not None:
            return got, name, why
        why.append(f"{name}: no CUDA device")
    return None, "", why


def find_runtime() -> tuple[CudaRuntime | None, str]:
    """The first CUDA runtime that works, or None and why not (cached)."""
    if "rt" in _cache:
        return _cache["rt"], _cache["why"]
    rt, _name, why = _first_that_works(
        [("torch", _via_torch), ("cupy", _via_cupy), ("libcudart", _via_libcudart)])
    reason = f"registered through {rt.name}" if rt else "no CUDA runtime: " + "; ".join(why)
    _cache["rt"], _cache["why"] = rt, reason
    return rt, reason


def _timed(copy: Callable[[], None], sync: Callable[[], None], nbytes: int,
           repeats: int) -> float:
    copy()  # first copy outside the clock: context set-up, lazy allocation
    sync()
    t = time.perf_counter()
    for _ in range(repeats):
        copy()
    sync()
    return nbytes * repeats / (time.perf_counter() - t) / 1e9


def _h2d_torch(host: Any, repeats: int) -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    src = torch.from_numpy(host)
    dst = torch.empty(src.shape, dtype=src.dtype, device="cuda")
    # non_blocking lets a copy from page-locked memory go straight to DMA; from pageable
    # memory the driver stages it, which is the difference being measured.
    def copy() -> None:
        dst.copy_(src, non_blocking=True)

    return _timed(copy, torch.cuda.synchronize, host.nbytes, repeats)


def _h2d_cupy(host: Any, repeats: int) -> float | None:
    import cupy

    if cupy.cuda.runtime.getDeviceCount() < 1:
        return None
    dst = cupy.empty(host.shape, dtype=host.dtype)
    return _timed(lambda: dst.set(host), cupy.cuda.runtime.deviceSynchronize, host.nbytes,
                  repeats)


def _h2d_libcudart(host: Any, repeats: int) -> float | None:
    lib, _ = load_libcudart()
    dev = ctypes.c_void_p()
    code = lib.cudaMalloc(ctypes.byref(dev), host.nbytes)
    if code != 0:
        raise RuntimeError(f"cudaMalloc {_error(lib, code)}")
    src = host.ctypes.data

    def copy() -> None:
        rc = lib.cudaMemcpy(dev, src, host.nbytes, 1)  # 1: cudaMemcpyHostToDevice
        if rc != 0:
            raise RuntimeError(f"cudaMemcpy {_error(lib, rc)}")

    def sync() -> None:
        lib.cudaDeviceSynchronize()

    try:
        return _timed(copy, sync, host.nbytes, repeats)
    finally:
        lib.cudaFree(dev)


def h2d_bandwidth(host: Any, repeats: int = 20) -> tuple[float | None, str]:
    """GB/s copying a contiguous NumPy array to GPU 0, through torch, cupy or libcudart,
    and which one; (None, why) when none of them can."""
    gbs, name, why = _first_that_works(
        [(fn.__name__[5:], lambda fn=fn: fn(host, repeats))  # type: ignore[misc]
         for fn in (_h2d_torch, _h2d_cupy, _h2d_libcudart)])
    return (gbs, name) if gbs is not None else (None, "; ".join(why))
