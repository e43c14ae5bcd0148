"""Shared-library signatures of AI runtimes, matched against a process's mapped files."""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class LibrarySignature:
    runtime: str
    patterns: tuple[str, ...]  # globs on the file's basename


SIGNATURES: tuple[LibrarySignature, ...] = (
    LibrarySignature("cuda-runtime", ("libcudart.so*", "libcudart-*.so*")),
    LibrarySignature("cuda-driver", ("libcuda.so*",)),
    LibrarySignature("cudnn", ("libcudnn*.so*",)),
    LibrarySignature("pytorch", ("libtorch*.so*", "libc10*.so*")),
    LibrarySignature("onnxruntime", ("libonnxruntime*.so*", "onnxruntime_pybind11_state*.so")),
    LibrarySignature("tensorflow", ("libtensorflow*.so*", "_pywrap_tensorflow*.so")),
    LibrarySignature("jax", ("xla_extension*.so", "libjax*.so*", "jaxlib*.so")),
    LibrarySignature("ggml/llama.cpp", ("libggml*.so*", "libllama*.so*")),
    LibrarySignature("tensorrt", ("libnvinfer*.so*",)),
    LibrarySignature("openvino", ("libopenvino*.so*",)),
    LibrarySignature("mlx", ("libmlx*.so*",)),
    LibrarySignature("rocm-hip", ("libamdhip64.so*", "libMIOpen*.so*")),
    LibrarySignature("ctranslate2", ("libctranslate2*.so*",)),
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
        base = os.path.basename(path)
        if ".so" not in base:
            continue
        for sig in SIGNATURES:
            if sig.runtime in found:
                continue
            if any(fnmatch.fnmatchcase(base, p) for p in sig.patterns):
                found[sig.runtime] = path
    return found
