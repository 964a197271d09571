"""max_pool_backward on the CPU backends that write their own gradient (cpp, numba)
against the numpy reference, bit for bit: the gradient goes to the recorded winner
and the values landing on one cell are summed in output order from +0, as
``np.add.at`` does. The grid covers overlapping windows (several gradients per
cell), ties, every rank, plane sizes that are and are not a multiple of 16 bytes and
planes larger than L2, misaligned and dirty ``out=`` arrays, thread counts and
special values."""

from __future__ import annotations

import numpy as np
import pytest

import cnnfast
from cnnfast import registry

BACKENDS = ["cpp", "numba"]

# (x shape, kernel, stride, padding): the plane sizes in float32 / float64
GRID = [
    ((2, 3, 26, 26), 2, 2, 0),        # 2704 / 5408 bytes a plane
    ((2, 3, 32, 32), 3, 2, 1),        # overlapping windows
    ((2, 2, 5, 5), 2, 1, 0),          # 100 / 200 bytes: not a multiple of 16
    ((1, 2, 7, 9), 3, 1, 1),          # 63 cells, each winner shared by up to 9 windows
    ((2, 3, 64), 3, 2, 1),            # 1-d
    ((1, 2, 4, 6, 6), 2, 2, 0),       # 3-d
    ((1, 2, 4, 6, 5), (2, 3, 2), 1, 0),  # 3-d, odd plane, overlapping
    ((1, 2, 300, 300), 2, 2, 0),      # 360 / 720 KiB per plane
    ((1, 1, 256, 256), 2, 2, 0),      # 256 / 512 KiB
]


def _need(name):
    b = registry.get_backend(name)
    if not b.available:
        pytest.skip(f"backend {name!r} unavailable: {b.reason}")


def _bits(a):
    return a.view(np.uint32 if a.dtype == np.float32 else np.uint64)


def _case(shape, k, s, p, dtype, seed=0, gy_values=None):
    rng = np.random.default_rng(seed)
    # Few distinct values make ties (the first maximum wins) and shared winners common.
    x = rng.integers(-3, 4, size=shape).astype(dtype)
    _, idx = cnnfast.max_pool(x, k, s, p, return_indices=True, backend="numpy")
    if gy_values is None:
        gy = rng.standard_normal(idx.shape).astype(dtype)
    else:
        gy = rng.choice(np.asarray(gy_values, dtype), size=idx.shape)
    return x, gy, idx


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,k,s,p", GRID)
def test_matches_reference_bit_for_bit(backend, dtype, shape, k, s, p):
    _need(backend)
    x, gy, idx = _case(shape, k, s, p, dtype)
    gy0, idx0 = gy.copy(), idx.copy()
    ref = cnnfast.max_pool_backward(gy, idx, shape, backend="numpy")
    got = cnnfast.max_pool_backward(gy, idx, shape, backend=backend)
    assert got.dtype == dtype and got.shape == shape
    np.testing.assert_array_equal(_bits(got), _bits(ref))
    # the inputs are left alone
    np.testing.assert_array_equal(gy, gy0)
    np.testing.assert_array_equal(idx, idx0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape,k,s,p", [GRID[1], GRID[2], GRID[7]])
def test_one_and_two_threads_agree(backend, shape, k, s, p, threads):
    _need(backend)
    _, gy, idx = _case(shape, k, s, p, np.float32, seed=3)
    out = []
    for n in (1, 2):
        threads(n)
        out.append(cnnfast.max_pool_backward(gy, idx, shape, backend=backend))
    np.testing.assert_array_equal(_bits(out[0]), _bits(out[1]))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,k,s,p", [GRID[0], GRID[2], GRID[7]])
def test_out_misaligned_and_dirty(backend, dtype, shape, k, s, p):
    """out= not 16-byte aligned and full of NaN: every cell is overwritten."""
    _need(backend)
    _, gy, idx = _case(shape, k, s, p, dtype, seed=5)
    n = int(np.prod(shape))
    raw = np.empty(n + 4, dtype)
    start = next(i for i in range(1, 4) if raw[i:].ctypes.data % 16)
    out = raw[start:start + n].reshape(shape)
    out[...] = np.nan
    assert cnnfast.max_pool_backward(gy, idx, shape, backend=backend, out=out) is out
    ref = cnnfast.max_pool_backward(gy, idx, shape, backend="numpy")
    np.testing.assert_array_equal(_bits(out), _bits(ref))


@pytest.mark.parametrize("backend", BACKENDS)
def test_calls_of_changing_plane_sizes(backend):
    """Nothing of one call leaks into the next (per-thread scratch, caches):
    alternate plane sizes and compare every result."""
    _need(backend)
    for i, (shape, k, s, p) in enumerate([GRID[7], GRID[0], GRID[1], GRID[2], GRID[0],
                                          GRID[8], GRID[1]]):
        _, gy, idx = _case(shape, k, s, p, np.float32, seed=10 + i)
        ref = cnnfast.max_pool_backward(gy, idx, shape, backend="numpy")
        got = cnnfast.max_pool_backward(gy, idx, shape, backend=backend)
        np.testing.assert_array_equal(_bits(got), _bits(ref))


@pytest.mark.filterwarnings("ignore:invalid value encountered")  # the reference's inf - inf
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,k,s,p", [GRID[1], GRID[3], GRID[7]])
def test_special_values(backend, dtype, shape, k, s, p):
    """NaN, infinities (inf + -inf on a shared winner is NaN), signed zeros (-0 added
    to +0 is +0) and denormals are summed as the reference sums them."""
    _need(backend)
    tiny = np.finfo(dtype).smallest_subnormal
    vals = [np.nan, np.inf, -np.inf, -0.0, 0.0, tiny, -tiny, 1.5, -2.25]
    _, gy, idx = _case(shape, k, s, p, dtype, seed=7, gy_values=vals)
    ref = cnnfast.max_pool_backward(gy, idx, shape, backend="numpy")
    got = cnnfast.max_pool_backward(gy, idx, shape, backend=backend)
    np.testing.assert_array_equal(got, ref)  # NaN where the reference has NaN
    finite = ~np.isnan(ref)
    np.testing.assert_array_equal(_bits(got)[finite], _bits(ref)[finite])


@pytest.mark.parametrize("plane", [(4, 4), (300, 300), (5, 5)])
def test_cpp_binding_counts_out_of_range_indices(plane):
    """The binding rejects indices outside the plane, small or large, negative or
    not (the API checks them first; the kernel skips and counts them rather than
    write out of bounds)."""
    _need("cpp")
    from cnnfast.backends.cpp import _cpp

    n = plane[0] * plane[1]
    gy = np.ones((1, 2, 2, 2), np.float32)
    for bad in (-1, n):
        idx = np.zeros((1, 2, 2, 2), np.int64)
        idx[0, 1, 1, 0] = bad
        gx = np.zeros((1, 2) + plane, np.float32)
        with pytest.raises(ValueError, match="1 indices lie outside"):
            _cpp.max_pool_backward(gy, idx, gx, 2)


@pytest.mark.parametrize("backend", BACKENDS + ["numpy"])
@pytest.mark.parametrize("bad", [-1, -(2 ** 62), 2 ** 63 - 1, "plane"])
def test_api_rejects_indices_outside_the_plane_before_any_work(backend, bad):
    """One pass over the indices (read as unsigned) catches negative and too large
    ones alike; the message gives their signed range, and out= is left untouched."""
    _need(backend)
    shape = (2, 3, 8, 8)
    _, gy, idx = _case(shape, 2, 2, 0, np.float32)
    idx = idx.copy()
    idx[1, 2, 3, 0] = 64 if bad == "plane" else bad
    out = np.full(shape, 7.0, np.float32)
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 64\)") as err:
        cnnfast.max_pool_backward(gy, idx, shape, backend=backend, out=out)
    lo, hi = int(idx.min()), int(idx.max())
    assert f"[{lo}, {hi}]" in str(err.value)
    assert np.all(out == 7.0)


# Average pooling whose window is the whole plane (global pooling): the numba and cpp
# kernels' one-sum-per-plane paths (planes shorter than a vector, a whole number of
# vectors, an odd plane count split over threads), and the near misses that must take
# the general path (padding, a window short of the plane, dilation, several outputs).
GLOBAL = [
    ((3, 5, 7, 7), dict(kernel_size=7)),
    ((1, 3, 2, 2), dict(kernel_size=2)),
    ((2, 33, 8, 8), dict(kernel_size=8)),
    ((2, 4, 9), dict(kernel_size=9)),
    ((2, 3, 3, 4, 5), dict(kernel_size=(3, 4, 5))),
    ((2, 3, 1, 1), dict(kernel_size=1)),
    ((3, 5, 7, 7), dict(kernel_size=7, divisor_override=5)),
    ((3, 5, 7, 7), dict(kernel_size=7, padding=1, count_include_pad=False)),
    ((3, 5, 7, 7), dict(kernel_size=7, padding=1, count_include_pad=True)),
    ((3, 5, 7, 7), dict(kernel_size=(7, 6))),
    ((3, 5, 7, 7), dict(kernel_size=4, dilation=2)),
    ((3, 5, 7, 7), dict(kernel_size=7, stride=1, padding=3)),
]


@pytest.mark.parametrize("name", ["numba", "cpp"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,kw", GLOBAL)
def test_global_avg_pool_path_matches_reference(name, dtype, shape, kw):
    _need(name)
    rng = np.random.default_rng(11)
    x = (rng.standard_normal(shape) * 3 + 1).astype(dtype)
    x0 = x.copy()
    ref = cnnfast.avg_pool(x.astype(np.float64), backend="numpy", **kw)
    got = cnnfast.avg_pool(x, backend=name, **kw)
    assert got.dtype == dtype and got.shape == ref.shape
    # Only the summation order differs (a plane's sum is vectorised): float64 to a
    # few ulps of the window's magnitude; float32 to its accumulated rounding.
    scale = np.abs(x.astype(np.float64)).max()
    tol = 1e-13 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(got, ref, rtol=tol, atol=tol * scale)
    np.testing.assert_array_equal(x, x0)


@pytest.mark.parametrize("name", ["numba", "cpp"])
@pytest.mark.filterwarnings("ignore:invalid value encountered")  # the reference's inf - inf
def test_global_avg_pool_special_values_and_threads(threads, name):
    _need(name)
    x = np.random.default_rng(12).standard_normal((4, 6, 5, 5))
    x[0, 0, 2, 2] = np.nan
    x[1, 1, 0, 0] = np.inf
    x[2, 2, 4, 4], x[2, 2, 0, 1] = np.inf, -np.inf
    out = []
    for n in (1, 2):
        threads(n)
        out.append(cnnfast.avg_pool(x, 5, backend=name))
    np.testing.assert_array_equal(out[0], out[1])
    ref = cnnfast.avg_pool(x, 5, backend="numpy")
    assert np.isnan(out[0][0, 0, 0, 0]) and out[0][1, 1, 0, 0] == np.inf
    assert np.isnan(out[0][2, 2, 0, 0])
    finite = np.isfinite(ref)
    np.testing.assert_allclose(out[0][finite], ref[finite], rtol=1e-13, atol=1e-13)


def test_pool_window_counts_are_kept_read_only():
    from cnnfast import params as P

    p = P.pool_params((1, 1, 9, 9), 3, 2, 1, 1, False)
    a = P.pool_window_counts(p, 0)
    b = P.pool_window_counts(p, 0)
    assert a[0] is b[0] and a[1] is b[1]  # computed once per (params, dim)
    for arr in a:
        assert not arr.flags.writeable
        with pytest.raises(ValueError):
            arr[0] = 0
    np.testing.assert_array_equal(a[0], [2, 3, 3, 3, 2])
    np.testing.assert_array_equal(a[1], [3, 3, 3, 3, 3])
