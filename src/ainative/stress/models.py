"""The models the stress test runs: built in code with onnx.helper (no download), or a
user's ONNX file with inputs made from its declared shapes and the user's overrides
(feeds.py). A user's model is read from its path, never from the current directory, so
a model whose weights live in external data files beside it loads from anywhere."""

from __future__ import annotations

import itertools
import os
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ainative.stress import feeds
from ainative.stress.batch import InputSpec, synthesise
from ainative.stress.catalog import BUILTIN

if TYPE_CHECKING:
    from ainative.stress.config import WorkloadConfig


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
    if name == "attention-large":
        return _attention(seq=1024, dim=768)
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
        # By path: the checker then finds external data beside the model, not in the
        # current directory, and takes models over 2 GB.
        onnx.checker.check_model(os.path.abspath(spec))
    except Exception as e:
        raise ModelError(f"{spec}: not a valid ONNX model ({type(e).__name__}: "
                         f"{str(e).strip().splitlines()[0] if str(e).strip() else e})") from e
    return os.path.abspath(spec)


def _declared(name: str, type_text: str, shape: Any) -> feeds.Declared:
    dims = None if shape is None else [d if isinstance(d, int | str) else None for d in shape]
    return feeds.Declared(name, type_text, feeds.dtype_of(type_text), dims)


def session_inputs(session: Any) -> list[feeds.Declared]:
    """The inputs an ONNX Runtime session declares."""
    return [_declared(i.name, i.type, i.shape) for i in session.get_inputs()]


def file_inputs(path: str) -> list[feeds.Declared]:
    """The inputs a model file declares, read without its weights (no external data, no
    session): what the command shows and checks before the model server loads it."""
    try:
        graph = onnx.load(path, load_external_data=False).graph
    except Exception as e:
        raise ModelError(f"{path}: cannot read it: {e}") from e
    weights = {t.name for t in graph.initializer}
    out = []
    for vi in graph.input:
        if vi.name in weights:  # a weight listed as an input: it has a value already
            continue
        if vi.type.WhichOneof("value") != "tensor_type":
            out.append(feeds.Declared(vi.name, vi.type.WhichOneof("value") or "unknown",
                                      None, None))
            continue
        tt = vi.type.tensor_type
        type_text = f"tensor({TensorProto.DataType.Name(tt.elem_type).lower()})"
        shape: list[int | str | None] | None = None
        if tt.HasField("shape"):
            shape = [d.dim_value if d.HasField("dim_value") else
                     d.dim_param if d.HasField("dim_param") else None for d in tt.shape.dim]
        out.append(_declared(vi.name, type_text, shape))
    return out


def resolve(declared: list[feeds.Declared], batch: int, options: feeds.FeedOptions | None,
            source: str, batch_explicit: bool = True) -> feeds.Resolved:
    """feeds.resolve, its errors as ModelError."""
    try:
        return feeds.resolve(declared, batch, options, source, batch_explicit)
    except feeds.FeedError as e:
        raise ModelError(str(e)) from None


def input_specs(session: Any, batch: int, source: str,
                options: feeds.FeedOptions | None = None) -> list[InputSpec]:
    """Every declared input with a concrete shape and a fill: a symbol at axis 0 is the
    batch (wherever else it appears); other dynamic axes come from options (--shape,
    --dim, --inputs) or are an error saying which flag to give."""
    return resolve(session_inputs(session), batch, options, source).specs


def synthesise_inputs(session: Any, batch: int, source: str,
                      options: feeds.FeedOptions | None = None) -> dict[str, np.ndarray]:
    """The arrays for every declared input (see input_specs and batch.synthesise)."""
    return synthesise(input_specs(session, batch, source, options))


def workload_feeds(session: Any, cfg: WorkloadConfig) -> dict[str, np.ndarray]:
    """The arrays a workload sends: its inputs as the command resolved them, or, without
    those, made from the session's declared shapes and the batch."""
    if cfg.inputs is not None:
        return synthesise(cfg.inputs)
    return synthesise_inputs(session, cfg.batch, cfg.model_name)


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
