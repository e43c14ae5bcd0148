"""`ainative stress --model` on ONNX models that PyPI packages ship in their wheels, as an
ML engineer would bring them: an OCR text detector (a CNN whose height and width are
symbolic, from rapidocr-onnxruntime) and Silero's voice-activity detector (a recurrent
model with a state input [2, batch, 128] and an int64 scalar sample rate, from silero-vad,
in three exports: symbols named, symbols unnamed, batch fixed at 1).

The wheels are fetched once by pip (``pip download --no-deps``, pinned by version and
hash) into a cache directory and only the .onnx files are taken from them: installing the
packages would pull in torch and OpenCV, which the stress test never needs. Each model
runs through the real command (model server and load client processes, ONNX Runtime
inference) for a short, slow run; the assertions are on its --json.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

AINATIVE = [sys.executable, "-m", "ainative"]

# wheel (pinned, with its sha256 on PyPI) -> the models in it we use, with their sha256.
WHEELS: dict[tuple[str, str], dict[str, str]] = {
    ("rapidocr-onnxruntime==1.4.4",
     "971d7d5f223a7a808662229df1ef69893809d8457d834e6373d3854bc1782cbf"): {
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx":
            "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9",
    },
    ("silero-vad==6.2.3",
     "7b7f5436cfcb02fae583a05b512ea96467fd449fe54cb49a5e4f06c51a1e43b8"): {
        "silero_vad/data/silero_vad_16k_op15.onnx":
            "7ed98ddbad84ccac4cd0aeb3099049280713df825c610a8ed34543318f1b2c49",
        "silero_vad/data/silero_vad.onnx":
            "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3",
        "silero_vad/data/silero_vad_openvino_16k.onnx":
            "7776b81ad1b0350c15d7f1555943b9232eb53e9ca5d989c6d0cea9ebc8664d87",
    },
}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _cache_dir() -> Path:
    base = os.environ.get("AINATIVE_TEST_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "ainative-tests")
    return Path(base) / "shipped-models"


def _fetch(cache: Path, requirement: str, wheel_sha: str, members: dict[str, str]) -> None:
    missing = [m for m, sha in members.items()
               if not (cache / m).is_file() or _sha256(cache / m) != sha]
    if not missing:
        return
    dl = cache / "wheels"
    dl.mkdir(parents=True, exist_ok=True)
    req = dl / (requirement.split("==")[0] + ".txt")
    req.write_text(f"{requirement} --hash=sha256:{wheel_sha}\n")
    r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary",
                        ":all:", "--require-hashes", "-r", str(req), "-d", str(dl), "-q"],
                       capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["no output"])[-1]
        pytest.skip(f"pip could not download {requirement} (PyPI unreachable?): {last}")
    name = requirement.split("==")[0].replace("-", "_")
    (wheel,) = dl.glob(f"{name}-{requirement.split('==')[1]}-*.whl")
    with zipfile.ZipFile(wheel) as z:
        for m in missing:
            out = cache / m
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_suffix(".part")
            tmp.write_bytes(z.read(m))
            os.replace(tmp, out)
            assert _sha256(out) == members[m], f"{m} in {wheel.name} is not the model pinned"
    wheel.unlink()  # the models are what is kept


@pytest.fixture(scope="module")
def shipped() -> Path:
    """The directory holding the wheels' model files, at the paths they have in them."""
    cache = _cache_dir()
    for (requirement, sha), members in WHEELS.items():
        _fetch(cache, requirement, sha, members)
    return cache


def _stress(model: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*AINATIVE, "stress", "--model", str(model), "--rate", "20",
                           "--duration", "1s", "--warmup", "0", *args],
                          capture_output=True, text=True, timeout=180, cwd=cwd)


def _run_json(model: Path, *args: str) -> tuple[dict[str, Any], str]:
    r = _stress(model, "--json", *args)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    run = rep["scenarios"]["run"]
    assert run["completed"] > 0 and run["errors"] == 0, run
    return rep, r.stderr


def _tensors(rep: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["name"]: t for t in rep["inputs"]["tensors"]}


def test_ocr_detector_with_symbolic_height_and_width(shipped: Path) -> None:
    det = shipped / "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx"
    # As shipped: the error names the input, the axis, its symbol and the flags.
    r = _stress(det)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "axis 2 of input 'x'" in r.stderr and "--dim p2o.DynamicDimension.1=N" in r.stderr
    assert "--shape x=8,3,N,N" in r.stderr

    rep, err = _run_json(det, "--dim", "p2o.DynamicDimension.1=64",
                         "--dim", "p2o.DynamicDimension.2=96", "--batch", "2")
    x = _tensors(rep)["x"]
    assert x["shape"] == [2, 3, 64, 96] and x["dtype"] == "float32"
    assert x["fill"] == {"kind": "random"} and x["how"] == "random normal(0, 1)"
    assert rep["inputs"]["batch"] == 2 and rep["config"]["batch"] == 2
    assert rep["inputs"]["warnings"] == []
    # Printed before the run, on stderr (stdout is the JSON).
    assert "x  float32  [2, 3, 64, 96]  random normal(0, 1)" in err


def test_ocr_detector_whole_shape_sets_the_batch(shipped: Path) -> None:
    det = shipped / "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx"
    rep, err = _run_json(det, "--shape", "x=1,3,32,64", "--batch", "4")
    assert _tensors(rep)["x"]["shape"] == [1, 3, 32, 64]
    # The report says the batch that ran, and why --batch 4 did not.
    assert rep["inputs"]["batch"] == 1 == rep["config"]["batch"]
    assert rep["inputs"]["requested_batch"] == 4
    assert rep["inputs"]["batch_from"] == "--shape x=1,3,32,64"
    assert "--batch 4 does not apply" in rep["inputs"]["warnings"][0]
    assert "warning: --batch 4 does not apply" in err


def test_vad_with_state_and_an_int64_sample_rate(shipped: Path) -> None:
    vad = shipped / "silero_vad/data/silero_vad_16k_op15.onnx"
    rep, err = _run_json(vad, "--dim", "sequence=512", "--input", "sr=16000", "--batch", "3")
    t = _tensors(rep)
    assert t["input"]["shape"] == [3, 512]
    # 'batch' bound by axis 0 of 'input' is the same size at axis 1 of the state.
    assert t["state"]["shape"] == [2, 3, 128] and t["state"]["dtype"] == "float32"
    assert t["sr"] == {"name": "sr", "dtype": "int64", "shape": [],
                       "fill": {"kind": "value", "value": 16000}, "how": "value 16000 (--input)"}
    assert rep["inputs"]["batch"] == 3
    assert "sr     int64    []           value 16000 (--input)" in err


def test_vad_with_real_inputs_from_an_npz(shipped: Path, tmp_path: Path) -> None:
    import numpy as np

    vad = shipped / "silero_vad/data/silero_vad_16k_op15.onnx"
    npz = tmp_path / "speech.npz"
    rng = np.random.default_rng(0)
    # float64 audio, as audio libraries return it: cast to the model's float32.
    np.savez(npz, input=rng.uniform(-1, 1, (2, 256)), sr=np.array(8000))
    rep, _ = _run_json(vad, "--inputs", str(npz))
    t = _tensors(rep)
    assert t["input"]["shape"] == [2, 256] and t["input"]["dtype"] == "float32"
    assert t["input"]["fill"] == {"kind": "file", "path": str(npz), "key": "input"}
    assert t["state"]["shape"] == [2, 2, 128] and t["state"]["fill"] == {"kind": "random"}
    assert t["sr"]["fill"]["kind"] == "file"
    assert rep["inputs"]["batch"] == 2 and rep["inputs"]["batch_from"].startswith("--inputs")


def test_vad_with_unnamed_axes_needs_whole_shapes(shipped: Path) -> None:
    vad = shipped / "silero_vad/data/silero_vad.onnx"
    r = _stress(vad, "--shape", "input=2,512")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert ("axis 1 of input 'state' [2, ?, 128] is dynamic and has no name" in r.stderr
            and "--shape state=2,N,128" in r.stderr)
    rep, _ = _run_json(vad, "--shape", "input=2,512", "--shape", "state=2,2,128",
                       "--input", "sr=16000")
    assert _tensors(rep)["state"]["shape"] == [2, 2, 128]


def test_vad_with_batch_fixed_at_one_warns_and_reports_the_real_batch(shipped: Path) -> None:
    vad = shipped / "silero_vad/data/silero_vad_openvino_16k.onnx"
    rep, err = _run_json(vad, "--batch", "8")
    assert rep["config"]["batch"] == 1 == rep["inputs"]["batch"]
    assert rep["inputs"]["requested_batch"] == 8
    assert rep["inputs"]["batch_from"] == "fixed in the model at axis 0 of input 'input'"
    assert _tensors(rep)["state"]["shape"] == [2, 1, 128]
    assert "warning: --batch 8 does not apply (batch 1: fixed in the model" in err
    # Even when --batch was left at its default: the model ignores it either way.
    r = _stress(vad)
    assert r.returncode == 0 and "--batch 8 does not apply" in r.stderr
