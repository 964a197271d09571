"""The numba backend's blocked wide product (``kernels.gemm.correlate_wide``, issue 15):
reductions cut in blocks of ``KC`` rows (one, two and three blocks, ragged), panels
read in place and copied (the last ones of a plane), output-channel tails of the
register tile, a group narrower than one register tile, several tiles per image,
groups, dilation, asymmetric padding, 3-d, the strided forms (over stride phases,
and the stride phases of a transposed convolution), the fused bias and activation
(applied once, after the last block); against the numpy reference (float64 and
float32 within a rounding bound), 1 and 2 threads bit-identical, inputs left
unmodified.

Tolerance: every output is a sum of ``K`` products (``K`` = input channels per group x
taps) summed in some fixed order with FMA, so its error is at most about ``K * u``
times the sum of the absolute values of its terms, ``S = |x| (*) |w|`` (``u`` the unit
roundoff of the dtype); the checks use ``2 K u S`` plus a tiny absolute term. This
holds for any summation order, so it does not depend on the blocking.
"""

from __future__ import annotations

import numpy as np
import pytest

numba = pytest.importorskip("numba", reason="numba is not installed")

import cnnfast  # noqa: E402
from cnnfast import activation as A  # noqa: E402
from cnnfast.backends.numba import backend as nb  # noqa: E402
from cnnfast.backends.numba.kernels import gemm  # noqa: E402
from cnnfast.backends.numpy import backend as ref  # noqa: E402
from cnnfast import params as P  # noqa: E402

pytestmark = pytest.mark.skipif(nb.availability() is not None,
                                reason=f"numba backend unavailable: {nb.availability()}")

DTYPES = (np.float32, np.float64)

# name: (x shape, weight shape, geometry, algorithm, the path recorded for y)
CASES = {
    # K = 40*9 = 360: two reduction blocks; 7 output channels: a full register tile
    # and a tail; 13x11 outputs over 13-wide rows: ragged panels
    "two-blocks": ((2, 40, 13, 11), (7, 40, 3, 3), dict(padding=1), "gemm-wide",
                   "gemm-wide"),
    # K = 57*9 = 513: three blocks of 171
    "three-blocks": ((1, 57, 6, 7), (9, 57, 3, 3), dict(padding=(1, 2)), "gemm-wide",
                     "gemm-wide"),
    # 3 output channels (one register tile, partly empty), two blocks
    "in-place": ((2, 30, 9, 10), (3, 30, 3, 3), dict(padding=1), "gemm-wide",
                 "gemm-wide"),
    # groups, dilation, asymmetric padding; 21x19 outputs over 22-wide rows: two
    # tiles per image
    "groups-dilation": ((2, 6, 22, 19), (10, 3, 3, 2),
                        dict(padding=((2, 1), (0, 3)), dilation=(2, 3), groups=2),
                        "gemm-wide", "gemm-wide"),
    # a short reduction (1 input channel, the fmnist conv1 shape, smaller)
    "short-k": ((3, 1, 12, 14), (13, 1, 3, 3), {}, "gemm-wide", "gemm-wide"),
    "3d": ((1, 20, 5, 6, 7), (6, 20, 3, 3, 3), dict(padding=1), "gemm-wide", "gemm-wide"),
    # strided: the product over the input's stride phases (10x10 outputs: it pays),
    # K = 32*9 = 288: two blocks
    "strided": ((2, 32, 19, 20), (6, 32, 3, 3), dict(stride=2, padding=1), "gemm", "gemm"),
    "stem-like": ((1, 3, 30, 29), (8, 3, 7, 7), dict(stride=2, padding=3), "gemm", "gemm"),
    # 358 wide positions per image, 5 images: one whole-image tile each with one
    # thread, two tiles (256 + 102) with two (``gemm.pick_wide_tile``)
    "whole-image": ((5, 3, 20, 20), (13, 3, 3, 3), {}, "gemm-wide", "gemm-wide"),
}


def _rand(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


def _bound(x, w, geo, dtype, transpose=False):
    """``2 K u S``: the rounding bound of every output (see the module docstring)."""
    p = _params(x.shape, w.shape, geo, transpose)
    ax, aw = np.abs(x).astype(np.float64), np.abs(w).astype(np.float64)
    s = (ref.conv_transpose(ax, aw, None, p) if transpose else ref.conv(ax, aw, None, p))
    k = int(np.prod(w.shape[1:])) if not transpose else w.shape[0] * int(
        np.prod(w.shape[2:])) // geo.get("groups", 1)
    u = np.finfo(dtype).eps / 2
    return 2 * k * u * s + 1e-30


def _params(x_shape, w_shape, geo, transpose=False):
    if transpose:
        return P.conv_transpose_params(x_shape, w_shape, geo.get("stride", 1),
                                       geo.get("padding", 0), geo.get("output_padding", 0),
                                       geo.get("groups", 1), geo.get("dilation", 1))
    return P.conv_params(x_shape, w_shape, geo.get("stride", 1), geo.get("padding", 0),
                         geo.get("dilation", 1), geo.get("groups", 1))


def _within(got, want, bound):
    err = np.abs(got.astype(np.float64) - want)
    assert np.all(err <= bound), f"max excess {np.max(err - bound)}"


@pytest.mark.parametrize("dtype", DTYPES, ids=("f32", "f64"))
@pytest.mark.parametrize("case", CASES)
def test_forward_matches_reference(case, dtype):
    x_shape, w_shape, geo, algorithm, path = CASES[case]
    rng = np.random.default_rng(len(case))
    x, w = _rand(rng, x_shape, dtype), _rand(rng, w_shape, dtype)
    b = _rand(rng, (w_shape[0],), dtype)
    x0, w0, b0 = x.copy(), w.copy(), b.copy()
    y = cnnfast.conv(x, w, b, **geo, backend="numba", algorithm=algorithm)
    assert nb.last_paths()["y"] == path
    want = ref.conv(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64),
                    _params(x_shape, w_shape, geo))
    _within(y, want, _bound(x, w, geo, dtype) + np.finfo(dtype).eps * np.abs(b).max())
    for a, a0 in ((x, x0), (w, w0), (b, b0)):
        assert a.tobytes() == a0.tobytes()  # inputs unmodified


@pytest.mark.parametrize("dtype", DTYPES, ids=("f32", "f64"))
@pytest.mark.parametrize("case", ["two-blocks", "in-place", "groups-dilation", "3d"])
def test_input_gradient_matches_reference(case, dtype):
    """The stride-1 input gradient: the same product with the flipped weight."""
    x_shape, w_shape, geo, algorithm, _ = CASES[case]
    rng = np.random.default_rng(7)
    x, w = _rand(rng, x_shape, dtype), _rand(rng, w_shape, dtype)
    p = _params(x_shape, w_shape, geo)
    gy = _rand(rng, (x_shape[0], w_shape[0]) + tuple(p.out_shape), dtype)
    gx, _, _ = cnnfast.conv_backward(gy, x, w, **geo, needs=("x",), backend="numba",
                                     algorithm=algorithm)
    assert nb.last_paths()["grad_x"] == algorithm
    want = ref.conv_backward(gy.astype(np.float64), x.astype(np.float64),
                             w.astype(np.float64), p, frozenset({"x"}))[0]
    # the adjoint: the transposed convolution of gy with w
    _within(gx, want, _bound(gy, w, geo, dtype, transpose=True))


@pytest.mark.parametrize("dtype", DTYPES, ids=("f32", "f64"))
def test_transposed_stride_phases(dtype):
    """The decoder shape (k4 s2 p1), smaller: four stride-1 2x2 products of 64
    channels x 4 taps (one block) and with 80 channels (two blocks), with a bias."""
    rng = np.random.default_rng(3)
    for cin in (64, 80):
        x = _rand(rng, (2, cin, 7, 6), dtype)
        w = _rand(rng, (cin, 9, 4, 4), dtype)
        b = _rand(rng, (9,), dtype)
        geo = dict(stride=2, padding=1)
        y = cnnfast.conv_transpose(x, w, b, **geo, backend="numba")
        assert nb.last_paths()["y"] == "phases"
        p = _params(x.shape, w.shape, geo, transpose=True)
        want = ref.conv_transpose(x.astype(np.float64), w.astype(np.float64),
                                  b.astype(np.float64), p)
        _within(y, want, _bound(x, w, geo, dtype, transpose=True)
                + np.finfo(dtype).eps * np.abs(b).max())


@pytest.mark.parametrize("act,slope", [("relu", 0.0), ("leaky_relu", 0.3), ("tanh", 0.0)])
@pytest.mark.parametrize("case", ["two-blocks", "in-place", "strided"])
def test_fused_activation_equals_unfused(case, act, slope):
    """The bias and activation are applied once, after the last reduction block:
    relu and leaky_relu are exact, so fused == activation(unfused) bit for bit; tanh
    within a few ulps."""
    x_shape, w_shape, geo, algorithm, _ = CASES[case]
    rng = np.random.default_rng(5)
    x, w = _rand(rng, x_shape, np.float32), _rand(rng, w_shape, np.float32)
    b = _rand(rng, (w_shape[0],), np.float32)
    kw = dict(backend="numba", algorithm=algorithm)
    fused = cnnfast.conv(x, w, b, **geo, activation=act, negative_slope=slope, **kw)
    unfused = A.apply(cnnfast.conv(x, w, b, **geo, **kw), act, slope)
    if act == "tanh":
        np.testing.assert_allclose(fused, unfused, rtol=1e-6, atol=1e-6)
    else:
        assert fused.tobytes() == unfused.tobytes()


@pytest.mark.parametrize("case", ["two-blocks", "three-blocks", "in-place", "strided",
                                  "whole-image"])
def test_one_and_two_threads_bit_identical(case, threads):
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("numba has a single thread here (NUMBA_NUM_THREADS=1)")
    x_shape, w_shape, geo, algorithm, _ = CASES[case]
    rng = np.random.default_rng(11)
    x, w = _rand(rng, x_shape, np.float32), _rand(rng, w_shape, np.float32)
    out = []
    for n in (1, 2):
        threads(n)
        out.append(cnnfast.conv(x, w, **geo, backend="numba", algorithm=algorithm))
    assert out[0].tobytes() == out[1].tobytes()


def test_whole_image_tile_depends_on_threads_only_through_the_split():
    """The "whole-image" case takes one tile per image with one thread and two with
    two threads (the bit-identity above then shows that tiles change no sum)."""
    k, wide, rows = 27, 17 * 20 + 18, 16
    assert gemm.pick_wide_tile(k, wide, rows, 4, 5, 1) == 368
    assert gemm.pick_wide_tile(k, wide, rows, 4, 5, 2) == gemm.pick_tile(k, wide) == 256


def test_blocking_covers_the_cases():
    """The grid reaches one, two and three reduction blocks (else the cases above
    would not test the partial sums)."""
    ks = {name: int(np.prod(c[1][1:])) for name, c in CASES.items()}
    blocks = {-(-k // gemm.KC) for k in ks.values()}
    assert {1, 2, 3} <= blocks
