"""The CUDA backends' shared-memory tiled depthwise kernel (``algorithm=
"depthwise-tiled"``; ``cnnfast/backends/cuda/kernels/depthwise.cu``), run on
``cuda-emu``: 2-d depthwise convolutions (one input channel per group, any channel
multiplier) with 3x3 or 5x5 kernels, stride 1 or 2 -- the forward correlation, and for
stride 1 its adjoint (input gradient, transposed-convolution forward) with the taps
reversed. Checked against the float64 numpy reference (a sum of K*K products per
output: the fuzzer's bound (K + 4) * eps * S) over tile edges, padding, multipliers,
dtypes, the bias and the fused activations; then what it refuses."""

from __future__ import annotations

import numpy as np
import pytest

import cnnfast

emu = pytest.importorskip("cnnfast.backends.cuda.emu_backend")
if emu.availability() is not None:  # pragma: no cover - depends on the machine
    pytest.skip(f"cuda-emu unavailable: {emu.availability()}", allow_module_level=True)

BACKEND = "cuda-emu"
ALGO = "depthwise-tiled"
DTYPES = [np.float16, np.float32, np.float64]


def _assert_close(got, exact, bound, taps, dtype, what):
    """|got - exact| <= (taps + 4) * eps * S, S the sum of |terms| (``bound``); float16
    stores the inputs and the result in half precision and sums in float32."""
    eps = np.finfo(np.float32 if dtype == np.float16 else dtype).eps
    tol = (taps + 4) * eps * bound
    if dtype == np.float16:
        tol = tol + 2 * np.finfo(np.float16).eps * bound
    assert got.dtype == dtype and got.shape == exact.shape, what
    err = np.abs(got.astype(np.float64) - exact)
    assert np.all(err <= tol), f"{what}: worst |err| / tol {np.max(err / np.maximum(tol, 1e-300))}"


def _data(shape, dtype, rng):
    return rng.standard_normal(shape).astype(dtype)


# (N, C, multiplier, H, W, K, stride, padding): inside one tile, across several tiles
# (32 x 16 outputs) with ragged edges, padding 0 to K - 1 and asymmetric, images
# smaller than the kernel with padding.
FORWARD = [
    (2, 3, 1, 9, 11, 3, 1, 1),
    (1, 4, 2, 37, 70, 3, 1, 1),
    (2, 2, 1, 40, 66, 3, 2, 1),
    (1, 3, 3, 19, 35, 3, 2, 0),
    (1, 2, 1, 33, 65, 5, 1, 2),
    (2, 2, 2, 21, 40, 5, 2, ((2, 1), (0, 4))),
    (1, 5, 1, 2, 3, 5, 1, 4),
    (1, 1, 1, 1, 1, 3, 2, 1),
]


def _fid(c):
    return f"{c[0]}x{c[1]}x{c[2]}-{c[3]}x{c[4]}-k{c[5]}s{c[6]}-p{c[7]}"


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", FORWARD, ids=_fid)
def test_forward_matches_the_reference(case, dtype):
    n, c, mult, h, w, k, s, pad = case
    rng = np.random.default_rng(len(str(case)))
    x, wt, b = _data((n, c, h, w), dtype, rng), _data((c * mult, 1, k, k), dtype, rng), \
        _data((c * mult,), dtype, rng)
    kw = dict(stride=s, padding=pad, groups=c)
    copies = [a.copy() for a in (x, wt, b)]
    y = cnnfast.conv2d(x, wt, b, backend=BACKEND, algorithm=ALGO, **kw)
    assert emu.last_paths() == {"y": ALGO}
    for a, cp in zip((x, wt, b), copies):
        np.testing.assert_array_equal(a, cp)
    f64 = [a.astype(np.float64) for a in (x, wt, b)]
    exact = cnnfast.conv2d(*f64, backend="numpy", **kw)
    S = cnnfast.conv2d(*(np.abs(a) for a in f64), backend="numpy", **kw)
    _assert_close(y, exact, S, k * k + 1, dtype, str(case))


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("k,pad", [(3, 1), (3, 0), (3, 2), (5, 2), (5, (1, 3))],
                         ids=["k3p1", "k3p0", "k3p2", "k5p2", "k5p13"])
def test_adjoint_stride1_input_gradient_and_transposed_forward(k, pad, dtype):
    # the adjoint with the taps reversed and padding K - 1 - pad: conv_backward's
    # grad_x (multiplier 1: one grad_y channel per group) and conv_transpose's y
    rng = np.random.default_rng(k)
    c, h, w = 3, 20, 37
    x, wt = _data((2, c, h, w), dtype, rng), _data((c, 1, k, k), dtype, rng)
    kw = dict(padding=pad, groups=c)
    y = cnnfast.conv2d(x, wt, backend="numpy", **kw)
    gy = _data(y.shape, dtype, rng)
    gx = cnnfast.conv_backward(gy, x, wt, needs=("x",), backend=BACKEND, algorithm=ALGO,
                               **kw)[0]
    assert emu.last_paths() == {"grad_x": ALGO}
    f64 = [a.astype(np.float64) for a in (gy, x, wt)]
    exact = cnnfast.conv_backward(*f64, needs=("x",), backend="numpy", **kw)[0]
    S = cnnfast.conv_backward(*(np.abs(a) for a in f64), needs=("x",), backend="numpy",
                              **kw)[0]
    _assert_close(gx, exact, S, k * k, dtype, "grad_x")
    # conv_transpose with C groups of 1 -> 2 channels, and its backward's grad_x (the
    # forward correlation)
    wt2 = _data((c, 2, k, k), dtype, rng)
    b = _data((2 * c,), dtype, rng)
    yt = cnnfast.conv_transpose2d(x, wt2, b, backend=BACKEND, algorithm=ALGO, **kw)
    assert emu.last_paths() == {"y": ALGO}
    t64 = [a.astype(np.float64) for a in (x, wt2, b)]
    exact = cnnfast.conv_transpose2d(*t64, backend="numpy", **kw)
    S = cnnfast.conv_transpose2d(*(np.abs(a) for a in t64), backend="numpy", **kw)
    _assert_close(yt, exact, S, k * k + 1, dtype, "conv_transpose y")
    # its backward's grad_x reads M grad_y channels per group: multiplier 1 here
    gyt = _data(cnnfast.conv_transpose2d(x, wt, backend="numpy", **kw).shape, dtype, rng)
    gxt = cnnfast.conv_transpose_backward(gyt, x, wt, needs=("x",), backend=BACKEND,
                                          algorithm=ALGO, **kw)[0]
    assert emu.last_paths() == {"grad_x": ALGO}
    g64 = [a.astype(np.float64) for a in (gyt, x, wt)]
    exact = cnnfast.conv_transpose_backward(*g64, needs=("x",), backend="numpy", **kw)[0]
    S = cnnfast.conv_transpose_backward(*(np.abs(a) for a in g64), needs=("x",),
                                        backend="numpy", **kw)[0]
    _assert_close(gxt, exact, S, k * k, dtype, "conv_transpose grad_x")


@pytest.mark.parametrize("act", ["relu", "leaky_relu", "sigmoid", "tanh"])
def test_bias_and_fused_activation(act):
    rng = np.random.default_rng(21)
    x = (rng.standard_normal((2, 4, 18, 34)) * 3).astype(np.float32)
    wt = rng.standard_normal((8, 1, 3, 3)).astype(np.float32)
    b = rng.standard_normal(8).astype(np.float32)
    kw = dict(padding=1, groups=4, activation=act, negative_slope=0.2)
    y = cnnfast.conv2d(x, wt, b, backend=BACKEND, algorithm=ALGO, **kw)
    direct = cnnfast.conv2d(x, wt, b, backend=BACKEND, algorithm="direct", **kw)
    # the same products summed in the same order (bias, then the taps row by row);
    # the padding's zero products do not change a sum
    np.testing.assert_array_equal(y, direct)


@pytest.mark.parametrize("rows", [3, 65535], ids=["3-rows", "all-rows"])
def test_deterministic_and_more_planes_than_grid_rows(rows, monkeypatch):
    # more (image, channel) planes than rows of blocks: a block loops over planes, with
    # a barrier before it reloads its patch (the real limit is 65,535 rows; 66,000
    # planes of one output pair reach it)
    from cnnfast.backends.cuda import conv_launch

    monkeypatch.setattr(conv_launch, "PLANE_ROWS_MAX", rows)
    rng = np.random.default_rng(2)
    shape = (2, 7, 20, 40) if rows == 3 else (2, 33000, 1, 2)
    x = rng.standard_normal(shape).astype(np.float32)
    wt = rng.standard_normal((shape[1], 1, 3, 3)).astype(np.float32)
    kw = dict(padding=1, groups=shape[1], backend=BACKEND)
    runs = [cnnfast.conv2d(x, wt, algorithm=ALGO, **kw) for _ in range(2)]
    np.testing.assert_array_equal(runs[0], runs[1])
    np.testing.assert_array_equal(runs[0], cnnfast.conv2d(x, wt, algorithm="direct", **kw))


@pytest.mark.parametrize("op,x_shape,w_shape,kw,why", [
    ("conv", (1, 4, 8, 8), (4, 2, 3, 3), dict(groups=2), "one input channel per group"),
    ("conv", (1, 4, 8, 8), (4, 1, 3, 3), dict(groups=4, stride=3), "stride"),
    ("conv", (1, 4, 8, 8), (4, 1, 3, 3), dict(groups=4, dilation=2), "dilation"),
    ("conv", (1, 4, 8, 8), (4, 1, 7, 7), dict(groups=4, padding=3), "kernel"),
    ("conv", (1, 4, 8, 8), (4, 1, 3, 5), dict(groups=4), "kernel"),
    ("conv", (1, 4, 8), (4, 1, 3), dict(groups=4), "2-d"),
    ("conv_transpose", (1, 4, 8, 8), (4, 1, 3, 3), dict(groups=4, stride=2), "stride 1"),
    ("conv_backward", None, None, dict(groups=4), "weight gradients"),
], ids=["grouped", "stride3", "dilated", "7x7", "3x5", "1-d", "adjoint-s2", "wgrad"])
def test_refuses_what_it_cannot_run(op, x_shape, w_shape, kw, why):
    if op == "conv_backward":
        x, w = np.ones((1, 4, 8, 8), np.float32), np.ones((4, 1, 3, 3), np.float32)
        args = (np.ones((1, 4, 6, 6), np.float32), x, w)
        with pytest.raises(NotImplementedError, match=f"depthwise-tiled.*{why}"):
            cnnfast.conv_backward(*args, needs=("x", "weight"), backend=BACKEND,
                                  algorithm=ALGO, **kw)
        return
    x, w = np.ones(x_shape, np.float32), np.ones(w_shape, np.float32)
    with pytest.raises(NotImplementedError, match=f"depthwise-tiled.*{why}"):
        getattr(cnnfast, op)(x, w, backend=BACKEND, algorithm=ALGO, **kw)
    assert emu.last_paths() == {}
    with pytest.raises(NotImplementedError, match="depthwise-tiled"):
        cnnfast.explain(op, x, w, backend=BACKEND, algorithm=ALGO, **kw)


def test_not_the_automatic_choice_and_explained_when_forced():
    x, w = np.ones((1, 4, 8, 8), np.float32), np.ones((4, 1, 3, 3), np.float32)
    assert cnnfast.explain("conv", x, w, groups=4, backend=BACKEND).startswith(
        f"{BACKEND}: direct; why: 4 groups of 1")
    text = cnnfast.explain("conv", x, w, groups=4, backend=BACKEND, algorithm=ALGO)
    assert text == f"{BACKEND}: depthwise-tiled; why: forced: 32x16 output tiles over a " \
                   f"shared-memory patch"
