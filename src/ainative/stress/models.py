"""The models the stress test runs: built in code with onnx.helper (no download), or a
user's ONNX file with inputs synthesised from its declared shapes."""

from __future__ import annotations

import itertools
import os
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ainative.stress.batch import InputSpec, synthesise
from ainative.stress.catalog import BUILTIN


class ModelError(Exception):
    """A model file that cannot be loaded or fed; the message says what to change."""


def _init(rng: np.random.Generator, name: str, *shape: int) -> TensorProto:
    scale = 1.0 / np.sqrt(shape[0])
    return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)


def _mlp(dims: list[int]) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    nodes, inits = [], []
    cur = "x"
    for i, (a, b) in enumerate(itertools.pairwise(dims)):
        inits += [_init(rng, f"w{i}", a, b), numpy_helper.from_array(
            np.zeros(b, np.float32), f"b{i}")]
        out = f"h{i}"
        nodes.append(helper.make_node("Gemm", [cur, f"w{i}", f"b{i}"], [out]))
        cur = out
        if i < len(dims) - 2:
            nodes.append(helper.make_node("Relu", [cur], [f"r{i}"]))
            cur = f"r{i}"
    nodes.append(helper.make_node("Identity", [cur], ["y"]))
    graph = helper.make_graph(
        nodes, "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", dims[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", dims[-1]])],
        inits)
    return _finish(graph)


def _attention(seq: int = 128, dim: int = 256) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [_init(rng, n, dim, dim) for n in ("wq", "wk", "wv", "wo")]
    inits.append(numpy_helper.from_array(np.array(1.0 / np.sqrt(dim), np.float32), "scale"))
    nodes = [
        helper.make_node("MatMul", ["x", "wq"], ["q"]),
        helper.make_node("MatMul", ["x", "wk"], ["k"]),
        helper.make_node("MatMul", ["x", "wv"], ["v"]),
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["s0"]),
        helper.make_node("Mul", ["s0", "scale"], ["s"]),
        helper.make_node("Softmax", ["s"], ["p"], axis=-1),
        helper.make_node("MatMul", ["p", "v"], ["a"]),
        helper.make_node("MatMul", ["a", "wo"], ["o"]),
        helper.make_node("Add", ["o", "x"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "attention",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", seq, dim])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", seq, dim])],
        inits)
    return _finish(graph)


def _finish(graph: onnx.GraphProto) -> onnx.ModelProto:
    # Opset 17 and IR 8 load in every onnxruntime from 1.14 on.
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def build(name: str) -> onnx.ModelProto:
    if name == "mlp-small":
        return _mlp([256, 1024, 256])
    if name == "mlp":
        return _mlp([256, 1024, 1024, 1024, 256])
    if name == "attention":
        return _attention()
    raise ModelError(f"unknown built-in model {name!r}; choose one of {sorted(BUILTIN)} "
                     "or give a path to an .onnx file")


def materialise(spec: str, directory: str) -> str:
    """A path to an ONNX file for spec (a built-in name or a path), checked to load."""
    if spec in BUILTIN:
        path = os.path.join(directory, f"{spec}.onnx")
        onnx.save(build(spec), path)
        return path
    if not os.path.exists(spec):
        raise ModelError(f"model {spec!r}: no such built-in model or file "
                         f"(built-in: {', '.join(sorted(BUILTIN))})")
    try:
        model = onnx.load(spec, load_external_data=False)
        onnx.checker.check_model(model)
    except Exception as e:
        raise ModelError(f"{spec}: not a valid ONNX model ({type(e).__name__}: "
                         f"{str(e).strip().splitlines()[0] if str(e).strip() else e})") from e
    return os.path.abspath(spec)


_DTYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_,
}


def input_specs(session: Any, batch: int, source: str) -> list[InputSpec]:
    """Every declared input with a concrete shape: the first dimension, when symbolic, is
    the batch. Any other symbolic dimension cannot be guessed and is an error."""
    specs: list[InputSpec] = []
    for inp in session.get_inputs():
        dtype = _DTYPES.get(inp.type)
        if dtype is None:
            raise ModelError(f"{source}: input {inp.name!r} has type {inp.type}, which the "
                             f"stress test cannot synthesise (supported: "
                             f"{', '.join(sorted(_DTYPES))})")
        shape = []
        for i, d in enumerate(inp.shape):
            if isinstance(d, int) and d > 0:
                shape.append(d)
            elif i == 0:
                shape.append(batch)
            else:
                raise ModelError(
                    f"{source}: input {inp.name!r} has a dynamic dimension {d!r} at axis {i} "
                    f"(shape {inp.shape}); only the first (batch) axis can be filled. Export "
                    "the model with fixed shapes for the other axes.")
        specs.append(InputSpec(name=inp.name, dtype=np.dtype(dtype).name, shape=shape))
    return specs


def synthesise_inputs(session: Any, batch: int, source: str) -> dict[str, np.ndarray]:
    """Random inputs for every declared input (see input_specs and batch.synthesise)."""
    return synthesise(input_specs(session, batch, source))


def open_session(path: str, threads: int, device: str) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Spinning worker threads would burn the very CPU the contention test measures.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if device == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ModelError("--device cuda: this onnxruntime has no CUDAExecutionProvider "
                             f"(available: {', '.join(ort.get_available_providers())}); "
                             "install onnxruntime-gpu on a machine with an NVIDIA GPU")
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    else:
        providers = ["CPUExecutionProvider"]
    try:
        return ort.InferenceSession(path, opts, providers=providers)
    except Exception as e:
        raise ModelError(f"{path}: onnxruntime cannot load it: "
                         f"{str(e).strip().splitlines()[0] if str(e).strip() else e}") from e
