"""The cpp max pooling's fixed-window rows (csrc/pool/max_pool.h, ``max_row_fixed``:
2x2 and 3x3 windows, stride 1 or 2 along the rows, no dilation) against the numpy
reference, on data made of ties, signed zeros, infinities and NaNs, where the rules
of docs/API.md (first maximum, first NaN, NaN never loses) decide every output; with
and without indices, on every SIMD path. The outputs whose windows reach into the
padding or past the input (ceil_mode) take the general path, in the same row as fixed
ones or in rows of their own; planes with other windows take it throughout."""

from __future__ import annotations

import numpy as np
import pytest

import cnnfast as cf
from helpers.simd import ALL_PATHS, forced_path

pytest.importorskip("cnnfast.backends.cpp._cpp", reason="C++ extension not built")

VALUES = np.array([-np.inf, -1.0, -0.0, 0.0, 1.0, 2.0, np.inf, np.nan])

# (x spatial shape, max_pool arguments): the fixed windows in every output, in the rows
# inside the input, in the outputs inside a row, and in none.
CASES = [
    ((26, 26), dict(kernel_size=2)),  # the seed CNN's pooling: 13 outputs a row
    ((9, 75), dict(kernel_size=2, stride=(2, 2))),
    ((8, 17), dict(kernel_size=2, stride=1)),
    ((11, 23), dict(kernel_size=3, stride=2)),
    ((7, 40), dict(kernel_size=3, stride=1)),
    ((9, 21), dict(kernel_size=3, stride=(1, 2))),
    ((3, 6, 10), dict(kernel_size=(1, 2, 2))),  # 3-d, a depth window of 1
    ((10, 19), dict(kernel_size=3, stride=2, padding=((1, 1), (0, 0)))),
    ((4, 7, 10), dict(kernel_size=(1, 3, 3), stride=2, padding=((0, 0), (1, 1), (0, 0)))),
    ((9, 20), dict(kernel_size=3, stride=2, padding=1)),  # padded row ends
    ((10, 31), dict(kernel_size=3, stride=2, padding=1)),  # ResNet's stem pool
    ((12, 12), dict(kernel_size=2, stride=1, padding=1)),
    ((7, 7), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)),
    ((5, 3), dict(kernel_size=3, stride=2, padding=1)),  # no window inside a row
    ((9, 20), dict(kernel_size=2, stride=2, padding=((0, 0), (0, 1)))),
    ((9, 9), dict(kernel_size=2, ceil_mode=True)),  # the last window overhangs
    ((9, 20), dict(kernel_size=2, dilation=2)),
    ((9, 20), dict(kernel_size=(2, 3))),
]


def _adversarial(shape, dtype, seed):
    rng = np.random.default_rng(seed)
    return VALUES[rng.integers(0, VALUES.size, (2, 3) + shape)].astype(dtype)


def _same_values(a, b):
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
    np.testing.assert_array_equal(np.signbit(a), np.signbit(b))
    np.testing.assert_array_equal(np.nan_to_num(a), np.nan_to_num(b))


@pytest.mark.parametrize("path", ALL_PATHS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, kw", CASES)
def test_fixed_windows_match_the_reference(path, dtype, shape, kw):
    for seed in range(3):
        x = _adversarial(shape, dtype, seed)
        ref_y, ref_idx = cf.max_pool(x, return_indices=True, backend="numpy", **kw)
        with forced_path(path):
            y, idx = cf.max_pool(x, return_indices=True, backend="cpp", **kw)
            y_only = cf.max_pool(x, backend="cpp", **kw)
        np.testing.assert_array_equal(idx, ref_idx)
        _same_values(y, ref_y)
        _same_values(y_only, ref_y)


def test_nan_held_never_loses_and_first_nan_wins():
    x = np.array([[[[np.nan, 5.0, 1.0, np.nan, np.inf, 2.0],
                    [np.inf, np.nan, np.nan, 3.0, -np.inf, np.nan]]]], np.float32)
    y, idx = cf.max_pool(x, 2, return_indices=True, backend="cpp")
    assert np.isnan(y[0, 0, 0]).all()
    np.testing.assert_array_equal(idx[0, 0, 0], [0, 3, 11])
