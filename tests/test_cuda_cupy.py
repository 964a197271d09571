"""The cupy backend on a real GPU: what the shared grid does not cover.

(The grid in tests/test_backend_grid.py already runs all eight operations of the
``cupy`` backend against the numpy reference when it is available.) Here:
determinism of the backward passes (no atomics), CuPy's on-disk kernel cache being hit
by a second process, and the launch path agreeing bit for bit with the emulator's
float64 results where the summation order is the same. Skipped without CuPy or a GPU.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cnnfast import params as P

cupy_backend = pytest.importorskip("cnnfast.backends.cuda.cupy_backend")
_reason = cupy_backend.availability()
if _reason is not None:
    pytest.skip(f"cupy backend unavailable: {_reason}", allow_module_level=True)

import cupy  # noqa: E402

import cnnfast  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_backward_passes_are_bitwise_deterministic(dtype):
    rng = np.random.default_rng(0)
    x = cupy.asarray(rng.standard_normal((8, 16, 20, 20)).astype(dtype))
    w = cupy.asarray(rng.standard_normal((32, 16, 3, 3)).astype(dtype))
    gy = cupy.asarray(rng.standard_normal((8, 32, 10, 10)).astype(dtype))
    runs = [cnnfast.conv_backward(gy, x, w, stride=2, padding=1, backend="cupy")
            for _ in range(3)]
    for r in runs[1:]:
        for a, b in zip(runs[0], r):
            assert a.get().tobytes() == b.get().tobytes()
    y, idx = cnnfast.max_pool(x, 3, 1, 1, return_indices=True, backend="cupy")
    g = cupy.asarray(rng.standard_normal(y.shape).astype(dtype))
    a = cnnfast.max_pool_backward(g, idx, x.shape, backend="cupy")
    b = cnnfast.max_pool_backward(g, idx, x.shape, backend="cupy")
    assert a.get().tobytes() == b.get().tobytes()


def test_numpy_arrays_are_refused():
    x = np.zeros((1, 1, 4, 4), np.float32)
    with pytest.raises(TypeError):
        cnnfast.max_pool(x, 2, backend="cupy")


def test_agrees_with_the_emulator():
    emu = pytest.importorskip("cnnfast.backends.cuda.emu_backend")
    if emu.availability():
        pytest.skip(emu.availability())
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 6, 9, 7))
    w = rng.standard_normal((4, 3, 3, 2))
    p = P.conv_params(x.shape, w.shape, (2, 1), 1, 1, 2)
    ye = emu.OPS["conv"](x, w, None, p)
    yc = cupy_backend.OPS["conv"](cupy.asarray(x), cupy.asarray(w), None, p).get()
    np.testing.assert_allclose(yc, ye, rtol=1e-13, atol=1e-13)


@pytest.mark.slow
def test_second_process_hits_cupys_kernel_cache(tmp_path):
    env = dict(os.environ, CUPY_CACHE_DIR=str(tmp_path))
    code = "from cnnfast.backends.cuda import cupy_backend as c; print(c.warmup())"

    def run():
        out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, check=True,
                             capture_output=True, text=True).stdout
        return float(out.split()[-1]), sorted(p.name for p in tmp_path.rglob("*") if p.is_file())

    cold, files1 = run()
    warm, files2 = run()
    assert files1, "CuPy wrote nothing to its kernel cache"
    assert files1 == files2, "the second process compiled again (cache miss)"
    assert warm < cold


@pytest.mark.parametrize("tile", ["small", "small16", "thin", "sliver"])
def test_every_tile_and_phase_path_on_the_gpu(tile):
    """The tile shapes and ADJ stride phases on the device, forced, against the numpy
    reference (float64): shapes big enough for several blocks per dim."""
    from cnnfast.backends.cuda import conv_launch
    from cnnfast.backends.numpy import backend as ref

    rt = cupy_backend.runtime()
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 24, 19, 17))
    w = rng.standard_normal((140, 12, 3, 3))
    b = rng.standard_normal(140)
    p = P.conv_params(x.shape, w.shape, (2, 1), ((1, 2), (1, 0)), (1, 2), 2)
    wt = rng.standard_normal((24, 70, 3, 3))
    pt = P.conv_transpose_params(x.shape, wt.shape, (3, 2), 1, (1, 0), 2, (2, 1))
    dev = cupy.asarray
    with conv_launch.override(path="gemm", tile=tile):
        y = conv_launch.conv(rt, dev(x), dev(w), dev(b), p)
        gy = rng.standard_normal(y.shape)
        grads = conv_launch.conv_backward(rt, dev(gy), dev(x), dev(w), p,
                                          frozenset({"x", "weight", "bias"}))
        yt = conv_launch.conv_transpose(rt, dev(x), dev(wt), None, pt)
        gyt = rng.standard_normal(yt.shape)
        gt = conv_launch.conv_transpose_backward(rt, dev(gyt), dev(x), dev(wt), pt,
                                                 frozenset({"x", "weight"}))
    np.testing.assert_allclose(y.get(), ref.conv(x, w, b, p), rtol=1e-10, atol=1e-10)
    for got, exp in zip(grads, ref.conv_backward(gy, x, w, p, {"x", "weight", "bias"})):
        np.testing.assert_allclose(got.get(), exp, rtol=1e-10, atol=1e-9)
    np.testing.assert_allclose(yt.get(), ref.conv_transpose(x, wt, None, pt), rtol=1e-10,
                               atol=1e-10)
    for got, exp in zip(gt[:2], ref.conv_transpose_backward(gyt, x, wt, pt, {"x", "weight"})[:2]):
        np.testing.assert_allclose(got.get(), exp, rtol=1e-10, atol=1e-9)
