"""The synthetic request batch, made from input specs alone.

The model server reads the specs from its ONNX session (models.input_specs) and sends
them to the load client, which makes the very same arrays here and sends their bytes with
every request, as a real client sends its inputs. Only NumPy is needed: the client must
never load an AI runtime, or a daemon could take it for the model server.
"""

from __future__ import annotations

from typing import TypedDict

import numpy as np

SEED = 1  # the same seed on both sides: the server warms up on what the client will send


class InputSpec(TypedDict):
    name: str
    dtype: str  # a NumPy dtype name: float32, int64, bool ...
    shape: list[int]  # concrete, the batch axis filled in


def nbytes(spec: InputSpec) -> int:
    return int(np.prod(spec["shape"], dtype=np.int64)) * np.dtype(spec["dtype"]).itemsize


def synthesise(specs: list[InputSpec]) -> dict[str, np.ndarray]:
    """Random inputs in the specs' order: small non-negative integers for integer inputs
    (token ids and indices stay in range), 0/1 for booleans, N(0, 1) otherwise."""
    rng = np.random.default_rng(SEED)
    out: dict[str, np.ndarray] = {}
    for s in specs:
        dtype = np.dtype(s["dtype"])
        shape = tuple(s["shape"])
        if dtype == np.bool_:
            out[s["name"]] = rng.integers(0, 2, shape).astype(np.bool_)
        elif np.issubdtype(dtype, np.integer):
            out[s["name"]] = rng.integers(0, 8, shape).astype(dtype)
        else:
            out[s["name"]] = rng.standard_normal(shape).astype(dtype)
    return out
