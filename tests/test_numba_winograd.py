"""The numba backend's Winograd F(4x4, 3x3) path (``algorithm="winograd"``; see
``cnnfast/backends/numba/kernels/winograd.py``): 2-d convolutions with a 3x3 kernel,
stride 1, dilation 1, one group, any padding -- forward, input gradient and weight
gradient, float32 and float64 (3-d: tests/test_numba_winograd3d.py).

The accuracy contract is the cpp backend's (tests/test_winograd.py): with S = max over
the outputs of sum |terms| (the float64 reference applied to |inputs|),

* float32: |got - exact| <= 1e-5 * S + 1e-4 * |exact| for every output;
* float64: |got - exact| <= 1e-12 * S,

on random data and on adversarial data: a wide dynamic range (values x 10**U(-4, 4)),
deep channels at small spatial sizes, constant-sign data and one huge value among
small ones (in x, in the weight or in gy).
"""

from __future__ import annotations

import numpy as np
import pytest

import cnnfast
from cnnfast.registry import get_backend

from helpers import winograd_contract as contract

if get_backend("numba").reason is not None:  # pragma: no cover - depends on the environment
    pytest.skip(f"numba backend unavailable: {get_backend('numba').reason}",
                allow_module_level=True)
from cnnfast.backends.numba import backend as nb  # noqa: E402

def _check(x, w, gy, b, kw, dtype, what, algorithm="winograd"):
    return contract.check(x, w, gy, b, kw, dtype, what, "numba", algorithm)


def _forced_paths(x, w, kw):
    """The paths of the last forward and backward of ``_ops`` (re-run for the record)."""
    y = cnnfast.conv2d(x, w, backend="numba", algorithm="winograd", **kw)
    fwd = dict(nb.last_paths())
    cnnfast.conv_backward(y, x, w, needs=("x", "weight"), backend="numba",
                          algorithm="winograd", **kw)
    return fwd, dict(nb.last_paths())


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", contract.ADVERSARIAL_2D, ids=contract.adversarial_id)
def test_numba_winograd_accuracy_contract(case, dtype):
    for seed in range(3 if len(case) > 7 else 1):  # a few places for a huge value
        x, wt, gy, b, kw = contract.adversarial_case(case, seed)
        _check(x, wt, gy, b, kw, dtype, f"{case[0]} seed {seed}")
    fwd, bwd = _forced_paths(x.astype(dtype), wt.astype(dtype), kw)
    assert fwd == {"y": "winograd"}
    assert bwd == {"grad_x": "winograd", "grad_weight": "winograd"}


# The shared 2-d grid (helpers/winograd_contract.py): here also several blocks, more
# than one panel of tiles, channel counts not multiples of the register tile (MR = 4)
# nor of the weight gradient's 4 x 3 row blocks; and ranges of > 128 channels.
GRID = contract.GRID_2D + [(2, 130, 131, 6, 5, 1)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", GRID, ids=contract.grid_id)
def test_numba_winograd_matches_the_reference(case, dtype):
    _check(*contract.grid_case(case), dtype, str(case))


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_numba_winograd_transposed_convolutions(dtype):
    # conv_transpose runs the input-gradient correlation, its backward pass the
    # forward and weight-gradient kernels
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 12, 9, 10)).astype(dtype)
    w = rng.standard_normal((12, 10, 3, 3)).astype(dtype)
    b = rng.standard_normal(10).astype(dtype)
    y = cnnfast.conv_transpose2d(x, w, b, padding=1, backend="numba", algorithm="winograd")
    assert nb.last_paths() == {"y": "winograd"}
    ref = cnnfast.conv_transpose2d(*(a.astype(np.float64) for a in (x, w, b)), padding=1,
                                   backend="numpy")
    S = cnnfast.conv_transpose2d(np.abs(x.astype(np.float64)), np.abs(w.astype(np.float64)),
                                 padding=1, backend="numpy").max()
    a, r = contract.BOUNDS[dtype]
    assert np.all(np.abs(y - ref) <= a * S + r * np.abs(ref))
    gy = rng.standard_normal(y.shape).astype(dtype)
    got = cnnfast.conv_transpose_backward(gy, x, w, padding=1, needs=("x", "weight"),
                                          backend="numba", algorithm="winograd")
    assert nb.last_paths() == {"grad_x": "winograd", "grad_weight": "winograd"}
    f64 = [v.astype(np.float64) for v in (gy, x, w)]
    want = cnnfast.conv_transpose_backward(*f64, padding=1, needs=("x", "weight"),
                                           backend="numpy")
    Sb = cnnfast.conv_transpose_backward(*(np.abs(v) for v in f64), padding=1,
                                         needs=("x", "weight"), backend="numpy")
    for g, e, s in zip(got[:2], want[:2], Sb[:2]):
        assert np.all(np.abs(g - e) <= a * s.max() + r * np.abs(e))


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("act", ["relu", "leaky_relu", "sigmoid", "tanh"])
def test_numba_winograd_bias_and_fused_activation(act, dtype):
    # the epilogue of the output transform: act(sum + bias); the activation's
    # Lipschitz constant (<= max(1, slope)) carries the sum's bound, plus its own
    # rounding
    rng = np.random.default_rng(13)
    x = (rng.standard_normal((3, 20, 11, 9)) * 3).astype(dtype)
    w = rng.standard_normal((18, 20, 3, 3)).astype(dtype)
    b = rng.standard_normal(18).astype(dtype)
    slope = 0.3 if act == "leaky_relu" else 0.01
    kw = dict(padding=1, activation=act, negative_slope=slope)
    y = cnnfast.conv2d(x, w, b, backend="numba", algorithm="winograd", **kw)
    assert nb.last_paths() == {"y": "winograd"}
    f64 = [v.astype(np.float64) for v in (x, w, b)]
    ref = cnnfast.conv2d(*f64, backend="numpy", **kw)
    S = cnnfast.conv2d(*(np.abs(v) for v in f64), padding=1, backend="numpy").max()
    pre = cnnfast.conv2d(*f64, padding=1, backend="numpy")
    a, r = contract.BOUNDS[dtype]
    eps = np.finfo(dtype).eps
    tol = (a * S + r * np.abs(pre)) + 4 * eps * np.abs(ref)
    assert np.all(np.abs(y - ref) <= tol), act
    if act == "relu":
        assert (y >= 0).all()


# Several blocks of tiles (forward), several channel ranges of the weight gradient
# (> 128 channels), one tile block only.
THREAD_CASES = [(8, 32, 40, 28, 28), (2, 96, 100, 6, 6), (2, 200, 24, 10, 10)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", THREAD_CASES, ids=lambda c: "x".join(map(str, c)))
def test_numba_winograd_bits_do_not_depend_on_the_thread_count(threads, case, dtype):
    n, c, k, h, w = case
    rng = np.random.default_rng(11)
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    wt = rng.standard_normal((k, c, 3, 3)).astype(dtype)
    b = rng.standard_normal(k).astype(dtype)
    gy = rng.standard_normal((n, k, h, w)).astype(dtype)
    runs = []
    for nt in (1, 2):
        threads(nt)
        runs.append(contract.ops(x, wt, gy, b, dict(padding=1), "numba", "winograd"))
    for name in runs[0]:
        assert np.array_equal(runs[1][name], runs[0][name]), name


@pytest.mark.parametrize("what,kw,x_shape,w_shape", [
    ("stride 2", dict(stride=2), (1, 4, 9, 9), (4, 4, 3, 3)),
    ("5x5", {}, (1, 4, 9, 9), (4, 4, 5, 5)),
    ("groups", dict(groups=2), (1, 4, 9, 9), (4, 2, 3, 3)),
    ("dilation 2", dict(dilation=2), (1, 4, 9, 9), (4, 4, 3, 3)),
    ("1-d", {}, (1, 4, 9), (4, 4, 3)),
    ("3-d 3x3x1", {}, (1, 4, 5, 5, 5), (4, 4, 3, 3, 1)),
    ("3x1", {}, (1, 4, 9, 9), (4, 4, 3, 1)),
])
def test_numba_winograd_refuses_what_it_cannot_run(what, kw, x_shape, w_shape):
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    with pytest.raises(NotImplementedError, match="winograd needs"):
        cnnfast.conv(x, w, backend="numba", algorithm="winograd", **kw)
    y = cnnfast.conv(x, w, backend="numpy", **kw)
    with pytest.raises(NotImplementedError, match="winograd needs"):
        cnnfast.conv_backward(y, x, w, backend="numba", algorithm="winograd", **kw)
    with pytest.raises(NotImplementedError, match="winograd needs"):
        cnnfast.explain("conv", x, w, backend="numba", algorithm="winograd", **kw)


def test_numba_winograd_is_the_automatic_choice_for_deep_3x3_layers():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 64, 28, 28)).astype(np.float32)
    w = rng.standard_normal((64, 64, 3, 3)).astype(np.float32)
    text = cnnfast.explain("conv", x, w, padding=1, backend="numba")
    assert "winograd (Winograd F(4x4,3x3)" in text, text
    y = cnnfast.conv2d(x, w, padding=1, backend="numba")
    assert nb.last_paths() == {"y": "winograd"}
    cnnfast.conv_backward(y, x, w, padding=1, backend="numba")
    assert nb.last_paths() == {"grad_x": "winograd", "grad_weight": "winograd"}
    # automatic results meet the same contract
    gy = rng.standard_normal(y.shape)
    _check(x, w, gy, None, dict(padding=1), np.float32, "auto", algorithm="auto")
    # not for a stride-2 layer, nor for a thin one (a few channels: the transforms
    # would cost more than the products save), nor for a 1x1 image
    cnnfast.conv2d(x, w, padding=1, stride=2, backend="numba")
    assert nb.last_paths()["y"] != "winograd"
    cnnfast.conv2d(x[:, :4], w[:4, :4], padding=1, backend="numba")
    assert nb.last_paths()["y"] != "winograd"
    cnnfast.conv2d(x[:, :, :3, :3], w, padding=0, backend="numba")
    assert nb.last_paths()["y"] != "winograd"
    # nor for one output channel (the input gradient of a first layer: the register
    # tile's rows would stay empty)
    cnnfast.conv2d(x, w[:1], padding=1, backend="numba")
    assert nb.last_paths()["y"] != "winograd"
    cnnfast.conv_backward(y, x[:, :1], w[:, :1], padding=1, needs=("x",), backend="numba")
    assert nb.last_paths()["grad_x"] != "winograd"
