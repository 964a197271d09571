"""The numba backend's fused activation (``activation=``, issue 16): every algorithm
(pinned with ``algorithm=``) x every activation x float32/float64, conv and
conv_transpose, forward and backward against the numpy backend; relu and leaky_relu
bit-identical to the unfused conv followed by ``cnnfast.activation``; NaN, inf and
huge values through every path; the backward's bias gradient deterministic across
thread counts; thread safety of the backward's reused buffer; ``explain``.

Shapes are tiny: each kernel compiles once per dtype (or loads from numba's cache),
then every case runs in milliseconds.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

numba = pytest.importorskip("numba", reason="numba is not installed")

import cnnfast  # noqa: E402
from cnnfast import activation as A  # noqa: E402
from cnnfast.backends.numba import backend as nb  # noqa: E402
from cnnfast.backends.numba.kernels import epilogue  # noqa: E402

pytestmark = pytest.mark.skipif(nb.availability() is not None,
                                reason=f"numba backend unavailable: {nb.availability()}")

ALL = ("x", "weight", "bias")
DTYPES = (np.float32, np.float64)
# leaky_relu with a slope other than the default, so a slope that is dropped or
# rounded shows
ACTS = (("relu", 0.0), ("leaky_relu", 0.2), ("sigmoid", 0.0), ("tanh", 0.0))

# (op, algorithm, x shape, weight shape, geometry, the grads that algorithm can compute)
# -- one case per kernel the activation is fused into:
CASES = {
    # correlate_direct, 6 output channels: a full block of 4 (axpy4) and one of 2
    "conv-direct-2d": ("conv", "direct", (2, 4, 7, 6), (6, 4, 3, 3), dict(padding=1),
                       ALL),
    # correlate_gemm (im2col), dilated
    "conv-gemm-1d": ("conv", "gemm", (2, 3, 13), (5, 3, 3), dict(padding=2, dilation=2),
                     ALL),
    # correlate_wide over the input's stride phases (81 outputs per image: it pays);
    # a strided input gradient has no gemm path
    "conv-gemm-strided-2d": ("conv", "gemm", (2, 3, 17, 17), (5, 3, 3, 3),
                             dict(stride=2, padding=1), ("weight", "bias")),
    # correlate_wide over the padded input; the weight gradient has no gemm-wide path
    "conv-gemm-wide-3d": ("conv", "gemm-wide", (1, 3, 4, 5, 4), (4, 3, 3, 3, 3),
                          dict(padding=1), ("x", "bias")),
    # correlate_t (gather into output rows), strided
    "convt-direct-1d": ("conv_transpose", "direct", (2, 4, 8), (4, 3, 3),
                        dict(stride=2, padding=1, output_padding=1), ALL),
    # the flipped-weight correlation, im2col product, grouped
    "convt-gemm-2d": ("conv_transpose", "gemm", (2, 4, 6, 5), (4, 3, 3, 3),
                      dict(padding=1, groups=2), ALL),
    "convt-gemm-wide-2d": ("conv_transpose", "gemm-wide", (2, 4, 6, 5), (4, 5, 3, 3),
                           {}, ("x", "bias")),
    # one stride-1 correlation per stride phase; its gradients have no phases path
    "convt-phases-2d": ("conv_transpose", "phases", (2, 4, 5, 6), (4, 6, 3, 3),
                        dict(stride=2, padding=1), ("bias",)),
    # stride 3 > kernel 2: some phases get no tap, their outputs are the bias activated
    "convt-phases-bias-only-2d": ("conv_transpose", "phases", (2, 3, 4, 4), (3, 4, 2, 2),
                                  dict(stride=3), ("bias",)),
}


def _tol(dtype):
    return 2e-5 if dtype == np.float32 else 1e-12


def _close(actual, expected, dtype):
    tol = _tol(dtype)
    finite = np.abs(expected[np.isfinite(expected)])
    scale = max(1.0, float(finite.max()) if finite.size else 1.0)
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * scale)


def _inputs(case, dtype, seed=0):
    op, algorithm, x_shape, w_shape, geo, needs = CASES[case]
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal(w_shape).astype(dtype)
    channels = w_shape[0] if op == "conv" else w_shape[1] * geo.get("groups", 1)
    b = rng.standard_normal(channels).astype(dtype)
    return op, algorithm, x, w, b, geo, needs


def _forward(op, x, w, b, geo, **kw):
    return getattr(cnnfast, op)(x, w, b, **geo, **kw)


def _backward(op, gy, x, w, geo, needs, **kw):
    return getattr(cnnfast, op + "_backward")(gy, x, w, **geo, needs=needs, **kw)


# ----------------------------------------------------------------------------- the grid


@pytest.mark.parametrize("dtype", DTYPES, ids=("f32", "f64"))
@pytest.mark.parametrize("act,slope", ACTS, ids=[a for a, _ in ACTS])
@pytest.mark.parametrize("case", CASES)
def test_fused_matches_numpy(case, act, slope, dtype):
    op, algorithm, x, w, b, geo, needs = _inputs(case, dtype)
    kw = dict(activation=act, negative_slope=slope)
    y = _forward(op, x, w, b, geo, backend="numba", algorithm=algorithm, **kw)
    assert nb.last_paths()["y"] == algorithm
    _close(y, _forward(op, x, w, b, geo, backend="numpy", **kw), dtype)

    gy = np.random.default_rng(1).standard_normal(y.shape).astype(dtype)
    # Both backends read the derivative from the same y (a value near a kink may
    # round to either side of 0 in two forward computations).
    got = _backward(op, gy, x, w, geo, needs, backend="numba", algorithm=algorithm, y=y,
                    **kw)
    want = _backward(op, gy, x, w, geo, needs, backend="numpy", y=y, **kw)
    for name, g, r in zip(ALL, got, want):
        assert (g is None) == (name not in needs), name
        if g is not None:
            _close(g, r, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=("f32", "f64"))
@pytest.mark.parametrize("act,slope", ACTS[:2], ids=("relu", "leaky_relu"))
@pytest.mark.parametrize("case", CASES)
def test_piecewise_bit_identical_to_unfused(case, act, slope, dtype):
    """relu and leaky_relu are exact: fused equals the numba conv followed by the
    reference, bit for bit; the backward's grad_x and grad_weight equal the unfused
    gradient kernels run on the reference's g (grad_bias sums in another order)."""
    op, algorithm, x, w, b, geo, needs = _inputs(case, dtype, seed=2)
    x[0, 0].flat[::5] = np.nan  # NaN propagates through relu (torch.relu(nan) is nan)
    kw = dict(backend="numba", algorithm=algorithm)
    y = _forward(op, x, w, b, geo, activation=act, negative_slope=slope, **kw)
    unfused = A.apply(_forward(op, x, w, b, geo, **kw), act, slope)
    assert np.isnan(y).any()
    assert y.tobytes() == unfused.tobytes()

    gy = np.random.default_rng(3).standard_normal(y.shape).astype(dtype)
    fused = _backward(op, gy, x, w, geo, needs, y=y, activation=act, negative_slope=slope,
                      **kw)
    plain = _backward(op, A.grad(gy, y, act, slope), x, w, geo, needs, **kw)
    for name, g, r in zip(ALL, fused, plain):
        if name == "bias":
            _close(g, r, dtype)
        elif g is not None:
            assert g.tobytes() == r.tobytes(), name


# ------------------------------------------------------------------------- NaN, inf, huge


def _special(dtype):
    big = np.finfo(dtype).max
    return np.array([np.nan, np.inf, -np.inf, big, -big, 1e30, -1e30, 710, -710, 89,
                     -89, 100, -100, 5, -5, 0.75, 0.0, -0.0, 1e-30, -1e-30, 2e-45],
                    dtype)


# An identity 1x1 layer (weight 1) computes exactly x + bias, so every path hands the
# epilogue the values chosen here. conv_transpose's stride 2 also writes the
# activated bias alone (the odd positions: no tap lands there).
IDENTITY = [("conv", a, {}) for a in ("direct", "gemm", "gemm-wide")] + [
    ("conv_transpose", a, {}) for a in ("direct", "gemm", "gemm-wide")] + [
    ("conv_transpose", "phases", dict(stride=2))]


@pytest.mark.parametrize("dtype", DTYPES, ids=("f32", "f64"))
@pytest.mark.parametrize("act,slope", ACTS, ids=[a for a, _ in ACTS])
@pytest.mark.parametrize("op,algorithm,geo", IDENTITY,
                         ids=[f"{o}-{a}" for o, a, _ in IDENTITY])
def test_special_values_forward(op, algorithm, geo, act, slope, dtype):
    v = _special(dtype)
    x = v.reshape(1, 1, -1)
    w = np.ones((1, 1, 1), dtype)
    b = np.array([-0.25], dtype)
    y = _forward(op, x, w, b, geo, backend="numba", algorithm=algorithm, activation=act,
                 negative_slope=slope)
    s = geo.get("stride", 1)
    want = A.apply(np.full(y.shape, b[0], dtype), act, slope)
    want[..., ::s] = A.apply(v + b[0], act, slope)
    if act in ("sigmoid", "tanh"):  # the exp/tanh implementations may differ in ulps
        np.testing.assert_allclose(y, want, rtol=4 * np.finfo(dtype).eps,
                                   atol=np.finfo(dtype).tiny)  # subnormal results
    else:
        np.testing.assert_array_equal(y, want)
    if act == "sigmoid":  # exp(-|v|): no overflow, saturates to 0 and 1
        assert np.all((y >= 0) & (y <= 1) | np.isnan(want))


@pytest.mark.parametrize("dtype", DTYPES, ids=("f32", "f64"))
@pytest.mark.parametrize("act,slope", ACTS, ids=[a for a, _ in ACTS])
@pytest.mark.parametrize("op", ("conv", "conv_transpose"))
def test_special_values_backward(op, act, slope, dtype):
    """y holds every value the forward can produce from the special inputs (NaN
    included); grad_x of the identity layer is g itself, grad_bias its sum."""
    y = A.apply(_special(dtype), act, slope).reshape(1, 1, -1)
    gy = np.random.default_rng(4).standard_normal(y.shape).astype(dtype)
    x = np.zeros(y.shape, dtype)
    w = np.ones((1, 1, 1), dtype)
    gx, _, gb = _backward(op, gy, x, w, {}, ("x", "bias"), backend="numba", y=y,
                          activation=act, negative_slope=slope)
    g = A.grad(gy, y, act, slope)
    if act in ("sigmoid", "tanh"):  # a few roundings, in another order maybe
        np.testing.assert_allclose(gx, g, rtol=4 * np.finfo(dtype).eps,
                                   atol=np.finfo(dtype).tiny)
    else:
        np.testing.assert_array_equal(gx, g)
    _close(gb, g.sum(axis=(0, 2)), dtype)  # NaN where g has one (sigmoid of NaN)


# -------------------------------------------------------------------------- backward pass


def test_grad_bias_over_chunked_planes_deterministic_across_threads(threads):
    """Planes longer than ``GRAD_CHUNK`` are split into chunks (parallel even for one
    image and channel); the partials are added in a fixed order, so grad_bias has the
    same bits for 1 and 2 threads, and matches numpy."""
    n = 2 * epilogue.GRAD_CHUNK + 123
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 2, n)).astype(np.float32)
    w = rng.standard_normal((3, 2, 1)).astype(np.float32)
    kw = dict(activation="sigmoid")
    y = cnnfast.conv(x, w, backend="numba", **kw)
    gy = rng.standard_normal(y.shape).astype(np.float32)
    runs = []
    for count in (1, 2):
        cnnfast.set_num_threads(count)
        runs.append(cnnfast.conv_backward(gy, x, w, needs=ALL, backend="numba", y=y, **kw))
    for a, b in zip(*runs):
        assert a.tobytes() == b.tobytes()
    want = cnnfast.conv_backward(gy.astype(np.float64), x.astype(np.float64),
                                 w.astype(np.float64), needs=ALL, backend="numpy",
                                 y=y.astype(np.float64), **kw)
    for g, r in zip(runs[0], want):
        _close(g, r, np.float32)


def test_backward_buffer_reused_safely():
    """g lives in a per-thread buffer reused across calls: results never point into
    it (a later call with another shape leaves earlier results intact), and Python
    threads running at once each get their own."""
    def work(seed, shape):
        rng = np.random.default_rng(seed)
        x = rng.standard_normal(shape).astype(np.float32)
        w = rng.standard_normal((4, shape[1], 3, 3)).astype(np.float32)
        y = cnnfast.conv(x, w, padding=1, backend="numba", activation="relu")
        gy = rng.standard_normal(y.shape).astype(np.float32)
        return cnnfast.conv_backward(gy, x, w, padding=1, needs=ALL, backend="numba",
                                     activation="relu", y=y)

    shapes = [(2, 3, 9, 8), (1, 2, 5, 5), (3, 3, 11, 7), (2, 2, 6, 9)]
    expected = [work(seed, s) for seed, s in enumerate(shapes)]
    snapshot = [[g.copy() for g in grads] for grads in expected]
    work(9, (4, 3, 12, 12))  # grows and rewrites this thread's buffer
    for grads, snap in zip(expected, snapshot):
        for g, s in zip(grads, snap):
            assert g.tobytes() == s.tobytes()

    results, errors = {}, []
    barrier = threading.Barrier(len(shapes))

    def run(i):
        try:
            barrier.wait()
            for _ in range(3):
                results[i] = work(i, shapes[i])
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    workers = [threading.Thread(target=run, args=(i,)) for i in range(len(shapes))]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert not errors, errors
    for i, grads in enumerate(expected):
        for g, r in zip(grads, results[i]):
            assert g.tobytes() == r.tobytes()


def test_fused_without_the_reference_functions(monkeypatch):
    """The numba backend applies the activation in its kernels: it never calls the
    unfused reference (which the dispatcher keeps for empty convolutions only)."""
    def refuse(*args, **kwargs):
        raise AssertionError("the numba backend called cnnfast.activation")

    monkeypatch.setattr(A, "apply", refuse)
    monkeypatch.setattr(A, "grad", refuse)
    rng = np.random.default_rng(6)
    x = rng.standard_normal((1, 3, 6, 6)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    y = cnnfast.conv(x, w, backend="numba", activation="tanh")
    cnnfast.conv_backward(y, x, w, needs=ALL, backend="numba", activation="tanh", y=y)
    wt = rng.standard_normal((3, 4, 3, 3)).astype(np.float32)
    yt = cnnfast.conv_transpose(x, wt, stride=2, backend="numba", activation="tanh")
    cnnfast.conv_transpose_backward(yt, x, wt, stride=2, needs=ALL, backend="numba",
                                    activation="tanh", y=yt)


# ----------------------------------------------------------------------------- explain


def test_explain_names_the_fused_epilogue():
    x = np.ones((1, 3, 6, 6), np.float32)
    w = np.ones((4, 3, 3, 3), np.float32)
    plain = cnnfast.explain("conv2d", x, w, backend="numba")
    assert "epilogue" not in plain
    fwd = cnnfast.explain("conv2d", x, w, backend="numba", activation="leaky_relu",
                          negative_slope=0.3)
    assert "fused epilogue: leaky_relu (slope 0.3)" in fwd
    y = np.ones((1, 4, 4, 4), np.float32)
    bwd = cnnfast.explain("conv_backward", y, x, w, backend="numba", activation="relu",
                          y=y, needs=ALL)
    assert "fused epilogue" in bwd and "grad_bias" in bwd
