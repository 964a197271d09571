"""The numba backend's strided transposed convolution writing each stride phase in
place (issue 15): ``correlate_wide`` stores a phase's outputs into every
``stride``-th element of the output (its ``ylay``), with no phase buffer and no
strided copy. Phases of unequal extents and tap counts, output padding, dilation,
groups, output-channel tails of the register tile, 3-d, bias and every fused
activation, ``out=``; against the numpy reference (float64 tight, float32 within
a rounding bound), 1 and 2 threads bit-identical, inputs left unmodified.

Tolerance (as in ``test_numba_wide_gemm.py``): an output is a sum of at most ``K``
products (input channels per group x taps), so its error is at most about
``K * u`` times the sum of the absolute values of its terms; the checks use
``2 K u S`` with ``S`` the transposed convolution of ``|x|`` with ``|w|``.
"""

from __future__ import annotations

import numpy as np
import pytest

numba = pytest.importorskip("numba", reason="numba is not installed")

import cnnfast  # noqa: E402
from cnnfast import params as P  # noqa: E402
from cnnfast.backends.numba import backend as nb  # noqa: E402
from cnnfast.backends.numpy import backend as ref  # noqa: E402

pytestmark = pytest.mark.skipif(nb.availability() is not None,
                                reason=f"numba backend unavailable: {nb.availability()}")

# name: (x shape, weight shape (C, O/G, *k), conv_transpose keywords)
CASES = {
    # the decoder layer's geometry, smaller: 4 phases of 2x2 taps, 5 output
    # channels (a full register tile and a tail)
    "k4s2": ((2, 6, 9, 8), (6, 5, 4, 4), dict(stride=2, padding=1)),
    # odd output (2*in + 1): phases of in+1 and in outputs, 2 and 1 taps
    "k3s2-odd": ((2, 4, 7, 9), (4, 6, 3, 3), dict(stride=2)),
    # output padding: the last row and column of a phase
    "output-padding": ((1, 5, 6, 7), (5, 4, 3, 3), dict(stride=2, padding=1,
                                                         output_padding=1)),
    # stride 3, dilation 2, two groups of 3 output channels
    "s3-dilation-groups": ((2, 6, 5, 6), (6, 3, 3, 2), dict(stride=3, dilation=2,
                                                            groups=2, padding=1)),
    # 3-d, strided in two dims only
    "3d": ((1, 4, 3, 5, 6), (4, 4, 2, 3, 3), dict(stride=(1, 2, 2), padding=(0, 1, 1))),
}


def _rand(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


def _inputs(name, dtype, seed=3):
    xs, ws, kw = CASES[name]
    rng = np.random.default_rng(seed)
    x, w = _rand(rng, xs, dtype), _rand(rng, ws, dtype)
    b = _rand(rng, (ws[1] * kw.get("groups", 1),), dtype)
    return x, w, b, kw


def _params(x, w, kw):
    return P.conv_transpose_params(x.shape, w.shape, kw.get("stride", 1),
                                   kw.get("padding", 0), kw.get("output_padding", 0),
                                   kw.get("groups", 1), kw.get("dilation", 1))


def _bound(x, w, kw, dtype):
    """``2 K u S`` (see the module docstring) plus a tiny absolute term."""
    p = _params(x, w, kw)
    S = ref.conv_transpose(np.abs(x).astype(np.float64), np.abs(w).astype(np.float64),
                           None, p)
    k = w.shape[0] // kw.get("groups", 1) * int(np.prod(w.shape[2:]))
    return 2 * k * np.finfo(dtype).eps * S + 1e-30


def _launches(monkeypatch):
    """The (kernel name, ylay or None) of every launch of the next calls."""
    seen = []
    launch = nb._launch

    def spy(kernel, *args):
        name = getattr(kernel, "__name__", "")
        seen.append((name, args[4] if name == "correlate_wide" else None))
        return launch(kernel, *args)

    monkeypatch.setattr(nb, "_launch", spy)
    return seen


@pytest.mark.parametrize("activation", [None, "relu", "leaky_relu", "sigmoid", "tanh"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", sorted(CASES))
def test_phases_written_in_place_match_reference(name, dtype, activation, monkeypatch):
    x, w, b, kw = _inputs(name, dtype)
    before = (x.copy(), w.copy(), b.copy())
    seen = _launches(monkeypatch)
    y = cnnfast.conv_transpose(x, w, b, activation=activation, negative_slope=0.1,
                               backend="numba", **kw)
    assert nb.last_paths() == {"y": "phases"}
    # every phase on the wide product, each storing into its strided view of y
    steps = [lay[5] for kname, lay in seen if kname == "correlate_wide"]
    stride = kw["stride"]
    width_step = stride if isinstance(stride, int) else stride[-1]
    assert len(steps) > 1 and all(s == width_step for s in steps)
    p = P.with_activation(_params(x, w, kw), activation, 0.1)
    want = ref.conv_transpose(x.astype(np.float64), w.astype(np.float64),
                              b.astype(np.float64), p)
    if dtype == np.float64:
        np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12)
    else:
        # the activations are 1-Lipschitz: the bound of the sum carries over
        assert (np.abs(y - want) <= _bound(x, w, kw, dtype) + 1e-6).all()
    for a, a0 in zip((x, w, b), before):
        assert a.tobytes() == a0.tobytes()


@pytest.mark.parametrize("name", sorted(CASES))
def test_phases_into_out_and_bit_identical_across_threads(name, threads):
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("numba has a single thread here (NUMBA_NUM_THREADS=1)")
    x, w, b, kw = _inputs(name, np.float32, seed=4)
    results = []
    for n in (1, 2):
        threads(n)
        results.append(cnnfast.conv_transpose(x, w, b, activation="relu", backend="numba",
                                              **kw))
    assert results[0].tobytes() == results[1].tobytes()
    out = np.full(results[0].shape, np.nan, np.float32)  # every element overwritten
    got = cnnfast.conv_transpose(x, w, b, activation="relu", backend="numba", out=out,
                                 **kw)
    assert got is out and out.tobytes() == results[0].tobytes()
