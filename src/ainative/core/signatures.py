"""Shared-library signatures of AI runtimes, matched against a process's mapped files:
Linux shared objects (/proc/PID/maps) and Windows DLLs and Python extension modules (a
process's loaded modules), one list for both so a runtime has one name everywhere.

Windows names match without regard to case (the file system does not care). The Python
onnxruntime wheel for Windows links the runtime into onnxruntime_pybind11_state.pyd and
never loads onnxruntime.dll, so both are signatures (WINDOWS.md)."""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class LibrarySignature:
    runtime: str
    patterns: tuple[str, ...]  # globs on the file's basename


SIGNATURES: tuple[LibrarySignature, ...] = (
    LibrarySignature("cuda-runtime", ("libcudart.so*", "libcudart-*.so*", "cudart64_*.dll")),
    LibrarySignature("cuda-driver", ("libcuda.so*", "nvcuda.dll")),
    LibrarySignature("cudnn", ("libcudnn*.so*", "cudnn*64_*.dll")),
    LibrarySignature("pytorch", ("libtorch*.so*", "libc10*.so*", "torch_cpu.dll", "torch_cuda.dll",
                                  "c10.dll")),
    LibrarySignature("onnxruntime", ("libonnxruntime*.so*", "onnxruntime_pybind11_state*.so",
                                      "onnxruntime*.dll", "onnxruntime_pybind11_state*.pyd")),
    LibrarySignature("tensorflow", ("libtensorflow*.so*", "_pywrap_tensorflow*.so",
                                     "_pywrap_tensorflow*.pyd", "tensorflow*.dll")),
    LibrarySignature("jax", ("xla_extension*.so", "libjax*.so*", "jaxlib*.so")),
    LibrarySignature("ggml/llama.cpp", ("libggml*.so*", "libllama*.so*", "ggml*.dll",
                                         "llama.dll")),
    LibrarySignature("tensorrt", ("libnvinfer*.so*", "nvinfer*.dll")),
    LibrarySignature("openvino", ("libopenvino*.so*", "openvino*.dll")),
    LibrarySignature("mlx", ("libmlx*.so*",)),
    LibrarySignature("rocm-hip", ("libamdhip64.so*", "libMIOpen*.so*", "amdhip64*.dll")),
    LibrarySignature("ctranslate2", ("libctranslate2*.so*", "ctranslate2.dll")),
    LibrarySignature("directml", ("directml.dll",)),
)


# Runtimes that mean nothing without the CUDA driver loaded beside them: a process can map
# libcudart (a pinned-memory helper probing for a GPU, a wheel that links it) and never
# touch a GPU. Such a process uses CUDA only once libcuda (the driver) is mapped too.
NEEDS_DRIVER = frozenset({"cuda-runtime", "cudnn"})


def in_use(found: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """Split matched runtimes into (in use, mapped but not in use): CUDA user-space
    libraries without the driver count for nothing."""
    if "cuda-driver" in found:
        return dict(found), {}
    return ({k: v for k, v in found.items() if k not in NEEDS_DRIVER},
            {k: v for k, v in found.items() if k in NEEDS_DRIVER})


def match_libraries(paths: list[str]) -> dict[str, str]:
    """{runtime: first matching path} for every signature some mapped file matches."""
    found: dict[str, str] = {}
    for path in paths:
        base = re.split(r"[\\/]", path)[-1]  # a Windows path names its file after "\\"
        if base.lower().endswith((".dll", ".pyd")):
            base = base.lower()  # Windows file names match whatever their case
        elif ".so" not in base:
            continue
        for sig in SIGNATURES:
            if sig.runtime in found:
                continue
            if any(fnmatch.fnmatchcase(base, p.lower() if p.endswith((".dll", ".pyd")) else p)
                   for p in sig.patterns):
                found[sig.runtime] = path
    return found
