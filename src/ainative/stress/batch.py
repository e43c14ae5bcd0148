"""The synthetic request batch, made from input specs alone.

The model server takes the specs the command resolved (feeds.py), or reads them from
its ONNX session (models.input_specs), and sends
them to the load client, which makes the very same arrays here and sends their bytes with
every request, as a real client sends its inputs. Only NumPy is needed: the client must
never load an AI runtime, or a daemon could take it for the model server. An input the
user filled (feeds.py: ``--input NAME=VALUE``, ``--inputs FILE.npz``) carries its fill in
its spec, so both sides make it the same way.
"""

from __future__ import annotations

from typing import Literal, NotRequired, TypedDict

import numpy as np

SEED = 1  # the same seed on both sides: the server warms up on what the client will send


class Fill(TypedDict):
    """How an input is filled: at random (the default), with one value, or from an
    array in an .npz file (the same file on both sides: one machine)."""

    kind: Literal["random", "value", "file"]
    value: NotRequired[int | float | bool]  # kind "value"
    path: NotRequired[str]  # kind "file": the .npz, absolute
    key: NotRequired[str]  # kind "file": the array's name in it


class InputSpec(TypedDict):
    name: str
    dtype: str  # a NumPy dtype name: float32, int64, bool ...
    shape: list[int]  # concrete, the batch axis filled in
    fill: NotRequired[Fill]  # absent: random


def nbytes(spec: InputSpec) -> int:
    return int(np.prod(spec["shape"], dtype=np.int64)) * np.dtype(spec["dtype"]).itemsize


def _from_file(fill: Fill, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    with np.load(fill.get("path", ""), allow_pickle=False) as z:
        arr = np.array(z[fill.get("key", "")], dtype=dtype, order="C")
    if arr.shape != shape:
        raise ValueError(f"array {fill.get('key')!r} in {fill.get('path')} has shape "
                         f"{arr.shape}, not {shape}")
    return arr


def synthesise(specs: list[InputSpec]) -> dict[str, np.ndarray]:
    """Inputs in the specs' order: an input's fill when it has one; else random: small
    non-negative integers for integer inputs (token ids and indices stay in range), 0/1
    for booleans, N(0, 1) otherwise."""
    rng = np.random.default_rng(SEED)
    out: dict[str, np.ndarray] = {}
    for s in specs:
        dtype = np.dtype(s["dtype"])
        shape = tuple(s["shape"])
        fill = s.get("fill") or Fill(kind="random")
        if fill["kind"] == "value":
            out[s["name"]] = np.full(shape, fill.get("value"), dtype)
        elif fill["kind"] == "file":
            out[s["name"]] = _from_file(fill, shape, dtype)
        elif dtype == np.bool_:
            out[s["name"]] = rng.integers(0, 2, shape).astype(np.bool_)
        elif np.issubdtype(dtype, np.integer):
            out[s["name"]] = rng.integers(0, 8, shape).astype(dtype)
        else:
            out[s["name"]] = rng.standard_normal(shape).astype(dtype)
    return out
