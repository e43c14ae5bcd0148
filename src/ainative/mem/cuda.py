"""Registering a pool with CUDA (cudaHostRegister) when a CUDA runtime is importable, and
measuring host-to-device copy speed. Everything here is optional: without CUDA the pool
works and says it is unregistered, and why.

The probe leaves nothing mapped when CUDA cannot be used. The daemon takes a process
that maps libcudart, libcuda, libtorch... for an AI runtime, so a process that only made
a PinnedPool on a machine without a GPU must not end up mapping any of them. Hence: no
library is loaded (and neither torch nor cupy imported) unless a GPU driver's device
node exists, and a libcudart loaded only to find CUDA unusable is unloaded again where
that is safe (``_unload_if_safe``). A runtime that works stays loaded: the process then
really uses CUDA."""

from __future__ import annotations

import _ctypes
import ctypes
import ctypes.util
import glob
import importlib
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

CUDA_HOST_REGISTER_PORTABLE = 1

# Device nodes a CUDA driver talks to a GPU through: /dev/nvidiactl, made by the NVIDIA
# kernel driver (on the host and in containers given a GPU), and /dev/dxg, WSL2's GPU
# paravirtualisation that WSL's libcuda uses instead. Without one, libcudart can only fail.
NVIDIA_NODES = ("/dev/nvidiactl", "/dev/dxg")
# torch and cupy have ROCm builds whose torch.cuda / cupy.cuda run on an AMD GPU (HIP).
ROCM_NODES = ("/dev/kfd",)


def _no_node(nodes: tuple[str, ...]) -> str | None:
    """None when one of the device nodes exists; else words saying none does."""
    if any(os.path.exists(n) for n in nodes):
        return None
    return f"no GPU driver's device node here ({', '.join(nodes)})"


def _import_gpu_module(name: str) -> Any:
    """torch or cupy: the module already imported, or imported now only where a GPU
    driver's device node exists. Importing either maps libtorch/libcudart/... for good (a
    Python extension cannot be unloaded), so on a machine without a GPU it is not imported
    at all. RuntimeError saying why not; ImportError when not installed."""
    mod = sys.modules.get(name)
    if mod is not None:
        return mod  # already mapped by the process itself: trying it maps nothing new
    why = _no_node(NVIDIA_NODES + ROCM_NODES)
    if why is not None:
        raise RuntimeError(f"not imported: {why}")
    return importlib.import_module(name)


@dataclass
class CudaRuntime:
    name: str
    register: Callable[[int, int], int]  # (ptr, size) -> cudaError code
    unregister: Callable[[int], int]


def _via_torch() -> CudaRuntime | None:
    torch = _import_gpu_module("torch")
    if not torch.cuda.is_available():
        return None
    rt = torch.cuda.cudart()
    return CudaRuntime(
        "torch",
        lambda p, n: int(rt.cudaHostRegister(p, n, CUDA_HOST_REGISTER_PORTABLE)),
        lambda p: int(rt.cudaHostUnregister(p)))


def _via_cupy() -> CudaRuntime | None:
    cupy = _import_gpu_module("cupy")
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
    return f"error {code} ({text.decode() if text else 'unknown'})"


def libcudart_candidates() -> list[str]:
    """Where libcudart may be, in the order tried: the pip wheel's copy, then what the
    dynamic linker finds. Names only: nothing is loaded here."""
    candidates = [*_wheel_libcudart(), ctypes.util.find_library("cudart"), "libcudart.so",
                  "libcudart.so.12", "libcudart.so.11.0"]
    return [c for c in candidates if c]


def _threads() -> set[str]:
    try:
        return set(os.listdir("/proc/self/task"))
    except OSError:
        return set()


def _driver_mapped() -> bool:
    """Whether a libcuda.so* (the driver library libcudart dlopens) is mapped now."""
    try:
        with open("/proc/self/maps", "rb") as fh:
            maps = fh.read()
    except OSError:
        return True  # cannot tell: answer the way that keeps libcudart loaded
    # address perms offset dev inode path: the path starts at the first '/'.
    return any(os.path.basename(line[line.find(b"/"):]).startswith(b"libcuda.so")
               for line in maps.split(b"\n") if b"/" in line)


def _unload_if_safe(lib: ctypes.CDLL, threads_before: set[str]) -> bool:
    """dlclose a libcudart that was loaded only to find CUDA unusable, so that it does not
    stay mapped; True when it was closed (unmapped, unless someone else holds it too).

    Unmapping a library is safe only while nothing can still call into it. A probe that
    failed without reaching a driver leaves nothing behind that could: with cudart 13 and
    no libcuda, watched through an LD_PRELOAD shim, cudaGetDeviceCount started no thread
    and made no pthread key or thread-specific value (whose destructor would run at a
    thread's exit); atexit handlers are run by dlclose itself, and glibc keeps a library
    with pending thread_local destructors mapped. Once libcuda is in, cuInit may have
    started threads and given the driver pointers into the runtime, and neither can be
    withdrawn. So it is closed only when no thread appeared during the probe and no
    libcuda is mapped; otherwise it stays, which can happen only where a GPU driver is
    installed. ctypes opens with RTLD_LOCAL and without RTLD_NODELETE, so the last
    dlclose unmaps (ctypes never dlcloses on its own). The caller must drop ``lib``, and
    every function pointer taken from it, afterwards."""
    if _threads() - threads_before or _driver_mapped():
        return False
    _ctypes.dlclose(lib._handle)
    return True


def load_libcudart() -> tuple[ctypes.CDLL, str]:
    """libcudart with at least one usable device, through ctypes (no Python binding needed).
    ImportError when there is no libcudart; RuntimeError saying why when it cannot run.

    Not loaded at all without an NVIDIA device node (it could only fail there), and
    unloaded again, where that is safe, when it was loaded and cannot run: a library
    left mapped would make the process look like a CUDA program to the daemon."""
    no_driver = _no_node(NVIDIA_NODES)
    if no_driver is not None:
        raise RuntimeError(f"not loaded: {no_driver}")
    for name in libcudart_candidates():
        threads_before = _threads()
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        try:
            count = ctypes.c_int(0)
            code = lib.cudaGetDeviceCount(ctypes.byref(count))
            if code != 0:
                raise RuntimeError(f"{name}: cudaGetDeviceCount {_error(lib, code)}")
            if count.value < 1:
                raise RuntimeError(f"{name}: no CUDA device")
        except BaseException:
            # The message is built already: nothing reads the library after this.
            _unload_if_safe(lib, threads_before)
            del lib
            raise
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
    torch = _import_gpu_module("torch")
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
    cupy = _import_gpu_module("cupy")
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
