"""The denormal policy: ``set_flush_denormal`` / ``get_flush_denormal`` (cnnfast/fpmode.py).

Default False: every CPU backend keeps denormals and agrees with the numpy reference
on results that are float32 denormals. True: cpp flushes them in every kernel thread
(results that would be denormal, and denormal inputs, become zero); numpy, numba and
cuda-emu cannot set their threads' floating-point mode and keep them (documented).
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import cnnfast
from cnnfast.registry import get_backend

TINY = np.float32(2.0 ** -70)  # normal; the product of two is 2**-140, a denormal
DENORMAL = np.float32(2.0 ** -140)  # sums of a few hundred stay denormal
assert 0 < TINY * TINY < np.finfo(np.float32).tiny and 0 < DENORMAL < np.finfo(np.float32).tiny


@pytest.fixture(autouse=True)
def restore_policy():
    before = cnnfast.get_flush_denormal()
    threads = cnnfast.get_num_threads()
    yield
    cnnfast.set_flush_denormal(before)
    cnnfast.set_num_threads(threads)


def _needs_cpp():
    if get_backend("cpp").reason is not None:
        pytest.skip(f"cpp unavailable: {get_backend('cpp').reason}")


def _tiny_results(backend):
    """Results whose exact values are float32 denormals, through several kernels:
    a dense (GEMM) and a depthwise (direct) convolution, a weight and a bias gradient,
    average pooling of denormal inputs and the max-pool scatter of denormal gradients.
    Enough work items that every kernel thread computes some."""
    x = np.full((4, 8, 12, 12), TINY, np.float32)
    w = np.full((8, 8, 3, 3), TINY, np.float32)
    wd = np.full((8, 1, 3, 3), TINY, np.float32)
    gy = np.full((4, 8, 10, 10), TINY, np.float32)
    gyd = np.full((4, 8, 10, 10), DENORMAL, np.float32)
    xd = np.full((4, 8, 12, 12), DENORMAL, np.float32)
    _, idx = cnnfast.max_pool(x, 2, return_indices=True, backend="numpy")
    gyp = np.full(idx.shape, DENORMAL, np.float32)
    b = dict(backend=backend)
    _, gw, _ = cnnfast.conv_backward(gy, x, w, needs=("weight",), **b)
    _, _, gb = cnnfast.conv_backward(gyd, x, w, needs=("bias",), **b)
    return {
        "conv": cnnfast.conv(x, w, **b),
        "depthwise": cnnfast.conv(x, wd, groups=8, **b),
        "grad_weight": gw,
        "grad_bias": gb,
        "avg_pool": cnnfast.avg_pool(xd, 2, **b),
        "max_pool_backward": cnnfast.max_pool_backward(gyp, idx, x.shape, **b),
    }


def test_default_is_false_in_a_fresh_process():
    code = ("import cnnfast; assert cnnfast.get_flush_denormal() is False; "
            "from cnnfast.backends.cpp import _cpp; assert not _cpp.get_flush_denormal()")
    if get_backend("cpp").reason is not None:
        code = code.split("; from")[0]
    subprocess.run([sys.executable, "-c", code], check=True)


def test_default_keeps_denormals_on_every_cpu_backend(backend):
    if backend.array != "numpy":
        pytest.skip("a CPU backend's test")
    cnnfast.set_flush_denormal(False)
    cnnfast.set_num_threads(2)
    expected = _tiny_results("numpy")
    got = _tiny_results(backend.name)
    for name, e in expected.items():
        assert e.any() and np.all(np.abs(e) < np.finfo(np.float32).tiny), name
        np.testing.assert_array_equal(got[name], e, err_msg=name)


def test_true_flushes_on_cpp_in_every_thread():
    _needs_cpp()
    cnnfast.set_num_threads(3)
    cnnfast.set_flush_denormal(True)
    for name, got in _tiny_results("cpp").items():
        assert not got.any(), f"{name}: {np.count_nonzero(got)} denormals were kept"
    # the calling thread's own mode is untouched by the kernels
    assert TINY * TINY != 0
    # and switching back keeps them again in every thread (the guard clears the bits)
    cnnfast.set_flush_denormal(False)
    expected = _tiny_results("numpy")
    for name, got in _tiny_results("cpp").items():
        np.testing.assert_array_equal(got, expected[name], err_msg=name)


@pytest.mark.parametrize("name", ["numpy", "numba"])
def test_true_is_not_honoured_by_numpy_and_numba(name):
    if get_backend(name).reason is not None:
        pytest.skip(get_backend(name).reason)
    cnnfast.set_flush_denormal(True)
    y = cnnfast.conv(np.full((1, 1, 3), TINY, np.float32), np.full((1, 1, 1), TINY, np.float32),
                     backend=name)
    assert np.all(y == TINY * TINY)  # documented: they keep denormals


def test_get_returns_what_was_set():
    for flag in (True, False, np.bool_(True), np.bool_(False)):
        cnnfast.set_flush_denormal(flag)
        assert cnnfast.get_flush_denormal() is bool(flag)
        if get_backend("cpp").reason is None:
            from cnnfast.backends.cpp import _cpp
            assert _cpp.get_flush_denormal() is bool(flag)


@pytest.mark.parametrize("bad", [1, 0, "yes", None, 1.0])
def test_non_bool_is_a_type_error_naming_the_argument(bad):
    cnnfast.set_flush_denormal(True)
    with pytest.raises(TypeError, match="flush"):
        cnnfast.set_flush_denormal(bad)
    assert cnnfast.get_flush_denormal() is True  # unchanged
