"""The pooling kernel paths of cnnfast/backends/cuda/kernels/pool.cu that the shared grid's automatic
choices may not reach: one thread vs one warp per output (forward), the max-pool
backward's gather vs plane-scan modes (and its reach pre-pass under adversarial
indices), average backward with gaps and dilation, float16, determinism.

Runs on ``cuda-emu`` always and on ``cupy`` where CuPy reaches a GPU (the same
kernels; each backend skips with its reason when unavailable).
"""

from __future__ import annotations

import numpy as np
import pytest

from cnnfast.backends.cuda import pool_launch
from cnnfast import params as P
from cnnfast.backends.numpy import backend as ref


def _runtime(name):
    if name == "cuda-emu":
        from cnnfast.backends.cuda import emu_backend as mod
    else:
        from cnnfast.backends.cuda import cupy_backend as mod
    reason = mod.availability()
    if reason is not None:
        pytest.skip(f"{name} unavailable: {reason}")
    return mod.runtime()


@pytest.fixture(scope="module", params=["cuda-emu", "cupy"])
def rt(request):
    return _runtime(request.param)


def dev(rt, a):
    return rt.xp.asarray(a)


def host(a):
    return a.get() if hasattr(a, "get") else np.asarray(a)


def f64(a):
    return np.asarray(a, np.float64)


# Shapes (x shape, kernel, stride, padding, dilation, ceil, count_include_pad, divisor):
# global windows, windows of more than 32 taps (several per lane on the warp path),
# asymmetric padding, dilation, ceil mode, ranks 1-3.
SHAPES = [
    ((2, 3, 7, 7), 7, None, 0, 1, False, True, None),
    ((1, 2, 10, 9), (6, 7), 1, (2, 3), 1, False, False, None),
    ((2, 2, 41), 37, 2, 4, 1, True, False, None),
    ((1, 2, 23), 5, 3, 2, 2, True, True, None),
    ((1, 2, 5, 6, 7), 4, 2, ((2, 1), 1, (0, 2)), 1, True, True, 3),
    ((2, 3, 9, 8), 3, 2, 1, 1, True, False, None),
    ((1, 1, 12, 12), (5, 4), (1, 3), 1, (2, 1), False, True, None),
]


def _params(spec):
    return P.pool_params(*spec)


def _data(rng, shape, dtype):
    x = rng.standard_normal(shape)
    x[..., ::3] = np.round(x[..., ::3])  # ties
    return x.astype(dtype)


# ----------------------------------------------------------------------------- forward


@pytest.mark.parametrize("path", ["thread", "warp"])
@pytest.mark.parametrize("spec", SHAPES, ids=lambda s: "x".join(map(str, s[0])))
def test_forward_paths_match_reference(rt, path, spec):
    p = _params(spec)
    rng = np.random.default_rng(hash(spec) % 2**32)
    for dtype, tol in ((np.float64, 1e-12), (np.float32, 1e-5)):
        x = _data(rng, spec[0], dtype)
        with pool_launch.override(fwd=path):
            y, idx = pool_launch.max_pool(rt, dev(rt, x), p, True)
            y_only, none = pool_launch.max_pool(rt, dev(rt, x), p, False)
            a = pool_launch.avg_pool(rt, dev(rt, x), p)
        ey, eidx = ref.max_pool(f64(x), p, True)
        assert none is None
        np.testing.assert_array_equal(host(idx), eidx)
        np.testing.assert_array_equal(host(y), ey.astype(dtype))
        np.testing.assert_array_equal(host(y_only), host(y))
        np.testing.assert_allclose(host(a), ref.avg_pool(f64(x), p), rtol=tol, atol=tol)


@pytest.mark.parametrize("path", ["thread", "warp"])
def test_forward_paths_special_values(rt, path):
    # 70-tap windows: on the warp path the winners come from the lane reduction.
    x = np.zeros((1, 6, 70))
    x[0, 0, [40, 7]] = np.nan                 # first NaN (in scan order) gives the index
    x[0, 1, [65, 33]] = 5.0                   # ties: the first maximum
    x[0, 2] = -np.inf                         # only -inf: the first in-bounds cell
    x[0, 3, 50] = np.inf
    x[0, 3, 60] = np.nan                      # NaN beats +inf
    x[0, 4] = -np.arange(70.0)                # first cell is the max
    x[0, 5] = np.arange(70.0)                 # last cell is the max
    p = P.pool_params(x.shape, 70, 1, 3, 1, False)  # windows start in the padding
    with pool_launch.override(fwd=path):
        y, idx = pool_launch.max_pool(rt, dev(rt, x), p, True)
    y, idx = host(y), host(idx)
    ey, eidx = ref.max_pool(x, p, True)
    np.testing.assert_array_equal(idx, eidx)
    np.testing.assert_array_equal(y, ey)
    assert idx[0, 0, 0] == 7 and idx[0, 1, 0] == 33 and idx[0, 2, 0] == 0
    assert idx[0, 3, 0] == 60 and np.isnan(y[0, 3, 0])
    assert idx[0, 4, 0] == 0 and idx[0, 5, 0] == 66  # window 0 covers [-3, 67)


def test_forward_path_choice():
    glob = P.pool_params((32, 512, 7, 7), 7, None, 0, 1, False)
    small = P.pool_params((32, 64, 112, 112), 3, 2, 1, 1, False)
    huge = P.pool_params((32, 64, 64, 64), 16, 16, 0, 1, False)
    assert pool_launch._forward_path(2 * 512, glob) == "warp"       # few outputs
    assert pool_launch._forward_path(32 * 512, glob) == "thread"    # enough threads
    assert pool_launch._forward_path(32 * 64 * 56 * 56, small) == "thread"
    assert pool_launch._forward_path(32 * 64 * 16, huge) == "warp"
    with pool_launch.override(fwd="thread"):
        assert pool_launch._forward_path(2 * 512, glob) == "thread"
    with pytest.raises(ValueError, match="fwd"):
        with pool_launch.override(fwd="block"):
            pass
    with pytest.raises(ValueError, match="max_bwd"):
        with pool_launch.override(max_bwd="atomic"):
            pass


def test_forward_float16_paths(rt):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 9, 8)).astype(np.float16)
    p = P.pool_params(x.shape, 3, 2, 1, 1, True, False, None)
    ey, eidx = ref.max_pool(f64(x), p, True)
    ea = ref.avg_pool(f64(x), p)
    for path in ("thread", "warp"):
        with pool_launch.override(fwd=path):
            y, idx = pool_launch.max_pool(rt, dev(rt, x), p, True)
            a = pool_launch.avg_pool(rt, dev(rt, x), p)
        assert host(y).dtype == np.float16 and host(a).dtype == np.float16
        np.testing.assert_array_equal(host(idx), eidx)
        np.testing.assert_array_equal(host(y), ey.astype(np.float16))
        np.testing.assert_allclose(f64(host(a)), ea, rtol=2e-3, atol=2e-3)


# ----------------------------------------------------------------------------- max backward


@pytest.mark.parametrize("spec", SHAPES, ids=lambda s: "x".join(map(str, s[0])))
def test_max_backward_modes_match_reference_bitwise(rt, spec):
    p = _params(spec)
    rng = np.random.default_rng(7)
    x = _data(rng, spec[0], np.float64)
    _, idx = ref.max_pool(x, p, True)
    gy = rng.standard_normal(idx.shape)
    expected = ref.max_pool_backward(gy, idx, x.shape)
    results = {}
    for mode in ("gather", "segments", "scatter", None):
        with pool_launch.override(max_bwd=mode):
            results[mode] = host(pool_launch.max_pool_backward(rt, dev(rt, gy), dev(rt, idx),
                                                               x.shape))
        np.testing.assert_allclose(results[mode], expected, rtol=1e-12, atol=1e-12)
    # Every mode sums each cell's contributions in output order: identical bits.
    assert results["gather"].tobytes() == results["segments"].tobytes()
    assert results["scatter"].tobytes() == results["gather"].tobytes()
    assert results[None].tobytes() == results["gather"].tobytes()


@pytest.mark.parametrize("kind", ["random", "zeros", "last", "reversed"])
@pytest.mark.parametrize("xshape,oshape", [((2, 3, 9, 8), (4, 4)), ((2, 2, 30), (7,)),
                                           ((1, 2, 4, 5, 6), (2, 3, 2)),
                                           ((2, 2, 5, 5), (9, 9))])
def test_max_backward_arbitrary_indices(rt, kind, xshape, oshape):
    # Indices far from any window (widen the reach), and more outputs than inputs.
    rng = np.random.default_rng(11)
    plane = int(np.prod(xshape[2:]))
    shape = xshape[:2] + oshape
    count = int(np.prod(oshape))
    idx = {"random": lambda: rng.integers(0, plane, shape),
           "zeros": lambda: np.zeros(shape, np.int64),
           "last": lambda: np.full(shape, plane - 1, np.int64),
           "reversed": lambda: np.broadcast_to(
               (plane - 1 - np.arange(count) * plane // count).reshape(oshape), shape).copy(),
           }[kind]().astype(np.int64)
    gy = rng.standard_normal(shape).astype(np.float32)
    expected = ref.max_pool_backward(f64(gy), idx, xshape)
    for mode in ("gather", "segments", "scatter", None):
        with pool_launch.override(max_bwd=mode):
            gx = host(pool_launch.max_pool_backward(rt, dev(rt, gy), dev(rt, idx), xshape))
        assert gx.dtype == np.float32
        np.testing.assert_allclose(gx, expected, rtol=1e-5, atol=1e-5, err_msg=str(mode))


def test_max_backward_is_deterministic_with_many_collisions(rt):
    # Every output of a plane points at one of two cells: long sums, fixed order.
    rng = np.random.default_rng(12)
    xshape = (2, 2, 16, 16)
    gy = rng.standard_normal((2, 2, 15, 15)).astype(np.float32)
    idx = rng.integers(0, 2, gy.shape).astype(np.int64) * 17
    first = host(pool_launch.max_pool_backward(rt, dev(rt, gy), dev(rt, idx), xshape))
    again = host(pool_launch.max_pool_backward(rt, dev(rt, gy), dev(rt, idx), xshape))
    assert first.tobytes() == again.tobytes()
    np.testing.assert_allclose(first, ref.max_pool_backward(f64(gy), idx, xshape),
                               rtol=1e-4, atol=1e-4)


def test_max_backward_float16(rt):
    rng = np.random.default_rng(13)
    x = rng.standard_normal((2, 3, 9, 8)).astype(np.float16)
    p = P.pool_params(x.shape, 3, 2, 1, 1, False)
    _, idx = ref.max_pool(f64(x), p, True)
    gy = rng.standard_normal(idx.shape).astype(np.float16)
    expected = ref.max_pool_backward(f64(gy), idx, x.shape)
    for mode in ("gather", "segments", "scatter"):
        with pool_launch.override(max_bwd=mode):
            gx = host(pool_launch.max_pool_backward(rt, dev(rt, gy), dev(rt, idx), x.shape))
        assert gx.dtype == np.float16
        np.testing.assert_allclose(f64(gx), expected, rtol=2e-3, atol=2e-3)


# ----------------------------------------------------------------------------- avg backward


@pytest.mark.parametrize("spec", SHAPES + [
    ((1, 2, 17), 2, 5, 0, 1, False, True, None),          # stride > kernel: gaps
    ((1, 2, 11, 13), 3, (4, 2), 1, (3, 2), True, False, None),  # dilation and gaps
], ids=lambda s: "x".join(map(str, s[0])))
def test_avg_backward_matches_reference(rt, spec):
    p = _params(spec)
    rng = np.random.default_rng(17)
    gy = rng.standard_normal(spec[0][:2] + p.out_shape)
    gx = host(pool_launch.avg_pool_backward(rt, dev(rt, gy), p))
    np.testing.assert_allclose(gx, ref.avg_pool_backward(gy, p), rtol=1e-12, atol=1e-12)
    g32 = host(pool_launch.avg_pool_backward(rt, dev(rt, gy.astype(np.float32)), p))
    np.testing.assert_allclose(g32, ref.avg_pool_backward(gy, p), rtol=1e-5, atol=1e-5)


def test_max_backward_path_choice_and_auto_scatter(rt):
    assert pool_launch._max_bwd_scatter(8 * 8 * 8, 16 * 16 * 16)        # 3-D stride 2: 1/8
    assert not pool_launch._max_bwd_scatter(56 * 56, 112 * 112)         # 2-D stride 2: 1/4
    with pool_launch.override(max_bwd="scatter"):
        assert pool_launch._max_bwd_scatter(56 * 56, 112 * 112)
    # The automatic choice takes the scatter path here; same bits as the gather.
    rng = np.random.default_rng(21)
    x = _data(rng, (1, 2, 8, 8, 8), np.float32)
    p = P.pool_params(x.shape, 3, 2, 1, 1, False)
    _, idx = ref.max_pool(f64(x), p, True)
    gy = rng.standard_normal(idx.shape).astype(np.float32)
    auto = host(pool_launch.max_pool_backward(rt, dev(rt, gy), dev(rt, idx), x.shape))
    with pool_launch.override(max_bwd="gather"):
        gathered = host(pool_launch.max_pool_backward(rt, dev(rt, gy), dev(rt, idx), x.shape))
    assert auto.tobytes() == gathered.tobytes()
    np.testing.assert_allclose(auto, ref.max_pool_backward(f64(gy), idx, x.shape),
                               rtol=1e-5, atol=1e-5)
