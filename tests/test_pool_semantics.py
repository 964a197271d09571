"""Max-pooling corner rules of API.md on every backend: NaN wins, first NaN's index,
ties pick the first maximum, a window of -inf picks its first in-bounds cell, and
the ceil_mode window rule."""

from __future__ import annotations

import numpy as np
import pytest

import cnnfast


def pool(backend, x, *args, **kw):
    y, idx = cnnfast.max_pool(backend.asarray(x), *args, return_indices=True,
                              backend=backend.name, **kw)
    return backend.numpy(y), backend.numpy(idx)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nan_wins_and_first_nan_gives_index(backend, dtype):
    x = np.array([[[1.0, np.nan, 5.0, np.nan, 2.0, 3.0]]], dtype)
    y, idx = pool(backend, x, 3)
    assert np.isnan(y[0, 0, 0]) and np.isnan(y[0, 0, 1])
    np.testing.assert_array_equal(idx[0, 0], [1, 3])


def test_nan_in_2d_window(backend):
    x = np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4)
    x[0, 0, 1, 0] = np.nan
    x[0, 0, 1, 1] = np.nan
    y, idx = pool(backend, x, 2)
    assert np.isnan(y[0, 0, 0, 0])
    assert idx[0, 0, 0, 0] == 4  # (1, 0): first NaN in scan order
    assert y[0, 0, 1, 1] == 15


def test_ties_pick_first_maximum(backend):
    x = np.array([[[[3.0, 3.0], [3.0, 3.0]]]])
    _, idx = pool(backend, x, 2)
    assert idx[0, 0, 0, 0] == 0
    x = np.array([[[1.0, 7.0, 7.0, 2.0, 7.0]]])
    _, idx = pool(backend, x, 3, 1)
    np.testing.assert_array_equal(idx[0, 0], [1, 1, 2])


def test_all_minus_inf_window_picks_first_in_bounds_cell(backend):
    x = np.full((1, 1, 4), -np.inf)
    y, idx = pool(backend, x, 3, 2, 1)  # first window: [pad, x0, x1]
    assert np.all(y == -np.inf)
    np.testing.assert_array_equal(idx[0, 0], [0, 1])


def test_padding_never_wins_over_negative_values(backend):
    x = -np.ones((1, 1, 3, 3)) * 5
    y, idx = pool(backend, x, 3, 1, 1)
    assert np.all(y == -5)


def test_ceil_mode_drops_window_starting_in_padding(backend):
    # in=4, k=2, s=2, pad=1, ceil: ceil((4+2-2)/2)+1 = 3 windows, the third would
    # start at 4 - 1 = 3 + ... = position 3 (inside), kept; in=3 pad=1 k=2 s=2:
    # ceil((3+2-2)/2)+1 = 3, third starts at 2*2-1 = 3 >= 3: dropped -> 2.
    x = np.arange(3.0).reshape(1, 1, 3)
    y, _ = pool(backend, x, 2, 2, 1, ceil_mode=True)
    assert y.shape == (1, 1, 2)
    x = np.arange(4.0).reshape(1, 1, 4)
    y, _ = pool(backend, x, 2, 2, 1, ceil_mode=True)
    assert y.shape == (1, 1, 3)


def test_max_pool_backward_accumulates_overlapping_winners(backend):
    x = np.array([[[0.0, 9.0, 0.0, 0.0]]])
    y, idx = pool(backend, x, 2, 1)
    np.testing.assert_array_equal(idx[0, 0], [1, 1, 2])
    gx = cnnfast.max_pool_backward(backend.asarray(np.ones_like(y)), backend.asarray(idx),
                                   x.shape, backend=backend.name)
    np.testing.assert_array_equal(backend.numpy(gx)[0, 0], [0, 2, 1, 0])


@pytest.mark.parametrize("shape", [(3, 5, 7, 7), (2, 4, 13), (2, 3, 3, 4, 5), (2, 2, 1, 1)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("divisor", [None, 3])
def test_global_average_pooling(backend, shape, dtype, divisor):
    """A window covering the whole plane (global pooling, dedicated paths on the CPU
    backends) agrees with the reference forward and backward; so does the same window
    with padding, which must not take those paths."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal(shape).astype(dtype)
    k = shape[2:]
    tol = 1e-12 if dtype == np.float64 else 2e-6
    kws = [dict(divisor_override=divisor)]
    if min(k) >= 2:
        kws.append(dict(stride=k, padding=1, ceil_mode=True, divisor_override=divisor))
    for kw in kws:
        y = cnnfast.avg_pool(backend.asarray(x), k, **kw, backend=backend.name)
        yr = cnnfast.avg_pool(x, k, **kw, backend="numpy")
        np.testing.assert_allclose(backend.numpy(y), yr, rtol=tol, atol=tol)
        gy = rng.standard_normal(yr.shape).astype(dtype)
        gx = cnnfast.avg_pool_backward(backend.asarray(gy), x.shape, k, **kw,
                                       backend=backend.name)
        gxr = cnnfast.avg_pool_backward(gy, x.shape, k, **kw, backend="numpy")
        np.testing.assert_allclose(backend.numpy(gx), gxr, rtol=tol, atol=tol)
