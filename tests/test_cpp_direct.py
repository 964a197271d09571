"""The cpp backend's direct kernels for one input channel per group (depthwise
convolutions): the vectorised 1-d/2-d fast path (csrc/conv/direct2d.h, d2_*) and the
generic row kernels it falls back to, against the numpy reference.

The shapes aim at the fast path's corners: output rows shorter and longer than one
vector and not a multiple of it (the overlapping last vector), x and y strides 1-3
(phase rows, row blocks with y stride 1 and 2), dilations, asymmetric padding and
padding wider than the kernel, several outputs per group, inputs whose buffer is cut
into many row blocks, and the input gradient of strided convolutions (gy upsampled),
which transposed convolutions use as their forward. Every case runs on each SIMD
path, in float32 and float64."""

from __future__ import annotations

import numpy as np
import pytest

import cnnfast
from cnnfast import params as P
from cnnfast.backends.numpy import backend as ref
from cnnfast.registry import get_backend
from helpers.simd import ALL_PATHS, forced_path, runnable_simd_paths

_cpp = pytest.importorskip("cnnfast.backends.cpp._cpp", reason="C++ extension not built")
if get_backend("cpp").reason is not None:  # pragma: no cover - depends on the build
    pytest.skip(f"cpp backend unavailable: {get_backend('cpp').reason}",
                allow_module_level=True)


@pytest.fixture(params=ALL_PATHS)
def path(request):
    with forced_path(request.param):
        yield request.param


# (x shape, kernel, stride, padding, dilation, outputs per group); groups = channels.
CASES = [
    # 2-d, 3x3: row blocks (y stride 1), odd widths, a width below one vector
    ((2, 3, 13, 19), (3, 3), 1, 1, 1, 1),
    ((2, 4, 9, 5), (3, 3), 1, 1, 1, 1),
    ((1, 2, 6, 3), (3, 3), 1, 1, 1, 1),
    ((2, 3, 17, 8), (3, 3), 1, 0, 1, 2),
    # strides: phase rows (x stride 2, 3), row blocks with y stride 2
    ((2, 3, 15, 21), (3, 3), 2, 1, 1, 1),
    ((2, 2, 16, 33), (3, 3), (2, 3), ((0, 2), (1, 0)), 1, 1),
    ((1, 3, 11, 14), (3, 3), (1, 2), 1, 1, 3),
    ((1, 2, 12, 12), (3, 3), (3, 1), ((2, 1), (1, 2)), 1, 1),
    # dilation, with and without stride
    ((2, 3, 14, 23), (3, 3), 1, 2, 2, 1),
    ((2, 2, 19, 18), (3, 3), 2, ((1, 3), (2, 0)), (2, 3), 1),
    # other kernel sizes of the fast path
    ((2, 3, 16, 26), (5, 5), 1, 2, 1, 1),
    ((1, 2, 20, 17), (5, 5), 2, ((2, 1), (0, 2)), 1, 2),
    ((2, 2, 15, 15), (7, 7), 1, 3, 1, 1),
    ((1, 2, 18, 20), (7, 7), 2, 3, 1, 1),
    # padding wider than the kernel (the input gradient's padding goes negative)
    ((2, 2, 7, 9), (3, 3), 1, 4, 1, 1),
    ((1, 2, 6, 11), (3, 3), 2, ((3, 0), (0, 5)), 1, 1),
    # many row blocks: a wide input whose buffer rows are cut in blocks of a few rows
    ((1, 2, 9, 611), (3, 3), 1, 1, 1, 1),
    ((1, 1, 7, 1037), (5, 5), (1, 2), 2, 1, 1),
    # a kernel size without a fast path (generic row kernels), 2-d
    ((2, 3, 10, 12), (2, 4), 1, ((0, 1), (2, 1)), 1, 1),
    # 1-d: fast path (k = 3, 5) and generic (k = 4)
    ((2, 4, 37), (3,), 1, 1, 1, 1),
    ((2, 3, 50), (5,), 2, ((3, 1),), 2, 2),
    ((2, 3, 7), (3,), 1, 0, 1, 1),
    ((2, 3, 29), (4,), 3, 2, 1, 1),
    # 3-d: generic row kernels
    ((2, 3, 5, 6, 7), (3, 3, 3), 1, 1, 1, 1),
    ((1, 2, 6, 5, 9), (2, 3, 3), 2, ((1, 0), (0, 1), (1, 1)), (1, 1, 2), 2),
]


def _ids(case):
    xs, k, s, pad, d, og = case
    return f"x{'x'.join(map(str, xs))}-k{'x'.join(map(str, k))}-s{s}-p{pad}-d{d}-og{og}"


def _inputs(case, dtype, seed=0):
    xs, k, s, pad, d, og = case
    rng = np.random.default_rng(seed)
    c = xs[1]
    x = rng.standard_normal(xs)
    w = rng.standard_normal((c * og, 1) + k)
    b = rng.standard_normal(c * og)
    kw = dict(stride=s, padding=pad, dilation=d, groups=c)
    p = P.conv_params(x.shape, w.shape, s, pad, d, c)
    gy = rng.standard_normal((xs[0], c * og) + tuple(p.out_shape))
    return x, w, b, gy, p, kw


def _close(got, want, dtype):
    tol = 2e-4 if dtype == np.float32 else 1e-11
    assert got.dtype == dtype and got.shape == want.shape
    scale = max(1.0, float(np.abs(want).max()))
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * scale)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_direct_conv_matches_the_reference(path, case, dtype):
    x, w, b, gy, p, kw = _inputs(case, dtype)
    c = [a.astype(dtype) for a in (x, w, b, gy)]
    _close(cnnfast.conv(c[0], c[1], c[2], backend="cpp", **kw), ref.conv(x, w, b, p), dtype)
    got = cnnfast.conv_backward(c[3], c[0], c[1], backend="cpp", **kw)
    want = ref.conv_backward(gy, x, w, p, {"x", "weight", "bias"})
    for g, e in zip(got, want):
        _close(g, e, dtype)


# Transposed depthwise convolutions: their forward is the input-gradient kernel (with
# gy upsampled by the stride), their input gradient the forward kernel.
TRANSPOSED = [
    ((2, 3, 7, 9), (3, 3), 2, 1, 1, 1),
    ((2, 2, 6, 11), (3, 3), (2, 3), ((1, 0), (0, 2)), 1, 1),
    ((1, 3, 9, 10), (3, 3), 1, 1, 2, 1),
    ((1, 2, 5, 12), (5, 5), 2, 2, 1, 1),
    ((2, 3, 19), (3,), 2, 1, 1, 1),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", TRANSPOSED, ids=_ids)
def test_direct_conv_transpose_matches_the_reference(path, case, dtype):
    xs, k, s, pad, d, _ = case
    rng = np.random.default_rng(3)
    c = xs[1]
    x = rng.standard_normal(xs)
    w = rng.standard_normal((c, 1) + k)
    b = rng.standard_normal(c)
    rank = len(k)
    s_t = (s,) * rank if isinstance(s, int) else s
    op = tuple(si - 1 for si in s_t)  # the largest output padding
    kw = dict(stride=s, padding=pad, output_padding=op, groups=c, dilation=d)
    p = P.conv_transpose_params(x.shape, w.shape, s, pad, op, c, d)
    cast = [a.astype(dtype) for a in (x, w, b)]
    y = cnnfast.conv_transpose(*cast, backend="cpp", **kw)
    _close(y, ref.conv_transpose(x, w, b, p), dtype)
    gy = rng.standard_normal(y.shape)
    got = cnnfast.conv_transpose_backward(gy.astype(dtype), cast[0], cast[1], backend="cpp",
                                          **kw)
    want = ref.conv_transpose_backward(gy, x, w, p, {"x", "weight", "bias"})
    for g, e in zip(got, want):
        _close(g, e, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_direct_kernels_are_bit_identical_for_any_thread_count(threads, dtype):
    # Enough planes for every thread to get several work items (dynamic chunks).
    cases = [((4, 6, 13, 19), (3, 3), 1, 1, 1, 1), ((3, 4, 15, 21), (3, 3), 2, 1, 1, 2),
             ((2, 8, 1, 70), (1, 5), 1, 2, 1, 1), ((3, 5, 11, 17), (5, 5), 1, 2, 2, 1)]
    runs = []
    for n in (1, 2, 3):
        threads(n)
        out = []
        for case in cases:
            x, w, b, gy, _, kw = _inputs(case, dtype, seed=5)
            x, w, b, gy = (a.astype(dtype) for a in (x, w, b, gy))
            out.append(cnnfast.conv(x, w, b, backend="cpp", **kw))
            out.extend(cnnfast.conv_backward(gy, x, w, backend="cpp", **kw))
        runs.append(out)
    for other in runs[1:]:
        for a, e in zip(runs[0], other):
            assert np.array_equal(a, e)


def test_simd_paths_agree_closely():
    """The paths sum in different orders (vector widths, FMA), never far apart."""
    paths = runnable_simd_paths()
    if len(paths) < 2:
        pytest.skip(f"one SIMD path run here: {paths}")
    x, w, b, gy, _, kw = _inputs(((2, 4, 23, 29), (3, 3), 1, 1, 1, 1), np.float32, seed=9)
    x, w, b, gy = (a.astype(np.float32) for a in (x, w, b, gy))
    res = {}
    try:
        for name in paths:
            _cpp.set_simd_path(name)
            res[name] = [cnnfast.conv(x, w, b, backend="cpp", **kw)]
            res[name] += list(cnnfast.conv_backward(gy, x, w, backend="cpp", **kw))
    finally:
        _cpp.set_simd_path("auto")
    for name in paths[1:]:
        for a, e in zip(res["portable"], res[name]):
            np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-4 * max(1.0, np.abs(e).max()))
