"""Pool memory handed to real consumers: ONNX Runtime through IOBinding (a real session
on the project's built-in models), and PyTorch through DLPack when it is installed."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from ainative.mem import BufferInUse, PinnedPool
from ainative.mem.ort import BindError, bind_pinned
from ainative.stress.models import build


def _session(name: str) -> Any:
    return ort.InferenceSession(build(name).SerializeToString(),
                                providers=["CPUExecutionProvider"])


def _inside(pool: PinnedPool, a: np.ndarray) -> bool:
    return pool.address <= a.ctypes.data and a.ctypes.data + a.nbytes <= (
        pool.address + pool.capacity)


@pytest.mark.parametrize("model,shape", [("mlp-small", (4, 256)),
                                         ("attention", (2, 128, 256))])
def test_outputs_land_in_the_pool_without_a_copy(model: str, shape: tuple[int, ...]) -> None:
    session = _session(model)
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape).astype(np.float32)
    (want,) = session.run(None, {"x": x})
    with PinnedPool("32MiB", lock="try", report_to_daemon=False) as pool, \
            bind_pinned(session, pool, {"x": x}) as pb:
        out = pb.outputs["y"]
        assert _inside(pool, out) and _inside(pool, pb.inputs["x"])
        assert out.shape == want.shape and out.dtype == want.dtype
        out[...] = np.nan  # anything ORT did not write into this very memory stays NaN
        got = pb.run()["y"]
        assert got is out and np.allclose(out, want, atol=1e-5)
        # The next request, written in place into the bound input, is what ORT reads.
        x2 = rng.standard_normal(shape).astype(np.float32)
        pb.inputs["x"][...] = x2
        pb.run()
        assert np.allclose(out, session.run(None, {"x": x2})[0], atol=1e-5)
        assert pool.stats()["blocks_in_use"] == 2
        del out, got
    assert pool.stats()["blocks_in_use"] == 0  # closing the binding gave them back


def test_a_feed_already_in_the_pool_is_bound_where_it_is() -> None:
    session = _session("mlp-small")
    with PinnedPool("8MiB", lock="try", report_to_daemon=False) as pool:
        x = pool.empty((1, 256), np.float32)
        x[...] = 0.5
        buf = pool.alloc(shape=(1, 256), dtype=np.float32)
        np.asarray(buf)[...] = 0.5
        for feed in (x, buf.array()):
            pb = bind_pinned(session, pool, {"x": feed})
            assert pb.bound_in_place == ["x"] and pb.inputs["x"] is feed
            feed[...] = 0.25  # no copy was made: ORT sees the change
            want = session.run(None, {"x": np.full((1, 256), 0.25, np.float32)})[0]
            assert np.allclose(pb.run()["y"], want, atol=1e-6)
            pb.close()
            del pb
        with pytest.raises(BufferInUse):
            buf.free()  # the loop's last feed, a view of it, is alive
        del feed
        buf.free()


def test_bad_feeds_are_one_line_errors() -> None:
    session = _session("mlp-small")
    with PinnedPool("8MiB", lock="try", report_to_daemon=False) as pool:
        for feeds, match in (({"nope": np.zeros((1, 256), np.float32)}, "no input 'nope'"),
                             ({}, "no feed for input 'x'"),
                             ({"x": np.zeros((1, 7), np.float32)}, "did not run")):
            with pytest.raises(BindError, match=match) as ei:
                bind_pinned(session, pool, feeds)
            assert "\n" not in str(ei.value)
        assert pool.stats()["blocks_in_use"] == 0


def test_torch_from_dlpack_gets_dtype_and_shape() -> None:
    """PyTorch is not a dev dependency (the PyPI wheel pulls in gigabytes of CUDA
    libraries, and the CPU-only index is not reachable from CI); runs where it is
    installed."""
    torch = pytest.importorskip(
        "torch", reason="torch is not installed (not a dev dependency: too large)")
    with PinnedPool("4MiB", lock="try", report_to_daemon=False) as pool:
        buf = pool.alloc(shape=(3, 4), dtype=np.float32)
        np.asarray(buf)[...] = np.arange(12, dtype=np.float32).reshape(3, 4)
        t = torch.from_dlpack(buf)
        assert t.dtype == torch.float32 and tuple(t.shape) == (3, 4)
        assert t.data_ptr() == buf.address and float(t[2, 3]) == 11.0
        t[0, 0] = 42.0  # shared memory, both ways
        assert np.asarray(buf)[0, 0] == 42.0
        with pytest.raises(BufferInUse):
            buf.free()
        del t
        buf.free()
