"""Worked examples computed by hand, on every backend."""

from __future__ import annotations

import numpy as np
import pytest

import cnnfast

DTYPES = [np.float64, np.float32]


def run(backend, fn, *arrays, **kw):
    out = fn(*(backend.asarray(a) for a in arrays), backend=backend.name, **kw)
    return backend.numpy(out)


@pytest.mark.parametrize("dtype", DTYPES)
def test_binary_image_convolution(backend, dtype):
    image = np.array([[1, 1, 1, 0, 0], [0, 1, 1, 1, 0], [0, 0, 1, 1, 1], [0, 0, 1, 1, 0],
                      [0, 1, 1, 0, 0]], dtype)[None, None]
    kernel = np.array([[1, 0, 1], [0, 1, 0], [1, 0, 1]], dtype)[None, None]
    y = run(backend, cnnfast.conv2d, image, kernel)
    np.testing.assert_array_equal(y[0, 0], [[4, 3, 4], [2, 4, 3], [2, 3, 4]])


@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pool_2x2_stride2(backend, dtype):
    x = np.array([[2, 3, 1, 9], [4, 7, 3, 5], [8, 2, 2, 2], [1, 3, 4, 5]], dtype)[None, None]
    np.testing.assert_array_equal(run(backend, cnnfast.max_pool2d, x, kernel_size=2)[0, 0],
                                  [[7, 9], [8, 5]])


X2 = [[2, 1, 1, 3], [4, 5, 2, 1], [1, 4, 5, 3], [5, 1, 7, 6]]


@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pool_2x2_stride1(backend, dtype):
    x = np.array(X2, dtype)[None, None]
    y = run(backend, cnnfast.max_pool2d, x, kernel_size=2, stride=1)
    np.testing.assert_array_equal(y[0, 0], [[5, 5, 3], [5, 5, 5], [5, 7, 7]])


@pytest.mark.parametrize("dtype", DTYPES)
def test_avg_pool_2x2_stride2(backend, dtype):
    x = np.array(X2, dtype)[None, None]
    y = run(backend, cnnfast.avg_pool2d, x, kernel_size=2)
    np.testing.assert_array_equal(y[0, 0], [[3, 1.75], [2.75, 5.25]])


def test_52x52_fifteen_12x12_kernels_stride2(backend):
    x = np.ones((1, 1, 52, 52), np.float32)
    w = np.ones((15, 1, 12, 12), np.float32)
    y = run(backend, cnnfast.conv2d, x, w, stride=2)
    assert y.shape == (1, 15, 21, 21)
    np.testing.assert_array_equal(y, 144.0)


def test_conv_transpose_stride2_spreads_input(backend):
    # Each input element stamps the 2-tap kernel [1, 10] at stride 2.
    x = np.array([[[1.0, 2.0, 3.0]]])
    w = np.array([[[1.0, 10.0]]])
    y = run(backend, cnnfast.conv_transpose1d, x, w, stride=2)
    np.testing.assert_array_equal(y[0, 0], [1, 10, 2, 20, 3, 30])


def test_avg_pool_ceil_mode_divisor(backend):
    # 5 wide, kernel 2, stride 2, ceil_mode: last window covers only x[4]; padding 0
    # so its divisor is 1 whether or not padding counts.
    x = np.array([[[1.0, 3.0, 5.0, 7.0, 9.0]]])
    y = run(backend, cnnfast.avg_pool1d, x, kernel_size=2, ceil_mode=True)
    np.testing.assert_array_equal(y[0, 0], [2, 6, 9])
    # With padding 1 and count_include_pad: windows [pad,1], [3,5], [7,9]: /2 each.
    y = run(backend, cnnfast.avg_pool1d, x, kernel_size=2, padding=1)
    np.testing.assert_array_equal(y[0, 0], [0.5, 4, 8])
