"""A user's model and its inputs in `ainative stress`: how declared shapes become concrete
(feeds.resolve), a model with external data run from another directory, what a run at an
unsustainable rate says, and the arguments checked before a run rather than after it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from ainative.cli import main
from ainative.cli.stress_inputs import write_report_or_say
from ainative.stress import models
from ainative.stress.batch import InputSpec, synthesise
from ainative.stress.feeds import Declared, Dim, FeedError, parse_options, resolve
from ainative.stress.preflight import PreflightError, check_pool

AINATIVE = [sys.executable, "-m", "ainative"]


def _vad_like() -> list[Declared]:
    return [Declared("input", "tensor(float)", "float32", ["batch", "sequence"]),
            Declared("state", "tensor(float)", "float32", [2, "batch", 128]),
            Declared("sr", "tensor(int64)", "int64", [])]


def test_batch_symbol_is_the_batch_at_every_axis_and_dim_fills_the_rest() -> None:
    res = resolve(_vad_like(), 4, parse_options(dims=("sequence=512",),
                                                values=("sr=16000", "state=0")), "vad")
    shapes = {s["name"]: s["shape"] for s in res.specs}
    assert shapes == {"input": [4, 512], "state": [2, 4, 128], "sr": []}
    assert res.specs[2]["fill"] == {"kind": "value", "value": 16000}
    arrays = synthesise(res.specs)  # what the model server and the load client both make
    assert arrays["sr"].dtype == np.int64 and arrays["sr"].shape == () and arrays["sr"] == 16000
    assert arrays["state"].shape == (2, 4, 128) and not arrays["state"].any()
    assert arrays["input"].std() > 0.5  # random normal
    assert (res.batch, res.batch_from, res.warnings) == (4, "--batch", [])


def test_a_whole_shape_binds_its_symbols_in_the_other_inputs() -> None:
    res = resolve(_vad_like(), 8, parse_options(shapes=("input=3,256",)), "vad",
                  batch_explicit=False)
    assert [s["shape"] for s in res.specs] == [[3, 256], [2, 3, 128], []]
    # --batch was the default: no warning, but the report says the batch that ran.
    assert (res.batch, res.batch_from, res.warnings) == (3, "--shape input=3,256", [])
    explicit = resolve(_vad_like(), 8, parse_options(shapes=("input=3,256",)), "vad")
    assert explicit.warnings == ["--batch 8 does not apply (batch 3: --shape input=3,256); "
                                 "the run uses batch 3"]


def test_a_batch_fixed_in_the_model_always_warns() -> None:
    fixed = [Declared("x", "tensor(float)", "float32", [1, 576])]
    res = resolve(fixed, 8, None, "m", batch_explicit=False)
    assert res.batch == 1 and res.specs[0]["shape"] == [1, 576]
    assert "--batch 8 does not apply (batch 1: fixed in the model" in res.warnings[0]
    assert resolve(fixed, 1, None, "m").warnings == []


@pytest.mark.parametrize(("decl", "opts", "expect"), [
    ([None, None], {}, r"axis 1 of input 'x' \[\?, \?\] is dynamic and has no name.*"
                       r"--shape x=2,N"),
    (["b", "?", 3], {}, r"--shape x=2,N,3"),
    (["b", "h"], {}, r"dynamic dimension 'h'; give its size with --dim h=N"),
    (["b", "h"], {"dims": ("w=3",)}, r"--dim w=\.\.\.: no input of m has an axis named 'w'"),
    (["b", "h"], {"dims": ("h=3",), "shapes": ("x=2,4",)},
     r"--shape x=2,4 makes axis 'h' 4, but --dim h=3 made it 3"),
    ([2, "h"], {"shapes": ("x=3,4",)}, r"axis 0 of input 'x' is fixed at 2 in the model"),
    (["b", "h"], {"shapes": ("x=3",)}, r"input 'x' has 2 axes \['b', 'h'\], not 1"),
    (["b", 5], {"shapes": ("y=3,5",)}, r"--shape y=\.\.\.: m has no input 'y' \(its inputs: x\)"),
    (["b", 5], {"values": ("y=1",)}, r"--input y=\.\.\.: m has no input 'y'"),
    (None, {}, r"input 'x' declares no shape at all; give it with --shape x="),
    (["b", "h"], {"dims": ("h=2147483648",), "shapes": ("x=2147483648,2147483648",)},
     r"one request carries at most 4 GiB"),
])
def test_shapes_that_cannot_be_made_say_which_flag_fixes_them(
        decl: list[Dim] | None, opts: dict[str, Any], expect: str) -> None:
    with pytest.raises(FeedError, match=expect):
        resolve([Declared("x", "tensor(float)", "float32", decl)], 2, parse_options(**opts),
                "m")


@pytest.mark.parametrize(("dtype", "value", "expect"), [
    ("int64", "16000", 16000), ("bool", "true", True), ("float32", "0.5", 0.5),
    ("int8", "300", "does not fit int8"), ("int64", "1.5", "give a whole number"),
    ("bool", "yes", "use true, false, 1 or 0"), ("float16", "1e6", "does not fit float16"),
    ("float32", "abc", "give a number"),
])
def test_input_values_are_typed_by_the_input(dtype: str, value: str,
                                             expect: object) -> None:
    decl = [Declared("v", f"tensor({dtype})", dtype, [])]
    opts = parse_options(values=(f"v={value}",))
    if isinstance(expect, str):
        with pytest.raises(FeedError, match=expect):
            resolve(decl, 1, opts, "m")
    else:
        spec = resolve(decl, 1, opts, "m").specs[0]
        assert spec["fill"]["value"] == expect
        assert synthesise([spec])["v"].dtype == np.dtype(dtype)


@pytest.mark.parametrize(("kwargs", "expect"), [
    ({"shapes": ("x",)}, "use NAME=1,3,640,640"),
    ({"shapes": ("x=1,0",)}, "'0' is not a size"),
    ({"shapes": ("x=1,3", "x=1,4")}, "given twice"),
    ({"dims": ("h=-1",)}, "not a size"),
    ({"values": ("sr",)}, "use NAME=VALUE"),
    ({"npz": "/nonexistent/feeds.npz"}, "no such readable file"),
])
def test_malformed_flags_are_one_line_errors(kwargs: dict[str, Any], expect: str) -> None:
    with pytest.raises(FeedError, match=expect):
        parse_options(**kwargs)


def test_npz_inputs_are_checked_against_the_model(tmp_path: Path) -> None:
    decl = [Declared("x", "tensor(float)", "float32", ["b", 4]),
            Declared("n", "tensor(int64)", "int64", [])]
    good = tmp_path / "good.npz"
    np.savez(good, x=np.ones((3, 4)), n=np.array(7))
    res = resolve(decl, 8, parse_options(npz=str(good)), "m", batch_explicit=False)
    arrays = synthesise(res.specs)
    assert arrays["x"].dtype == np.float32 and arrays["x"].shape == (3, 4)
    assert (arrays["x"] == 1).all() and int(arrays["n"]) == 7 and res.batch == 3
    for name, content, expect in (
            ("extra.npz", {"x": np.ones((3, 4)), "y": np.ones(2)}, "arrays \\['y'\\] are not"),
            ("shape.npz", {"x": np.ones((3, 5))}, "axis 1 of input 'x' is fixed at 4"),
            ("kind.npz", {"x": np.ones((3, 4), np.complex64)}, "is complex64; the model"),
            ("wrap.npz", {"x": np.ones((3, 4)), "n": np.array(2**40, np.int64)}, None),
    ):
        np.savez(tmp_path / name, **content)
        if expect is None:  # int64 into int64: any value fits
            resolve(decl, 8, parse_options(npz=str(tmp_path / name)), "m")
            continue
        with pytest.raises(FeedError, match=expect):
            resolve(decl, 8, parse_options(npz=str(tmp_path / name)), "m")
    int8 = [Declared("n", "tensor(int8)", "int8", [])]
    np.savez(tmp_path / "big.npz", n=np.array(300, np.int64))
    with pytest.raises(FeedError, match=r"array 'n' holds 300\.\.300, which does not fit"):
        resolve(int8, 1, parse_options(npz=str(tmp_path / "big.npz")), "m")
    np.savez(tmp_path / "small.npz", n=np.array(-5, np.int64))
    spec = resolve(int8, 1, parse_options(npz=str(tmp_path / "small.npz")), "m").specs[0]
    assert synthesise([spec])["n"] == -5
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(FeedError, match=r"not an \.npz archive"):
        resolve(decl, 8, parse_options(npz=str(tmp_path / "text.npz")), "m")
    with pytest.raises(FeedError, match="given both by --input and by --inputs"):
        resolve(decl, 8, parse_options(values=("n=1",), npz=str(good)), "m")


def _external_model(directory: Path) -> Path:
    """The built-in MLP saved as a model whose weights are in a file beside it, as every
    model over 2 GB must be."""
    model = models.build("mlp-small")
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "features"
    path = directory / "ext.onnx"
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location="ext.weights", size_threshold=0)
    assert path.stat().st_size < 4096 < (directory / "ext.weights").stat().st_size
    return path


def test_external_data_model_runs_from_another_directory(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "elsewhere").mkdir()
    path = _external_model(tmp_path / "model")
    rel = os.path.relpath(path, tmp_path / "elsewhere")
    r = subprocess.run([*AINATIVE, "stress", "--model", rel, "--rate", "20", "--duration",
                        "1s", "--warmup", "0", "--batch", "2", "--dim", "features=256",
                        "--json", "--report", str(tmp_path / "rep")],
                       capture_output=True, text=True, timeout=180, cwd=tmp_path / "elsewhere")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    run = rep["scenarios"]["run"]
    assert run["completed"] > 0 and run["errors"] == 0
    assert rep["inputs"]["tensors"] == [{"name": "x", "dtype": "float32", "shape": [2, 256],
                                         "fill": {"kind": "random"},
                                         "how": "random normal(0, 1)"}]
    # 20/s is easy: sustainable, and nothing said about capacity.
    assert run["capacity"]["sustainable"] is True and "not sustainable" not in r.stderr
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "Inputs (batch 2: --batch):" in md and "- `x` float32 [2, 256]" in md
    saved = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert saved["inputs"] == rep["inputs"]


def test_an_unsustainable_rate_says_the_capacity() -> None:
    # The attention block at batch 8 takes milliseconds a request: 5000/s is far beyond
    # this machine, whatever else runs on it.
    r = subprocess.run([*AINATIVE, "stress", "--model", "attention", "--rate", "5000",
                        "--duration", "1s", "--warmup", "0", "--json"],
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    run = json.loads(r.stdout)["scenarios"]["run"]
    cap = run["capacity"]
    assert cap["sustainable"] is False and cap["dropped"] == run["dropped"] > 0
    # The client drains the queue after the run's last second, so what the server did is
    # less than completed / duration.
    assert 0 < cap["capacity_per_s"] < run["completed"] / run["elapsed_s"]
    assert "target rate 5000/s not sustainable: capacity about " in r.stderr


def test_bad_pool_and_report_fail_before_the_run(tmp_path: Path) -> None:
    runner = CliRunner()
    r = runner.invoke(main, ["stress", "--model", "mlp-small", "--duration", "1s",
                             "--pool", "1K"])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert "--pool 1K: too small: one request's inputs take 8.0 KiB" in r.output
    assert "duration" not in r.output  # no run
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    r = runner.invoke(main, ["stress", "--model", "mlp-small", "--duration", "1s",
                             "--report", str(blocker / "reports")])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert f"--report {blocker / 'reports'}: cannot write there (Not a directory)" in r.output
    assert "inputs of" not in r.output  # checked before even the model


def test_a_report_that_cannot_be_written_after_the_run_says_so(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    paths, err = write_report_or_say({"scenarios": {}}, str(blocker / "reports"))
    assert paths == [] and err.startswith(f"--report {blocker / 'reports'}: cannot write")


@pytest.mark.parametrize("size", ["20K", "64K", "300K", "1M"])
def test_pool_check_agrees_with_a_real_pool(size: str) -> None:
    """Sizes above the bytes two requests ask for, where the allocator's size classes
    decide: the check must refuse exactly the pools in which two requests' inputs do not
    fit."""
    from ainative.mem import PinnedPool

    specs = [InputSpec(name="x", dtype="float32", shape=[8, 256]),
             InputSpec(name="y", dtype="int64", shape=[3])]
    pool = PinnedPool(size, lock="never", report_to_daemon=False, cuda_register=False)
    bufs = []
    try:
        for _ in range(2):
            bufs += [pool.alloc(8 * 256 * 4), pool.alloc(3 * 8)]
        fits = True
    except MemoryError:
        fits = False
    finally:
        for b in bufs:
            b.free()
        pool.close()
    if fits:
        check_pool(size, specs, workers=2)
    else:
        with pytest.raises(PreflightError, match=f"--pool {size}: too small.*size classes"):
            check_pool(size, specs, workers=2)


def _result(p50_ms: float, max_ms: float, completed: int, dropped: int = 0
            ) -> dict[str, Any]:
    return {"config": {"rate": 100.0, "mode": "latency"}, "service_time_ms": 1.0,
            "elapsed_s": 10.0, "completed": completed, "dropped": dropped,
            "latency": {"p50_ms": p50_ms, "max_ms": max_ms}}


def test_a_stall_is_not_a_lack_of_capacity_but_a_queue_is() -> None:
    from ainative.stress.capacity import assess, message

    # One 2 s stall in a run that otherwise kept up: the median never waited.
    stall = assess(_result(p50_ms=1.2, max_ms=2000, completed=1000))
    assert stall is not None and stall["sustainable"] and message(stall) is None
    # A queue that built all run long and took 10 s to drain: 1000 in 20 s.
    queue = assess(_result(p50_ms=4000, max_ms=10000, completed=1000))
    assert queue is not None and not queue["sustainable"] and queue["capacity_per_s"] == 50
    assert message(queue) == ("target rate 100/s not sustainable: capacity about 50/s "
                              "(requests queued; requests completed per second of the run "
                              "and its queue's drain)")
    dropped = assess(_result(p50_ms=900, max_ms=1000, completed=550, dropped=450))
    assert dropped is not None and dropped["capacity_per_s"] == 50
    assert "450 requests dropped" in (message(dropped) or "")
