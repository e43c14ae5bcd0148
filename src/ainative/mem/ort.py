"""ONNX Runtime inputs and outputs in a pinned pool, through IOBinding: no copies.

`session.run(None, feeds)` copies every output into a fresh NumPy array, and
`bind_cpu_input` hides where the input lives. With `bind_pinned(session, pool, feeds)`
the session reads its inputs from pool memory and writes its outputs straight into
pool memory (ONNX Runtime's own IOBinding with the buffers' addresses): `run()` returns
NumPy views of the pool, and the next request is written into `inputs` in place.

The output shapes and dtypes are learned from one run of the session with the given
feeds when the binding is made, so symbolic output dimensions need nothing from the
caller. An output whose shape depends on the input values (a detector's box count) can
change shape between runs; ONNX Runtime then refuses the bound buffer with its own
error, and such a model needs a new binding per shape.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ainative.mem.pool import PinnedPool


class BindError(ValueError):
    """Feeds that cannot be bound: a name the model does not have, a missing input, a
    dtype the model does not take. The message says which."""


def _in_pool(pool: PinnedPool, arr: np.ndarray) -> bool:
    start = arr.ctypes.data
    return (arr.flags.c_contiguous and pool.address <= start
            and start + arr.nbytes <= pool.address + pool.capacity)


@dataclass
class PinnedBinding:
    """A session bound to pool memory. Write a request into `inputs[name][...]`, call
    `run()`, read `outputs` (the same arrays every run: copy what must outlive the next
    run). The arrays are the pool's until the binding and every view of them are gone.
    """

    session: Any
    io: Any  # onnxruntime.IOBinding
    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]
    # Feeds that were already pool arrays and were bound where they are (no copy).
    bound_in_place: list[str] = field(default_factory=list)

    def run(self) -> dict[str, np.ndarray]:
        """One inference from `inputs` into `outputs`; returns `outputs`."""
        self.session.run_with_iobinding(self.io)
        return self.outputs

    def close(self) -> None:
        """Drop the binding's arrays: their blocks go back to the pool once no other
        view of them is alive."""
        self.io.clear_binding_inputs()
        self.io.clear_binding_outputs()
        self.inputs = {}
        self.outputs = {}

    def __enter__(self) -> PinnedBinding:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def bind_pinned(session: Any, pool: PinnedPool, feeds: dict[str, Any]) -> PinnedBinding:
    """Bind every input and output of an onnxruntime.InferenceSession to pool memory.

    feeds: a value for every model input (anything np.asarray takes, of the input's
    element type). A feed that is already a C-contiguous array in this pool (from
    pool.empty, or a PinnedBuffer's array) is bound where it is; others are copied once
    into pool arrays. Runs the session once to learn the output shapes and dtypes.
    Raises BindError for feeds that do not match the model.
    """
    names = [i.name for i in session.get_inputs()]
    unknown = sorted(set(feeds) - set(names))
    if unknown:
        raise BindError(f"the model has no input {unknown[0]!r} (inputs: {', '.join(names)})")
    missing = [n for n in names if n not in feeds]
    if missing:
        raise BindError(f"no feed for input {missing[0]!r} (inputs: {', '.join(names)})")
    io = session.io_binding()
    inputs: dict[str, np.ndarray] = {}
    in_place: list[str] = []
    for name in names:
        src = feeds[name]
        if isinstance(src, np.ndarray) and _in_pool(pool, src):
            arr = src
            in_place.append(name)
        else:
            src = np.asarray(src)
            arr = pool.empty(src.shape, src.dtype)
            arr[...] = src
        inputs[name] = arr
        io.bind_input(name, "cpu", 0, arr.dtype.type, arr.shape, arr.ctypes.data)
    outs = [o.name for o in session.get_outputs()]
    # One run with outputs where ONNX Runtime puts them, for their shapes and dtypes.
    for name in outs:
        io.bind_output(name, "cpu")
    try:
        session.run_with_iobinding(io)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        # Nothing of the pool may stay reachable from the raised error's frames.
        io.clear_binding_inputs()
        io.clear_binding_outputs()
        inputs.clear()
        del arr, src
        raise BindError(f"the model did not run on these feeds: {first}") from None
    probe = io.get_outputs()
    shapes = [(tuple(v.shape()), v.numpy().dtype) for v in probe]
    del probe
    io.clear_binding_outputs()
    outputs: dict[str, np.ndarray] = {}
    for name, (shape, dtype) in zip(outs, shapes, strict=True):
        arr = pool.empty(shape, dtype)
        outputs[name] = arr
        io.bind_output(name, "cpu", 0, arr.dtype.type, arr.shape, arr.ctypes.data)
    return PinnedBinding(session, io, inputs, outputs, in_place)
