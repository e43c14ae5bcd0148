"""The inputs a stress run feeds a user's model: the shapes the model declares made
concrete with the user's overrides, and how each input is filled.

Models declare axes as sizes (3), as symbols (``batch``, ``height``, ``sequence``) or as
nothing at all (``?``, None). The stress test must send real tensors, so every axis needs a
size; where it comes from, first match wins:

    --shape NAME=1,3,640,640   the whole shape of one input (the symbols on its axes take
                               these sizes, in every input)
    --inputs FILE.npz          real arrays for the inputs it names: shapes as with --shape
    --dim SYMBOL=640           one symbol's size, at every axis of every input it names
    --batch                    a symbol at axis 0 of any input, wherever else that symbol
                               appears (a recurrent state [2, batch, 128]), and an unnamed
                               axis 0

An axis still without a size is an error naming the input, the axis and the flag that
fixes it. ``--input NAME=VALUE`` fills an input with one value (a VAD's sample rate ``sr``
must be 16000, not random); the rest are random (see batch.synthesise).

Only NumPy here: what this module decides travels to the load client as InputSpecs, and the
client must never load an AI runtime.
"""

from __future__ import annotations

import math
import os
import zipfile
from dataclasses import dataclass, field
from typing import Any, TypedDict

import numpy as np

from ainative.stress.batch import Fill, InputSpec

Dim = int | str | None
# Axes that ONNX exporters leave without a name come out as None, '' or '?'.
UNNAMED = (None, "", "?")
# The wire's frame header holds a u32 length (wire.py): one request's inputs must fit.
MAX_REQUEST_BYTES = (1 << 32) - 1


class FeedError(Exception):
    """Inputs that cannot be made as asked; the message names the input and the fix."""


class FeedOptions(TypedDict):
    """The user's overrides, as plain data: they travel to the model server in its
    WorkloadConfig."""

    shapes: dict[str, list[int]]  # --shape NAME=d0,d1,...
    dims: dict[str, int]  # --dim SYMBOL=N
    values: dict[str, str]  # --input NAME=VALUE, typed once the input's dtype is known
    npz: str | None  # --inputs FILE.npz, an absolute path


def no_options() -> FeedOptions:
    return FeedOptions(shapes={}, dims={}, values={}, npz=None)


@dataclass(frozen=True)
class Declared:
    """One input as the model declares it."""

    name: str
    type_text: str  # as ONNX Runtime prints it: tensor(float)
    dtype: str | None  # a NumPy dtype name; None when the stress test cannot make it
    shape: list[Dim] | None  # None: not even the rank is declared


@dataclass
class Resolved:
    specs: list[InputSpec]
    batch: int  # the batch the run really uses
    batch_from: str  # what decided it: "--batch", "--shape x=1,3,64,64", "fixed in ..."
    warnings: list[str] = field(default_factory=list)


# --- the command line's text ---


def _split(text: str, flag: str, form: str) -> tuple[str, str]:
    name, sep, rest = text.rpartition("=")
    if not sep or not name.strip() or not rest.strip():
        raise FeedError(f"{flag} {text!r}: use {form}")
    return name.strip(), rest.strip()


def _size(text: str, flag: str, whole: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1 or n > 1 << 31:
        raise FeedError(f"{flag} {whole!r}: {text!r} is not a size (a whole number from 1)")
    return n


def parse_options(shapes: tuple[str, ...] = (), dims: tuple[str, ...] = (),
                  values: tuple[str, ...] = (), npz: str | None = None) -> FeedOptions:
    """FeedOptions from the flags' text; FeedError naming the flag when one is malformed
    or given twice. The npz file must exist and be readable now, not after the model
    has loaded."""
    opts = no_options()
    for text in shapes:
        name, rest = _split(text, "--shape", "NAME=1,3,640,640")
        if name in opts["shapes"]:
            raise FeedError(f"--shape {name}=...: given twice")
        opts["shapes"][name] = [_size(p.strip(), "--shape", text) for p in rest.split(",")]
    for text in dims:
        sym, rest = _split(text, "--dim", "SYMBOL=640")
        if sym in opts["dims"]:
            raise FeedError(f"--dim {sym}=...: given twice")
        opts["dims"][sym] = _size(rest, "--dim", text)
    for text in values:
        name, rest = _split(text, "--input", "NAME=VALUE, e.g. sr=16000")
        if name in opts["values"]:
            raise FeedError(f"--input {name}=...: given twice")
        opts["values"][name] = rest
    if npz is not None:
        path = os.path.abspath(npz)
        if not os.path.isfile(path) or not os.access(path, os.R_OK):
            raise FeedError(f"--inputs {npz}: no such readable file (an .npz from "
                            "numpy.savez, one array per input name)")
        opts["npz"] = path
    return opts


# --- resolution ---


def _fmt(shape: list[Dim] | list[int] | None) -> str:
    if shape is None:
        return "unknown"
    return "[" + ", ".join("?" if d in UNNAMED else str(d) if isinstance(d, int)
                           else repr(d) for d in shape) + "]"


def _load_npz(path: str, names: list[str]) -> dict[str, np.ndarray]:
    if not zipfile.is_zipfile(path):
        raise FeedError(f"--inputs {path}: not an .npz archive; write one with "
                        "numpy.savez(FILE, NAME=array, ...)")
    try:
        with np.load(path, allow_pickle=False) as z:
            if not hasattr(z, "files"):
                raise ValueError("a single array, not an .npz archive")
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError) as e:
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FeedError(f"--inputs {path}: cannot read it as .npz ({why}); write one "
                        "with numpy.savez(FILE, NAME=array, ...)") from None
    unknown = sorted(set(arrays) - set(names))
    if unknown:
        raise FeedError(f"--inputs {path}: arrays {unknown} are not inputs of the model "
                        f"(its inputs: {', '.join(names)})")
    return arrays


def _typed(value: str, dtype: np.dtype, name: str) -> int | float | bool:
    flag = f"--input {name}={value}"
    if dtype == np.bool_:
        low = value.lower()
        if low not in ("0", "1", "true", "false"):
            raise FeedError(f"{flag}: {name!r} is bool; use true, false, 1 or 0")
        return low in ("1", "true")
    if np.issubdtype(dtype, np.integer):
        try:
            n = int(value)
        except ValueError:
            raise FeedError(f"{flag}: {name!r} is {dtype.name}; give a whole number"
                            ) from None
        info = np.iinfo(dtype)
        if not info.min <= n <= info.max:
            raise FeedError(f"{flag}: {n} does not fit {dtype.name} "
                            f"({info.min}..{info.max})")
        return n
    try:
        f = float(value)
    except ValueError:
        raise FeedError(f"{flag}: {name!r} is {dtype.name}; give a number") from None
    with np.errstate(over="ignore"):
        fits = not math.isfinite(f) or bool(np.isfinite(np.array(f).astype(dtype)))
    if not fits:
        raise FeedError(f"{flag}: {f} does not fit {dtype.name}")
    return f


def _check_cast(arr: np.ndarray, dtype: np.dtype, name: str) -> None:
    """An array may be cast to the input's type within its kind (float64 audio to
    float32), but integers must keep their values: token ids must not wrap."""
    if not np.can_cast(arr.dtype, dtype, "same_kind"):
        raise FeedError(f"--inputs: array {name!r} is {arr.dtype}; the model takes "
                        f"{dtype.name}")
    if np.issubdtype(dtype, np.integer) and arr.size and not np.can_cast(arr.dtype, dtype):
        info = np.iinfo(dtype)
        lo, hi = int(arr.min()), int(arr.max())
        if lo < info.min or hi > info.max:
            raise FeedError(f"--inputs: array {name!r} holds {lo}..{hi}, which does not "
                            f"fit the model's {dtype.name}")


class _Binder:
    """Symbol -> (size, what said so); a second, different size for a symbol is an error."""

    def __init__(self) -> None:
        self.sizes: dict[str, tuple[int, str]] = {}

    def bind(self, sym: str, size: int, why: str) -> None:
        old = self.sizes.get(sym)
        if old is not None and old[0] != size:
            raise FeedError(f"{why} makes axis {sym!r} {size}, but {old[1]} made it "
                            f"{old[0]}; the same symbol must have one size")
        if old is None:
            self.sizes[sym] = (size, why)


def _given_shapes(declared: list[Declared], opts: FeedOptions,
                  arrays: dict[str, np.ndarray], binder: _Binder) -> dict[str, list[int]]:
    """Inputs whose whole shape the user gave (--shape, --inputs), checked against the
    model's declaration; the symbols on their axes are bound."""
    by_name = {d.name: d for d in declared}
    given: dict[str, tuple[list[int], str]] = {}
    for name, shape in opts["shapes"].items():
        given[name] = (shape, f"--shape {name}={','.join(map(str, shape))}")
    for name, arr in arrays.items():
        if name in given:
            raise FeedError(f"input {name!r}: given both by --shape and by --inputs; "
                            "leave out the --shape")
        given[name] = (list(arr.shape), f"--inputs {os.path.basename(opts['npz'] or '')}"
                                        f"[{name!r}]")
    out: dict[str, list[int]] = {}
    for name, (shape, why) in given.items():
        decl = by_name[name].shape
        if decl is not None:
            if len(decl) != len(shape):
                raise FeedError(f"{why}: input {name!r} has {len(decl)} axes "
                                f"{_fmt(decl)}, not {len(shape)}")
            for axis, (want, got) in enumerate(zip(decl, shape, strict=True)):
                if isinstance(want, int) and want > 0 and want != got:
                    raise FeedError(f"{why}: axis {axis} of input {name!r} is fixed at "
                                    f"{want} in the model {_fmt(decl)}, not {got}")
                if isinstance(want, str) and want not in UNNAMED:
                    binder.bind(want, got, why)
        out[name] = shape
    return out


def _example(decl: list[Dim], batch: int) -> str:
    return ",".join(str(d) if isinstance(d, int) and d > 0 else str(batch) if i == 0
                    else "N" for i, d in enumerate(decl))


def _concrete(d: Declared, binder: _Binder, batch: int, source: str) -> list[int]:
    if d.shape is None:
        raise FeedError(f"{source}: input {d.name!r} declares no shape at all; give it "
                        f"with --shape {d.name}=d0,d1,...")
    shape: list[int] = []
    for axis, dim in enumerate(d.shape):
        if isinstance(dim, int) and dim > 0:
            shape.append(dim)
        elif isinstance(dim, str) and dim not in UNNAMED:
            if dim not in binder.sizes:
                raise FeedError(
                    f"{source}: axis {axis} of input {d.name!r} {_fmt(d.shape)} is the "
                    f"dynamic dimension {dim!r}; give its size with --dim {dim}=N, or the "
                    f"whole shape with --shape {d.name}={_example(d.shape, batch)}")
            shape.append(binder.sizes[dim][0])
        elif axis == 0:
            shape.append(batch)
        else:
            raise FeedError(
                f"{source}: axis {axis} of input {d.name!r} {_fmt(d.shape)} is dynamic and "
                f"has no name, so --dim cannot reach it; give the whole shape with "
                f"--shape {d.name}={_example(d.shape, batch)} (N: the size you want)")
    return shape


def _check_names(declared: list[Declared], opts: FeedOptions, source: str) -> None:
    names = [d.name for d in declared]
    for flag, given in (("--shape", opts["shapes"]), ("--input", opts["values"])):
        for name in given:
            if name not in names:
                raise FeedError(f"{flag} {name}=...: {source} has no input {name!r} "
                                f"(its inputs: {', '.join(names)})")
    symbols = {dim for d in declared for dim in d.shape or []
               if isinstance(dim, str) and dim not in UNNAMED}
    for sym in opts["dims"]:
        if sym not in symbols:
            raise FeedError(f"--dim {sym}=...: no input of {source} has an axis named "
                            f"{sym!r} (its symbols: {', '.join(sorted(symbols)) or 'none'})")


def resolve(declared: list[Declared], batch: int, opts: FeedOptions | None, source: str,
            batch_explicit: bool = True) -> Resolved:
    """Concrete specs for every declared input (see the module's docstring for the order
    of the rules), the batch the run really uses, and warnings for the user: --batch that
    does not apply. batch_explicit: whether the user gave --batch (a default that a
    --shape overrides is not worth a warning)."""
    opts = opts or no_options()
    _check_names(declared, opts, source)
    for d in declared:
        if d.dtype is None:
            raise FeedError(f"{source}: input {d.name!r} has type {d.type_text}, which the "
                            f"stress test cannot synthesise (supported: "
                            f"{', '.join(sorted(_SUPPORTED))})")
    arrays = _load_npz(opts["npz"], [d.name for d in declared]) if opts["npz"] else {}
    for name in opts["values"]:
        if name in arrays:
            raise FeedError(f"input {name!r}: given both by --input and by --inputs; "
                            "leave one out")
    binder = _Binder()
    for sym, n in opts["dims"].items():
        binder.bind(sym, n, f"--dim {sym}={n}")
    given = _given_shapes(declared, opts, arrays, binder)
    # A symbol at axis 0 is the batch, wherever else it appears (state [2, batch, 128]).
    for d in declared:
        if d.name not in given and d.shape and isinstance(d.shape[0], str) \
                and d.shape[0] not in UNNAMED and d.shape[0] not in binder.sizes:
            binder.bind(d.shape[0], batch, "--batch")
    specs: list[InputSpec] = []
    for d in declared:
        assert d.dtype is not None
        shape = given[d.name] if d.name in given else _concrete(d, binder, batch, source)
        dtype = np.dtype(d.dtype)
        fill: Fill
        if d.name in arrays:
            _check_cast(arrays[d.name], dtype, d.name)
            fill = Fill(kind="file", path=opts["npz"] or "", key=d.name)
        elif d.name in opts["values"]:
            fill = Fill(kind="value", value=_typed(opts["values"][d.name], dtype, d.name))
        else:
            fill = Fill(kind="random")
        specs.append(InputSpec(name=d.name, dtype=dtype.name, shape=shape, fill=fill))
    # In Python integers: NumPy's product of sizes could wrap around.
    total = sum(math.prod(s["shape"]) * np.dtype(s["dtype"]).itemsize for s in specs)
    if total > MAX_REQUEST_BYTES:
        raise FeedError(f"{source}: these inputs take {total} bytes a request; one request "
                        f"carries at most 4 GiB: use smaller --batch, --shape or --dim")
    used, why, fixed = _batch(declared, specs, given, binder, opts)
    warnings = []
    if used != batch and (fixed or batch_explicit):
        warnings.append(f"--batch {batch} does not apply (batch {used}: {why}); the run "
                        f"uses batch {used}")
    return Resolved(specs, used, why, warnings)


def _batch(declared: list[Declared], specs: list[InputSpec], given: dict[str, list[int]],
           binder: _Binder, opts: FeedOptions) -> tuple[int, str, bool]:
    """The batch as run (axis 0 of the first input that has axes), what decided it, and
    whether the model itself fixed it."""
    for d, s in zip(declared, specs, strict=True):
        if not s["shape"]:
            continue
        n = s["shape"][0]
        dim0 = d.shape[0] if d.shape else None
        if d.name in opts["shapes"]:
            return n, f"--shape {d.name}={','.join(map(str, s['shape']))}", False
        if d.name in given:
            return n, f"--inputs {os.path.basename(opts['npz'] or '')}[{d.name!r}]", False
        if isinstance(dim0, int) and dim0 > 0:
            return n, f"fixed in the model at axis 0 of input {d.name!r}", True
        if isinstance(dim0, str) and dim0 not in UNNAMED:
            return n, binder.sizes[dim0][1], False
        return n, "--batch", False
    return 1, "the model has no input with axes", True


# --- for people ---

_SUPPORTED = {
    "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
    "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int16)": "int16",
    "tensor(int8)": "int8", "tensor(uint64)": "uint64", "tensor(uint32)": "uint32",
    "tensor(uint16)": "uint16", "tensor(uint8)": "uint8", "tensor(bool)": "bool",
}


def dtype_of(type_text: str) -> str | None:
    """The NumPy dtype name for an ONNX Runtime type string, None when unsupported."""
    return _SUPPORTED.get(type_text)


def describe(spec: InputSpec) -> str:
    """How an input is filled, in words: 'random normal(0, 1)', 'value 16000 (--input)'."""
    fill = spec.get("fill") or Fill(kind="random")
    if fill["kind"] == "value":
        return f"value {fill.get('value')} (--input)"
    if fill["kind"] == "file":
        return f"--inputs {os.path.basename(fill.get('path', ''))}[{fill.get('key')!r}]"
    dtype = np.dtype(spec["dtype"])
    if dtype == np.bool_:
        return "random 0/1"
    if np.issubdtype(dtype, np.integer):
        return "random integers 0..7"
    return "random normal(0, 1)"


def table(resolved: Resolved, source: str) -> list[str]:
    """Lines that show what the run will send, printed before it starts."""
    rows = [(s["name"], s["dtype"], _fmt(s["shape"]), describe(s)) for s in resolved.specs]
    widths = [max(len(r[i]) for r in rows) for i in range(3)] if rows else [0, 0, 0]
    head = f"inputs of {source} (batch {resolved.batch}: {resolved.batch_from}):"
    return [head, *(f"  {r[0]:{widths[0]}}  {r[1]:{widths[1]}}  {r[2]:{widths[2]}}  {r[3]}"
                    for r in rows)]


def random_hint(specs: list[InputSpec]) -> str:
    """When a model fails on synthesised inputs: which integer inputs were random, and
    how to give them values."""
    ints = [s["name"] for s in specs
            if (s.get("fill") or {"kind": "random"})["kind"] == "random"
            and np.issubdtype(np.dtype(s["dtype"]), np.integer)]
    if not ints:
        return ""
    return (f" (inputs {', '.join(repr(n) for n in ints)} were random integers 0..7; "
            f"give the values the model expects with --input NAME=VALUE or --inputs "
            "FILE.npz)")


def markdown(report: dict[str, Any]) -> list[str]:
    """The inputs a run sent and its real batch, for report.md (the command keeps them
    in the report as ``inputs``)."""
    inp = report.get("inputs")
    if not inp:
        return []
    out = ["", f"Inputs (batch {inp['batch']}: {inp['batch_from']}):", ""]
    out += [f"- `{t['name']}` {t['dtype']} {t['shape']}: {t['how']}" for t in inp["tensors"]]
    return out + [f"- warning: {w}" for w in inp["warnings"]]
