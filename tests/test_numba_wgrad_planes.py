"""The numba backend's stride-1 "direct" weight gradient as whole-plane dot products
(``kernels.direct.weight_grad_planes``, issue 15): depthwise and other narrow
groups (fewer than MR output channels per group). Zero padding on both sides,
asymmetric, beyond the kernel, dilation, ranks 1-3, tap counts that are and are
not multiples of the 3 dot products computed together, the transposed
convolution's weight gradient; against the numpy reference (float64 tight, float32
within a rounding bound), 1 and 2 threads bit-identical, inputs left unmodified,
and an inf or NaN input recomputed exactly by the per-row kernel.

Tolerance: a weight-gradient element is a sum of ``M`` products (images x output
positions), its error at most about ``M * u`` times the sum of the absolute values
of its terms ``S``; the checks use ``2 M u S``.
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

# name: (x shape, weight shape, conv keywords); all stride 1, < 4 outputs per group
CASES = {
    "depthwise": ((3, 8, 14, 13), (8, 1, 3, 3), dict(padding=1, groups=8)),
    "multiplier": ((2, 3, 9, 11), (6, 1, 3, 3), dict(padding=1, groups=3)),  # 2 a group
    # 2 output channels per group, 3 input channels, 4 taps
    "narrow-groups": ((2, 6, 10, 9), (4, 3, 2, 2), dict(padding=(1, 0), groups=2)),
    "dilation-asym": ((2, 4, 11, 12), (4, 1, 3, 5),
                      dict(padding=((2, 0), (1, 3)), dilation=(2, 1), groups=4)),  # 15 taps
    "pad-beyond-kernel": ((1, 2, 4, 5), (2, 1, 3, 3), dict(padding=3, groups=2)),
    "dense-few-outputs": ((2, 5, 8, 7), (3, 5, 3, 3), dict(padding=1)),       # og 3 < MR
    "1x1": ((2, 4, 6, 7), (2, 4, 1, 1), dict()),
    "rank1": ((3, 6, 40), (6, 1, 5), dict(padding=2, groups=6)),              # 5 taps
    "rank3": ((2, 4, 5, 6, 7), (4, 1, 3, 3, 3), dict(padding=1, groups=4)),
}


def _rand(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


def _case(name, dtype, seed=5):
    xs, ws, kw = CASES[name]
    rng = np.random.default_rng(seed)
    x, w = _rand(rng, xs, dtype), _rand(rng, ws, dtype)
    p = P.conv_params(xs, ws, 1, kw.get("padding", 0), kw.get("dilation", 1),
                      kw.get("groups", 1))
    gy = _rand(rng, (xs[0], ws[0]) + tuple(p.out_shape), dtype)
    return x, w, gy, p, kw



def _check(gw, gy, x, w, p, dtype, transposed=False):
    f64 = [a.astype(np.float64) for a in (gy, x, w)]
    absf = [np.abs(a) for a in f64]
    grad = ref.conv_transpose_backward if transposed else ref.conv_backward
    want = grad(*f64, p, frozenset({"weight"}))[1]
    if dtype == np.float64:
        np.testing.assert_allclose(gw, want, rtol=1e-12, atol=1e-12)
        return
    S = grad(*absf, p, frozenset({"weight"}))[1]
    m = gy.shape[0] * int(np.prod(gy.shape[2:]))
    assert (np.abs(gw - want) <= 2 * m * np.finfo(dtype).eps * S + 1e-30).all()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", sorted(CASES))
def test_planes_match_reference(name, dtype, monkeypatch):
    x, w, gy, p, kw = _case(name, dtype)
    before = (x.copy(), w.copy(), gy.copy())
    seen = record_launches(monkeypatch)
    gw = cnnfast.conv_backward(gy, x, w, needs=("weight",), backend="numba", **kw)[1]
    assert nb.last_paths() == {"grad_weight": "direct"}
    assert seen == ["weight_grad_planes"]  # finite: no recomputation
    _check(gw, gy, x, w, p, dtype)
    for a, a0 in zip((x, w, gy), before):
        assert a.tobytes() == a0.tobytes()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_transposed_weight_gradient(dtype, monkeypatch):
    """conv_transpose's weight gradient: the same kernel with the roles of the
    input and the output gradient swapped (a depthwise decoder layer)."""
    rng = np.random.default_rng(6)
    x = _rand(rng, (2, 6, 7, 8), dtype)
    w = _rand(rng, (6, 1, 3, 3), dtype)
    p = P.conv_transpose_params(x.shape, w.shape, 1, 1, 0, 6, 1)
    gy = _rand(rng, (2, 6) + tuple(p.out_shape), dtype)
    seen = record_launches(monkeypatch)
    gw = cnnfast.conv_transpose_backward(gy, x, w, padding=1, groups=6, needs=("weight",),
                                         backend="numba")[1]
    assert seen == ["weight_grad_planes"]
    _check(gw, gy, x, w, p, dtype, transposed=True)


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_non_finite_input_is_recomputed_exactly(bad, monkeypatch):
    """A zero of a wide gradient row meets the input value past the outputs' columns:
    inf * 0 gives NaN where the reference, which never reads it, has a finite sum.
    The result is then recomputed by the per-row kernel."""
    x, w, gy, p, kw = _case("depthwise", np.float64)
    x[1, 2, 5, 12] = bad  # last column: read by taps kw >= 1 only (padding 1)
    seen = record_launches(monkeypatch)
    gw = cnnfast.conv_backward(gy, x, w, needs=("weight",), backend="numba", **kw)[1]
    assert seen == ["weight_grad_planes", "weight_grad"]
    want = ref.conv_backward(gy, x, w, p, frozenset({"weight"}))[1]
    assert np.isfinite(want[2, 0, :, 0]).all() and not np.isfinite(want).all()
    np.testing.assert_allclose(gw, want, rtol=1e-12, atol=1e-12)  # NaN where NaN


def test_bit_identical_across_threads(threads):
    def compute():
        out = []
        for name in sorted(CASES):
            x, w, gy, _, kw = _case(name, np.float32, seed=7)
            out.append(cnnfast.conv_backward(gy, x, w, needs=("weight",), backend="numba",
                                             **kw)[1])
        return out

    assert_numba_bit_identical_across_threads(threads, compute)
