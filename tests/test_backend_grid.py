"""Every backend against the numpy reference, over the grid of ``tests/cases.py``.

The oracle is the numpy reference computed in float64 (from the same, possibly
float32, inputs). Tolerances:

* float64: rtol 1e-9, atol 1e-9 x the output's magnitude: only summation order differs.
* float32: 1e-4 x the output's magnitude (plus rtol 1e-4). The longest reduction in the
  grid sums K <= ~1,300 products (weight gradients over N x output positions); a
  float32 sum of K terms is accurate to about K x 6e-8 of the sum of magnitudes in the
  worst case (~8e-5), and to ~sqrt(K) x 6e-8 typically, so 1e-4 cannot hide a wrong
  tap or channel (those are O(1) errors) yet leaves room for any summation order.

Max-pool indices must match exactly.
"""

from __future__ import annotations

import numpy as np
import pytest

import cnnfast
from cnnfast.backends.numpy import backend as ref
from cnnfast import params as P

from cases import conv_cases, conv_transpose_cases, make_array, pool_cases

DTYPES = [pytest.param(np.float64, id="f64"), pytest.param(np.float32, id="f32")]


def assert_close(actual, expected, dtype, what):
    assert actual.dtype == dtype, f"{what}: dtype {actual.dtype}, expected {dtype}"
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    scale = max(1.0, float(np.max(np.abs(expected)))) if expected.size else 1.0
    tol = 1e-9 if dtype == np.float64 else 1e-4
    np.testing.assert_allclose(actual.astype(np.float64), expected, rtol=tol,
                               atol=tol * scale, err_msg=what)


def _conv_inputs(case, dtype, transposed, seed=0):
    rng = np.random.default_rng(seed)
    x = make_array(rng, (case.n, case.c_in) + case.spatial, dtype, case.noncontiguous)
    w = make_array(rng, case.weight_shape(transposed), dtype, case.noncontiguous)
    b = rng.standard_normal(case.c_out).astype(dtype) if case.bias else None
    return x, w, b


def _f64(a):
    return None if a is None else np.asarray(a, np.float64)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", conv_cases(), ids=lambda c: c.id())
def test_conv(backend, case, dtype):
    x, w, b = _conv_inputs(case, dtype, False)
    kw = dict(stride=case.stride, padding=case.padding, dilation=case.dilation,
              groups=case.groups)
    p = P.conv_params((case.n, case.c_in) + case.spatial, w.shape, **kw)
    y = backend.numpy(cnnfast.conv(backend.asarray(x), backend.asarray(w),
                                   backend.asarray(b), backend=backend.name, **kw))
    expected = ref.conv(_f64(x), _f64(w), _f64(b), p)
    assert_close(y, expected, dtype, "y")

    gy = np.random.default_rng(1).standard_normal(expected.shape).astype(dtype)
    grads = cnnfast.conv_backward(backend.asarray(gy), backend.asarray(x),
                                  backend.asarray(w), backend=backend.name, **kw)
    expected_grads = ref.conv_backward(_f64(gy), _f64(x), _f64(w), p,
                                       frozenset(("x", "weight", "bias")))
    for name, got, exp in zip(("grad_x", "grad_weight", "grad_bias"), grads,
                              expected_grads):
        assert_close(backend.numpy(got), exp, dtype, name)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", conv_transpose_cases(), ids=lambda c: c.id())
def test_conv_transpose(backend, case, dtype):
    x, w, b = _conv_inputs(case, dtype, True)
    kw = dict(stride=case.stride, padding=case.padding, output_padding=case.output_padding,
              groups=case.groups, dilation=case.dilation)
    p = P.conv_transpose_params((case.n, case.c_in) + case.spatial, w.shape, **kw)
    y = backend.numpy(cnnfast.conv_transpose(backend.asarray(x), backend.asarray(w),
                                             backend.asarray(b), backend=backend.name, **kw))
    expected = ref.conv_transpose(_f64(x), _f64(w), _f64(b), p)
    assert_close(y, expected, dtype, "y")

    gy = np.random.default_rng(1).standard_normal(expected.shape).astype(dtype)
    grads = cnnfast.conv_transpose_backward(backend.asarray(gy), backend.asarray(x),
                                            backend.asarray(w), backend=backend.name, **kw)
    expected_grads = ref.conv_transpose_backward(_f64(gy), _f64(x), _f64(w), p,
                                                 frozenset(("x", "weight", "bias")))
    for name, got, exp in zip(("grad_x", "grad_weight", "grad_bias"), grads,
                              expected_grads):
        assert_close(backend.numpy(got), exp, dtype, name)


@pytest.mark.parametrize("needs", [("x",), ("weight",), ("bias",), ("x", "bias"), ()])
def test_conv_backward_needs(backend, needs):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 4, 7, 6))
    w = rng.standard_normal((6, 2, 3, 3))
    gy = rng.standard_normal((2, 6, 5, 4))
    got = cnnfast.conv_backward(backend.asarray(gy), backend.asarray(x), backend.asarray(w),
                                groups=2, needs=needs, backend=backend.name)
    for name, g in zip(("x", "weight", "bias"), got):
        assert (g is not None) == (name in needs), name


def _pool_input(case, dtype):
    rng = np.random.default_rng(5)
    return make_array(rng, (case.n, case.c) + case.spatial, dtype, case.noncontiguous)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", pool_cases(), ids=lambda c: c.id())
def test_max_pool(backend, case, dtype):
    x = _pool_input(case, dtype)
    kw = dict(kernel_size=case.kernel, stride=case.stride, padding=case.padding,
              dilation=case.dilation, ceil_mode=case.ceil_mode)
    p = P.pool_params(x.shape, case.kernel, case.stride, case.padding, case.dilation,
                      case.ceil_mode)
    y, idx = cnnfast.max_pool(backend.asarray(x), return_indices=True,
                              backend=backend.name, **kw)
    exp_y, exp_idx = ref.max_pool(_f64(x), p, True)
    assert_close(backend.numpy(y), exp_y, dtype, "y")
    idx = backend.numpy(idx)
    assert idx.dtype == np.int64
    np.testing.assert_array_equal(idx, exp_idx)
    y_only = cnnfast.max_pool(backend.asarray(x), backend=backend.name, **kw)
    np.testing.assert_array_equal(backend.numpy(y_only), backend.numpy(y))

    gy = np.random.default_rng(1).standard_normal(exp_y.shape).astype(dtype)
    gx = cnnfast.max_pool_backward(backend.asarray(gy), backend.asarray(idx), x.shape,
                                   backend=backend.name)
    assert_close(backend.numpy(gx), ref.max_pool_backward(_f64(gy), exp_idx, x.shape),
                 dtype, "grad_x")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", pool_cases(), ids=lambda c: c.id())
def test_avg_pool(backend, case, dtype):
    x = _pool_input(case, dtype)
    kw = dict(kernel_size=case.kernel, stride=case.stride, padding=case.padding,
              ceil_mode=case.ceil_mode, count_include_pad=case.count_include_pad,
              divisor_override=case.divisor_override, dilation=case.dilation)
    p = P.pool_params(x.shape, case.kernel, case.stride, case.padding, case.dilation,
                      case.ceil_mode, case.count_include_pad, case.divisor_override)
    y = cnnfast.avg_pool(backend.asarray(x), backend=backend.name, **kw)
    exp_y = ref.avg_pool(_f64(x), p)
    assert_close(backend.numpy(y), exp_y, dtype, "y")

    gy = np.random.default_rng(1).standard_normal(exp_y.shape).astype(dtype)
    gx = cnnfast.avg_pool_backward(backend.asarray(gy), x.shape, backend=backend.name, **kw)
    assert_close(backend.numpy(gx), ref.avg_pool_backward(_f64(gy), p), dtype, "grad_x")


def test_inputs_not_modified(backend):
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 4, 8, 8))
    w = rng.standard_normal((4, 4, 3, 3))
    gy = rng.standard_normal((2, 4, 6, 6))
    copies = [a.copy() for a in (x, w, gy)]
    X, W, GY = (backend.asarray(a) for a in (x, w, gy))
    cnnfast.conv(X, W, backend=backend.name)
    cnnfast.conv_backward(GY, X, W, backend=backend.name)
    cnnfast.conv_transpose(GY, W, backend=backend.name)
    cnnfast.conv_transpose_backward(X, GY, W, backend=backend.name)
    y, idx = cnnfast.max_pool(X, 2, return_indices=True, backend=backend.name)
    cnnfast.max_pool_backward(y, idx, x.shape, backend=backend.name)
    cnnfast.avg_pool_backward(cnnfast.avg_pool(X, 3, 2, 1, backend=backend.name), x.shape,
                              3, 2, 1, backend=backend.name)
    for before, after in zip(copies, (X, W, GY)):
        np.testing.assert_array_equal(before, backend.numpy(after))


def test_deterministic(backend):
    """Two runs give bit-identical results."""
    rng = np.random.default_rng(11)
    x = backend.asarray(rng.standard_normal((4, 8, 12, 12)).astype(np.float32))
    w = backend.asarray(rng.standard_normal((16, 8, 3, 3)).astype(np.float32))
    gy = backend.asarray(rng.standard_normal((4, 16, 12, 12)).astype(np.float32))
    runs = []
    for _ in range(2):
        gx, gw, gb = cnnfast.conv_backward(gy, x, w, padding=1, backend=backend.name)
        y, idx = cnnfast.max_pool(x, 3, 2, 1, return_indices=True, backend=backend.name)
        gp = cnnfast.max_pool_backward(y, idx, tuple(x.shape), backend=backend.name)
        runs.append([backend.numpy(a) for a in (gx, gw, gb, y, idx, gp)])
    for a, b in zip(*runs):
        assert a.tobytes() == b.tobytes()
