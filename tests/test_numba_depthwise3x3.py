"""The numba backend's depthwise 3x3 stride-1 kernel (``kernels.direct.correlate_dw3x3``,
issue 15): the forward of depthwise layers (channel multipliers too) and, through the
flipped adjoint weight, their input gradient and the stride-1 depthwise transposed
convolution. Padding 0-3 (the input gradient's adjoint padding then negative: a
crop), asymmetric, planes narrower and shorter than the kernel, bias and every fused
activation; against the numpy reference (float64 tight, float32 within a rounding
bound), 1 and 2 threads bit-identical, inputs left unmodified, and inf/NaN at the
plane's corners and edges where the edge outputs meet them.

Tolerance: an output is the bias plus 9 products (or, for the input gradient, up to
9), so its float32 error is at most about ``10 u S`` with ``S`` the sum of the
absolute values of its terms; the checks use ``16 u S``.
"""

from __future__ import annotations

import numpy as np
import pytest

numba = pytest.importorskip("numba", reason="numba is not installed")

import cnnfast  # noqa: E402
from cnnfast import params as P  # noqa: E402
from cnnfast.backends.numba import backend as nb  # noqa: E402
from cnnfast.backends.numpy import backend as ref  # noqa: E402
from helpers.determinism import assert_numba_bit_identical_across_threads  # noqa: E402
from helpers.numba_launches import record_launches  # noqa: E402

pytestmark = pytest.mark.skipif(nb.availability() is not None,
                                reason=f"numba backend unavailable: {nb.availability()}")

ACTIVATIONS = [None, "relu", "leaky_relu", "sigmoid", "tanh"]
# name: (x shape, output channels per input channel, padding)
CASES = {
    "suite-like": ((2, 6, 14, 17), 1, 1),
    "no-padding": ((2, 3, 6, 9), 1, 0),
    "multiplier": ((2, 3, 7, 9), 2, 1),
    "asymmetric": ((1, 4, 8, 7), 1, ((0, 2), (2, 1))),
    "pad-2": ((1, 2, 5, 6), 1, 2),
    "pad-beyond-kernel": ((1, 2, 4, 5), 1, 3),
    "narrow": ((2, 3, 9, 2), 1, 1),      # W < 3: no interior column
    "short": ((2, 3, 1, 11), 1, 1),      # H = 1: every row an edge row
    "tiny": ((1, 2, 2, 2), 1, 1),
}


def _case(name, dtype, seed=3):
    xs, mult, pad = CASES[name]
    rng = np.random.default_rng(seed)
    C = xs[1]
    x = rng.standard_normal(xs).astype(dtype)
    w = rng.standard_normal((C * mult, 1, 3, 3)).astype(dtype)
    b = rng.standard_normal(C * mult).astype(dtype)
    p = P.conv_params(xs, w.shape, 1, pad, 1, C)
    gy = rng.standard_normal((xs[0], C * mult) + tuple(p.out_shape)).astype(dtype)
    return x, w, b, gy, p, dict(padding=pad, groups=C)



def _close(got, want, scale, dtype):
    if dtype == np.float64:
        np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-13 * scale.max())
    else:
        assert (np.abs(got - want) <= 16 * np.finfo(dtype).eps * scale + 1e-30).all()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("name", sorted(CASES))
def test_forward_matches_reference(name, act, dtype, monkeypatch):
    x, w, b, _, p, kw = _case(name, dtype)
    before = (x.copy(), w.copy(), b.copy())
    seen = record_launches(monkeypatch)
    y = cnnfast.conv(x, w, b, activation=act, backend="numba", **kw)
    assert seen == ["correlate_dw3x3"]
    f64 = [a.astype(np.float64) for a in (x, w, b)]
    S = ref.conv(*[np.abs(a) for a in f64], p)
    want = cnnfast.conv(*f64, activation=act, backend="numpy", **kw)
    # the activations used are 1-Lipschitz, so the sum's bound carries over
    _close(y, want, S, dtype)
    for a, a0 in zip((x, w, b), before):
        assert a.tobytes() == a0.tobytes()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", sorted(CASES))
def test_input_gradient_matches_reference(name, dtype, monkeypatch):
    x, w, _, gy, p, kw = _case(name, dtype)
    before = gy.copy()
    seen = record_launches(monkeypatch)
    gx = cnnfast.conv_backward(gy, x, w, needs=("x",), backend="numba", **kw)[0]
    # one output per group: the flipped 3x3 correlation; a multiplier sums over the
    # group's outputs (correlate_t)
    assert seen == (["correlate_dw3x3"] if CASES[name][1] == 1 else ["correlate_t"])
    f64 = [a.astype(np.float64) for a in (gy, x, w)]
    want = ref.conv_backward(*f64, p, frozenset({"x"}))[0]
    S = ref.conv_backward(*[np.abs(a) for a in f64], p, frozenset({"x"}))[0]
    _close(gx, want, S, dtype)
    assert gy.tobytes() == before.tobytes()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_transposed_convolution(dtype, monkeypatch):
    """A stride-1 depthwise transposed convolution is the same kernel on the flipped
    weight."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 5, 9, 8)).astype(dtype)
    w = rng.standard_normal((5, 1, 3, 3)).astype(dtype)
    b = rng.standard_normal(5).astype(dtype)
    seen = record_launches(monkeypatch)
    y = cnnfast.conv_transpose(x, w, b, padding=1, groups=5, backend="numba")
    assert seen == ["correlate_dw3x3"]
    f64 = [a.astype(np.float64) for a in (x, w, b)]
    want = cnnfast.conv_transpose(*f64, padding=1, groups=5, backend="numpy")
    S = cnnfast.conv_transpose(*[np.abs(a) for a in f64], padding=1, groups=5,
                               backend="numpy")
    _close(y, want, S, dtype)


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
@pytest.mark.parametrize("where", [(0, 0), (0, 16), (13, 0), (13, 16), (5, 0), (0, 7),
                                   (6, 8)])
def test_non_finite_inputs_reach_exactly_their_outputs(bad, where):
    """Corners, edges and the interior: the outputs a non-finite input feeds are
    non-finite as in the reference, and only those (no tap reads past the plane)."""
    x, w, b, _, p, kw = _case("suite-like", np.float64)
    x[1, 4][where] = bad
    y = cnnfast.conv(x, w, b, backend="numba", **kw)
    want = ref.conv(x, w, b, p)
    np.testing.assert_array_equal(np.isfinite(y), np.isfinite(want))
    np.testing.assert_allclose(y, want, rtol=1e-13, atol=1e-12)  # inf/NaN where so


def test_bit_identical_across_threads(threads):
    def compute():
        out = []
        for name in sorted(CASES):
            x, w, b, gy, _, kw = _case(name, np.float32, seed=8)
            out.append(cnnfast.conv(x, w, b, activation="relu", backend="numba", **kw))
            out.append(cnnfast.conv_backward(gy, x, w, needs=("x",), backend="numba",
                                             **kw)[0])
        return out

    assert_numba_bit_identical_across_threads(threads, compute)


@pytest.mark.parametrize("bad", [np.inf, np.nan])
@pytest.mark.parametrize("name", ["suite-like", "asymmetric", "narrow", "short", "no-padding"])
def test_non_finite_weight_as_the_reference(name, bad):
    """An inf/NaN weight: its padding taps give inf * 0 = NaN as in the reference
    (zero padding, as torch), the other outputs of the channel as their taps say."""
    x, w, b, _, p, kw = _case(name, np.float64)
    w[1, 0, 0, 0] = bad  # tap (0, 0): padding for the first row and column
    y = cnnfast.conv(x, w, b, backend="numba", **kw)
    with np.errstate(invalid="ignore"):
        want = ref.conv(x, w, b, p)
    np.testing.assert_array_equal(np.isfinite(y), np.isfinite(want))
    np.testing.assert_allclose(y, want, rtol=1e-13, atol=1e-12)


def test_depth_padding_is_not_its_case(monkeypatch):
    """A 3-d layer of depth 1 padded in depth has output slices no 2-d kernel covers
    (found by the fuzzer): correlate_direct runs it."""
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 3, 1, 3, 5))
    w = rng.standard_normal((3, 1, 1, 3, 3))
    b = rng.standard_normal(3)
    kw = dict(padding=((0, 1), 1, 2), groups=3)
    seen = record_launches(monkeypatch)
    y = cnnfast.conv(x, w, b, backend="numba", **kw)
    assert seen == ["correlate_direct"]
    np.testing.assert_allclose(y, cnnfast.conv(x, w, b, backend="numpy", **kw),
                               rtol=1e-13, atol=1e-13)
