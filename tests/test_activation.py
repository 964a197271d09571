"""Fused activations (``activation=``, ``negative_slope=``, ``y=``; docs/API.md): the
reference against torch, every backend against the reference on a slice of the grid,
adversarial values, and the argument checks.

Tolerances: float64 as the grid (1e-9 of the output's scale: only the summation order
differs). float32 1e-4 of the scale, as the grid: the activations are 1-Lipschitz (1/4
for sigmoid; leaky_relu's slope here <= 1) and add a few ulps of their own, both far
inside it. The backward reads the derivative from ``y`` (an input, the same for every
backend), so only g = grad_y * act'(y) rounds once more.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import cnnfast
from cnnfast import activation
from cnnfast import params as P
from cnnfast.backends.numpy import backend as ref
from cases import conv_cases, conv_transpose_cases
from test_backend_grid import DTYPES, _conv_inputs, _f64, assert_close

ACTS = [("relu", 0.0), ("leaky_relu", 0.2), ("sigmoid", 0.0), ("tanh", 0.0)]
ACT_IDS = [a for a, _ in ACTS]
TORCH_ACT = {"relu": lambda v, s: torch.relu(v),
             "leaky_relu": lambda v, s: F.leaky_relu(v, s),
             "sigmoid": lambda v, s: torch.sigmoid(v),
             "tanh": lambda v, s: torch.tanh(v)}
NEEDS = frozenset(("x", "weight", "bias"))



def _slice(grid, every):
    """Every ``every``-th grid case and the named special cases (every rank, stride,
    padding style, dilation and grouping still appears), each with one activation in
    turn (each activation meets about a quarter of them)."""
    picked = [c for i, c in enumerate(grid) if c.name or i % every == 0]
    return [pytest.param(c, *ACTS[i % len(ACTS)], id=f"{c.id()}-{ACTS[i % len(ACTS)][0]}")
            for i, c in enumerate(picked)]


CONV = _slice(conv_cases(), 9)
CONV_T = _slice(conv_transpose_cases(), 17)


def _kw(case, transposed):
    kw = dict(stride=case.stride, padding=case.padding, dilation=case.dilation,
              groups=case.groups)
    if transposed:
        kw["output_padding"] = case.output_padding
    return kw


def _params(case, w_shape, kw, transposed):
    x_shape = (case.n, case.c_in) + case.spatial
    if transposed:
        return P.conv_transpose_params(x_shape, w_shape, kw["stride"], kw["padding"],
                                       kw["output_padding"], kw["groups"], kw["dilation"])
    return P.conv_params(x_shape, w_shape, kw["stride"], kw["padding"], kw["dilation"],
                         kw["groups"])


def _check_backend(backend, case, dtype, act, slope, transposed):
    x, w, b = _conv_inputs(case, dtype, transposed)
    kw = _kw(case, transposed)
    fwd = cnnfast.conv_transpose if transposed else cnnfast.conv
    bwd = cnnfast.conv_transpose_backward if transposed else cnnfast.conv_backward
    p = P.with_activation(_params(case, w.shape, kw, transposed), act, slope)
    y = backend.numpy(fwd(backend.asarray(x), backend.asarray(w), backend.asarray(b),
                          backend=backend.name, activation=act, negative_slope=slope, **kw))
    ref_fwd = ref.conv_transpose if transposed else ref.conv
    assert_close(y, ref_fwd(_f64(x), _f64(w), _f64(b), p), dtype, f"{act} y")

    gy = np.random.default_rng(1).standard_normal(y.shape).astype(dtype)
    grads = bwd(backend.asarray(gy), backend.asarray(x), backend.asarray(w),
                backend=backend.name, activation=act, negative_slope=slope,
                y=backend.asarray(y), **kw)
    ref_bwd = ref.conv_transpose_backward if transposed else ref.conv_backward
    expected = ref_bwd(_f64(gy), _f64(x), _f64(w), p, NEEDS, _f64(y))
    for name, got, exp in zip(("grad_x", "grad_weight", "grad_bias"), grads, expected):
        assert_close(backend.numpy(got), exp, dtype, f"{act} {name}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case,act,slope", CONV)
def test_conv_activation(backend, case, dtype, act, slope):
    _check_backend(backend, case, dtype, act, slope, transposed=False)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case,act,slope", CONV_T)
def test_conv_transpose_activation(backend, case, dtype, act, slope):
    _check_backend(backend, case, dtype, act, slope, transposed=True)


# ----------------------------------------------------------------------------- reference


@pytest.mark.parametrize("act,slope", ACTS + [("leaky_relu", 2.5), ("leaky_relu", 0.0)])
@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("transposed", [False, True], ids=["conv", "convT"])
def test_reference_matches_torch_autograd(rank, transposed, act, slope):
    rng = np.random.default_rng(rank)
    x = rng.standard_normal((2, 4) + (5,) * rank)
    w = rng.standard_normal(((4, 3) if transposed else (3, 4)) + (3,) * rank)
    b = rng.standard_normal(3)
    kw = dict(stride=2, padding=1)
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    tconv = getattr(F, f"conv_transpose{rank}d" if transposed else f"conv{rank}d")
    ty = TORCH_ACT[act](tconv(tx, tw, tb, **kw), slope)
    gy = rng.standard_normal(tuple(ty.shape))
    expected = torch.autograd.grad(ty, (tx, tw, tb), torch.tensor(gy))
    fwd = cnnfast.conv_transpose if transposed else cnnfast.conv
    bwd = cnnfast.conv_transpose_backward if transposed else cnnfast.conv_backward
    y = fwd(x, w, b, activation=act, negative_slope=slope, backend="numpy", **kw)
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-12, atol=1e-12)
    got = bwd(gy, x, w, activation=act, negative_slope=slope, y=y, backend="numpy", **kw)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e.numpy(), rtol=1e-10, atol=1e-10)


def test_reference_matches_finite_differences():
    """The derivative read from y against central differences of the forward."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 2, 6))
    w = rng.standard_normal((3, 2, 3))
    gy = rng.standard_normal((1, 3, 4))
    for act, slope in ACTS:
        def loss(xx):
            return float(np.sum(gy * cnnfast.conv1d(xx, w, activation=act,
                                                    negative_slope=slope, backend="numpy")))
        y = cnnfast.conv1d(x, w, activation=act, negative_slope=slope, backend="numpy")
        gx = cnnfast.conv_backward(gy, x, w, activation=act, negative_slope=slope, y=y,
                                   needs=("x",), backend="numpy")[0]
        num = np.zeros_like(x)
        for i in np.ndindex(x.shape):
            e = np.zeros_like(x)
            e[i] = 1e-6
            num[i] = (loss(x + e) - loss(x - e)) / 2e-6
        np.testing.assert_allclose(gx, num, rtol=1e-5, atol=1e-7, err_msg=act)


# ----------------------------------------------------------------------------- adversarial


@pytest.mark.parametrize("dtype", DTYPES)
def test_extreme_values(backend, dtype):
    """Bias +-inf, NaN, huge and tiny: saturation without overflow, NaN kept, and the
    exact values the definitions give at the ends."""
    x = np.zeros((1, 1, 3, 3), dtype)
    w = np.ones((8, 1, 1, 1), dtype)
    big = np.finfo(dtype).max / 2
    b = np.array([np.inf, -np.inf, np.nan, 0.0, 100.0, -100.0, big, -big], dtype)
    expected = {
        "relu": [np.inf, 0, np.nan, 0, 100, 0, big, 0],
        "leaky_relu": [np.inf, -np.inf, np.nan, 0, 100, -20, big, -big * 0.2],
        "sigmoid": [1, 0, np.nan, 0.5, 1, np.exp(-100.0), 1, 0],
        "tanh": [1, -1, np.nan, 0, 1, -1, 1, -1],
    }
    for act, slope in ACTS:
        y = backend.numpy(cnnfast.conv2d(backend.asarray(x), backend.asarray(w),
                                         backend.asarray(b), activation=act,
                                         negative_slope=slope, backend=backend.name))
        want = np.broadcast_to(np.asarray(expected[act], np.float64)[:, None, None],
                               (8, 3, 3))[None]
        # subnormal results (sigmoid(-100) in float32) keep fewer digits
        np.testing.assert_allclose(y.astype(np.float64), want, rtol=4 * np.finfo(dtype).eps,
                                   atol=np.finfo(dtype).smallest_normal, err_msg=act)


@pytest.mark.parametrize("dtype", DTYPES)
def test_derivative_at_the_ends(backend, dtype):
    """grad_bias is the sum of g = grad_y * act'(y): checked where the derivative is
    hardest -- y = 0 and NaN (relu, leaky: the left side), |y| -> 1 for tanh (where
    1 - y*y would lose every digit) and y -> 0 or 1 for sigmoid."""
    eps = np.finfo(dtype).eps
    ys = {"relu": [0.0, np.nan, 1e-30, -0.0, 3.0],
          "leaky_relu": [0.0, np.nan, 1e-30, -5.0, 3.0],
          "sigmoid": [1 - eps, eps, 0.5, 1e-30, 1.0],
          "tanh": [1 - eps, -1 + eps, 0.0, 1.0, -0.5]}
    for act, slope in ACTS:
        y = np.asarray(ys[act], dtype).reshape(1, 5, 1)
        gy = np.full((1, 5, 1), 3.0, dtype)
        x = np.ones((1, 1, 1), dtype)
        w = np.ones((5, 1, 1), dtype)
        gb = backend.numpy(cnnfast.conv_backward(
            backend.asarray(gy), backend.asarray(x), backend.asarray(w), activation=act,
            negative_slope=slope, y=backend.asarray(y), needs=("bias",),
            backend=backend.name)[2])
        want = activation.grad(gy.astype(np.float64), y.astype(np.float64), act,
                               slope).reshape(5)
        assert not np.isnan(gb).any(), (act, gb)
        np.testing.assert_allclose(gb, want, rtol=4 * eps, atol=0, err_msg=act)


@pytest.mark.parametrize("act,slope", ACTS, ids=ACT_IDS)
def test_relu_family_bit_identical_to_unfused(backend, act, slope):
    """relu and leaky_relu are exact operations: fused must equal unfused bit for bit
    (the same algorithm runs; only the epilogue differs), and so must grad_x and
    grad_weight (the same kernels read the same g); grad_bias may sum g in another
    order (backends fold it into the pass that makes g)."""
    if act not in ("relu", "leaky_relu"):
        pytest.skip("sigmoid and tanh round differently between implementations")
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 8, 9, 9)).astype(np.float32)
    w = rng.standard_normal((16, 8, 3, 3)).astype(np.float32)
    b = rng.standard_normal(16).astype(np.float32)
    bx, bw, bb = (backend.asarray(a) for a in (x, w, b))
    plain = backend.numpy(cnnfast.conv2d(bx, bw, bb, padding=1, backend=backend.name))
    fused = backend.numpy(cnnfast.conv2d(bx, bw, bb, padding=1, activation=act,
                                         negative_slope=slope, backend=backend.name))
    expected = activation.apply(plain.copy(), act, slope)
    assert np.array_equal(fused, expected)
    gy = rng.standard_normal(fused.shape).astype(np.float32)
    g = activation.grad(gy, fused, act, slope)
    got = cnnfast.conv_backward(backend.asarray(gy), bx, bw, padding=1, activation=act,
                                negative_slope=slope, y=backend.asarray(fused),
                                backend=backend.name)
    want = cnnfast.conv_backward(backend.asarray(g), bx, bw, padding=1,
                                 backend=backend.name)
    for a, e in zip(got[:2], want[:2]):
        assert np.array_equal(backend.numpy(a), backend.numpy(e))
    np.testing.assert_allclose(backend.numpy(got[2]), backend.numpy(want[2]), rtol=1e-5)


def test_inputs_not_modified(backend):
    rng = np.random.default_rng(5)
    arrays = [rng.standard_normal(s).astype(np.float32)
              for s in ((2, 3, 6, 6), (4, 3, 3, 3), (4,), (2, 4, 4, 4))]
    x, w, b, gy = arrays
    copies = [a.copy() for a in arrays]
    y = backend.numpy(cnnfast.conv2d(*(backend.asarray(a) for a in (x, w, b)),
                                     activation="sigmoid", backend=backend.name))
    y_copy = y.copy()
    cnnfast.conv_backward(backend.asarray(gy), backend.asarray(x), backend.asarray(w),
                          activation="sigmoid", y=backend.asarray(y), backend=backend.name)
    for a, c in zip(arrays + [y], copies + [y_copy]):
        assert np.array_equal(a, c)


# ----------------------------------------------------------------------------- the API


def test_empty_convolution_applies_the_activation():
    b = np.array([-1.0, 2.0])
    y = cnnfast.conv1d(np.zeros((1, 0, 4)), np.zeros((2, 0, 2)), b, activation="relu")
    assert np.array_equal(y, [[[0, 0, 0], [2, 2, 2]]])
    gy = np.ones((1, 2, 3))
    gb = cnnfast.conv_backward(gy, np.zeros((1, 0, 4)), np.zeros((2, 0, 2)),
                               activation="relu", y=y)[2]
    assert np.array_equal(gb, [0, 3])


def test_torch_tensors_and_out(backend):
    if backend.array != "numpy":
        pytest.skip("CPU tensors")
    rng = np.random.default_rng(6)
    x = torch.tensor(rng.standard_normal((1, 2, 5, 5)), dtype=torch.float32)
    w = torch.tensor(rng.standard_normal((3, 2, 3, 3)), dtype=torch.float32)
    y = cnnfast.conv2d(x, w, activation="tanh", backend=backend.name)
    assert isinstance(y, torch.Tensor)
    np.testing.assert_allclose(y.numpy(), torch.tanh(F.conv2d(x, w)).numpy(), rtol=1e-5,
                               atol=1e-5)
    out = torch.empty_like(y)
    assert cnnfast.conv2d(x, w, activation="tanh", out=out, backend=backend.name) is out
    assert torch.equal(out, y)
    gy = torch.ones_like(y)
    gx, gw, gb = cnnfast.conv_backward(gy, x, w, activation="tanh", y=y,
                                       backend=backend.name)
    assert isinstance(gx, torch.Tensor)
    np.testing.assert_allclose(gb.numpy(), (1 - y * y).sum((0, 2, 3)).numpy(), rtol=1e-5)


@pytest.mark.parametrize("fn", [cnnfast.conv2d, cnnfast.conv_transpose2d])
def test_bad_activation_arguments(fn):
    x = np.ones((1, 2, 4, 4))
    w = np.ones((2, 2, 3, 3))
    with pytest.raises(ValueError, match="activation='gelu' is not supported.*'relu'"):
        fn(x, w, activation="gelu")
    with pytest.raises(ValueError, match="activation=1 is not supported"):
        fn(x, w, activation=1)
    for slope in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="negative_slope=.* must be finite and >= 0"):
            fn(x, w, activation="leaky_relu", negative_slope=slope)
    for slope in (True, "0.1", None):
        with pytest.raises(TypeError, match="negative_slope=.* must be a real number"):
            fn(x, w, activation="leaky_relu", negative_slope=slope)


@pytest.mark.parametrize("transposed", [False, True], ids=["conv", "convT"])
def test_bad_y_arguments(transposed):
    x = np.ones((1, 2, 4, 4))
    w = np.ones((2, 2, 3, 3))
    fwd = cnnfast.conv_transpose2d if transposed else cnnfast.conv2d
    bwd = cnnfast.conv_transpose_backward if transposed else cnnfast.conv_backward
    y = fwd(x, w, activation="relu")
    gy = np.ones_like(y)
    with pytest.raises(ValueError, match="activation='relu' needs y="):
        bwd(gy, x, w, activation="relu")
    with pytest.raises(ValueError, match="y= is only used with activation="):
        bwd(gy, x, w, y=y)
    with pytest.raises(ValueError, match="y has shape"):
        bwd(gy, x, w, activation="relu", y=y[:, :1])
    with pytest.raises(TypeError, match="y has dtype float32"):
        bwd(gy, x, w, activation="relu", y=y.astype(np.float32))
    with pytest.raises(ValueError, match="overlap"):
        bwd(gy, x, w, activation="relu", y=y, out=(None, None, y.reshape(-1)[:2]),
            needs=("bias",))
    # a non-contiguous y is read as it is
    wide = np.zeros(y.shape[:-1] + (2 * y.shape[-1],))
    wide[..., ::2] = y
    a = bwd(gy, x, w, activation="relu", y=wide[..., ::2])
    e = bwd(gy, x, w, activation="relu", y=y)
    for u, v in zip(a, e):
        assert np.array_equal(u, v)
