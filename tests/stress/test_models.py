"""Built-in models run in ONNX Runtime; user models get inputs from their shapes, and
clear errors when that cannot work."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from ainative.cli import main
from ainative.stress import models
from ainative.stress.feeds import parse_options


@pytest.mark.parametrize("name", sorted(models.BUILTIN))
def test_builtin_models_run(name: str, tmp_path: Path) -> None:
    path = models.materialise(name, str(tmp_path))
    sess = models.open_session(path, 1, "cpu")
    feeds = models.synthesise_inputs(sess, 4, name)
    (out,) = sess.run(None, feeds)
    assert out.shape[0] == 4 and np.isfinite(out).all()


def _model(tmp_path: Path, shape: list[object], name: str = "m.onnx") -> str:
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    p = tmp_path / name
    onnx.save(m, str(p))
    return str(p)


def test_user_model_batch_axis_is_filled(tmp_path: Path) -> None:
    path = models.materialise(_model(tmp_path, ["N", 3, 5]), str(tmp_path))
    feeds = models.synthesise_inputs(models.open_session(path, 1, "cpu"), 6, "m")
    assert feeds["x"].shape == (6, 3, 5) and feeds["x"].dtype == np.float32


def test_dynamic_inner_axis_is_a_clear_error_and_dim_fills_it(tmp_path: Path) -> None:
    path = models.materialise(_model(tmp_path, ["N", "seq", 5]), str(tmp_path))
    sess = models.open_session(path, 1, "cpu")
    with pytest.raises(models.ModelError, match=r"axis 1 of input 'x' \['N', 'seq', 5\] is "
                       r"the dynamic dimension 'seq'; give its size with --dim seq=N"):
        models.synthesise_inputs(sess, 2, "m")
    feeds = models.synthesise_inputs(sess, 2, "m", parse_options(dims=("seq=7",)))
    assert feeds["x"].shape == (2, 7, 5)
    # What the command reads from the file, without a session, is what the session says.
    assert models.file_inputs(path) == models.session_inputs(sess)


def test_cli_rejects_garbage_and_missing_files_cleanly(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not a protobuf \x00\xff" * 10)
    runner = CliRunner()
    for arg, expect in ((str(bad), "not a valid ONNX model"),
                        (str(tmp_path / "nope.onnx"), "no such built-in model or file"),
                        ("mlp-huge", "no such built-in model")):
        r = runner.invoke(main, ["stress", "--model", arg, "--duration", "1s"])
        assert r.exit_code == 1, r.output
        assert "Error:" in r.output and expect in r.output
        assert "Traceback" not in r.output
    dyn = _model(tmp_path, ["N", "seq", 5], "dyn.onnx")
    r = runner.invoke(main, ["stress", "--model", dyn, "--duration", "1s"])
    assert r.exit_code == 1 and "dynamic dimension" in r.output


def test_cuda_without_a_provider_is_a_clear_error(tmp_path: Path) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA; the error path does not apply")
    r = CliRunner().invoke(main, ["stress", "--device", "cuda", "--duration", "1s"])
    assert r.exit_code == 1 and "CUDAExecutionProvider" in r.output


def test_unsupported_input_type_and_unknown_operator_are_clear_errors(tmp_path: Path) -> None:
    g = helper.make_graph([helper.make_node("Identity", ["s"], ["t"])], "g",
                          [helper.make_tensor_value_info("s", TensorProto.STRING, [1])],
                          [helper.make_tensor_value_info("t", TensorProto.STRING, [1])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    strings = tmp_path / "strings.onnx"
    onnx.save(m, str(strings))
    g2 = helper.make_graph([helper.make_node("Frobnicate", ["x"], ["y"], domain="acme.ops")],
                           "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                           [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    m2 = helper.make_model(g2, opset_imports=[helper.make_opsetid("", 17),
                                              helper.make_opsetid("acme.ops", 1)])
    m2.ir_version = 8
    custom = tmp_path / "custom.onnx"
    onnx.save(m2, str(custom))
    runner = CliRunner()
    for path, expect in ((strings, "cannot synthesise"), (custom, "onnxruntime cannot load")):
        r = runner.invoke(main, ["stress", "--model", str(path), "--duration", "1s"])
        assert r.exit_code == 1, r.output
        assert expect in r.output and path.name in r.output
        assert "Traceback" not in r.output
