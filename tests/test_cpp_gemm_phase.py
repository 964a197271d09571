"""The cpp backend's ``gemm-phase`` path (csrc/conv/gemm_phase.h): the im2col GEMM of
1-d and 2-d convolutions of any stride, reading the input through its stride phases;
the input gradient is one product per phase of grad_x. Checked against the numpy
reference on a random grid (strides 1-4, kernels 1-7, padding, dilation, groups, odd
and tiny sizes, kernels wider than the stride and strides wider than the kernel, so
that some phases of grad_x get no tap), for all four convolution ops, for bit-identical
results with 1, 2 and 3 threads, for its refusals and for the automatic choice
(csrc/kernels.h use_phase).

Tolerances: float64 1e-11 (relative to the output's scale). float32 1e-4 relative with
an absolute term of 1e-4 * sqrt(terms): each output is a sum of up to C/G * k*k terms
of N(0, 1) products (the weight gradient: N * Ho * Wo of them), whose float32 rounding
error grows as sqrt(terms) * 2**-24 * |term|; 1e-4 leaves that a wide margin and still
catches a wrong tap (an error of order 1)."""
import numpy as np
import pytest

import cnnfast as cf

cpp = pytest.importorskip("cnnfast.backends.cpp.backend")
if "gemm-phase" not in cpp.ALGORITHMS:  # pragma: no cover - an old build
    pytest.skip("cpp backend built without gemm-phase", allow_module_level=True)

ALL = ("x", "weight", "bias")


def _shapes(rng, n, c, o, hw, k, s, p, d, groups, dt, rank=2):
    hw = hw[-rank:]
    ks = (k,) * rank
    x = rng.standard_normal((n, c * groups) + tuple(hw)).astype(dt)
    w = rng.standard_normal((o * groups, c) + ks).astype(dt)
    b = rng.standard_normal(o * groups).astype(dt)
    return x, w, b, dict(stride=s, padding=p, dilation=d, groups=groups)


def _close(got, ref, terms, dt):
    assert got.dtype == ref.dtype and got.shape == ref.shape
    tol = 1e-4 if dt == np.float32 else 1e-11
    scale = max(1.0, float(np.max(np.abs(ref), initial=0.0)))
    np.testing.assert_allclose(got, ref, rtol=tol, atol=tol * max(scale, np.sqrt(terms)))


def _grid():
    rng = np.random.default_rng(2024)
    cases = []
    while len(cases) < 90:
        k = int(rng.integers(1, 8))
        s = int(rng.choice([1, 2, 2, 2, 3, 4]))
        p = int(rng.integers(0, 4))
        d = int(rng.choice([1, 1, 1, 2]))
        h, w = int(rng.integers(1, 24)), int(rng.integers(1, 24))
        ek = (k - 1) * d + 1
        if h + 2 * p < ek or w + 2 * p < ek:
            continue
        groups = int(rng.choice([1, 1, 1, 2, 3]))
        cases.append((int(rng.integers(1, 4)), int(rng.integers(1, 11)),
                      int(rng.choice([1, 2, 5, 6, 7, 13, 16, 20])), (h, w), k, s, p, d, groups,
                      (np.float32, np.float64)[len(cases) % 2], 1 + (len(cases) % 5 == 0)))
    return cases


def _id(c):
    return "n{}c{}o{}_{}x{}_k{}s{}p{}d{}g{}_{}_r{}".format(
        c[0], c[1], c[2], c[3][0], c[3][1], c[4], c[5], c[6], c[7], c[8],
        np.dtype(c[9]).name, 3 - c[10])


@pytest.mark.parametrize("case", _grid(), ids=_id)
def test_forced_matches_reference(case):
    *geo, dt, r1 = case
    rank = 1 if r1 == 2 else 2
    rng = np.random.default_rng(abs(hash(_id(case))) % 2**32)
    x, w, b, kw = _shapes(rng, *geo, dt, rank=rank)
    c, k = w.shape[1], geo[4]
    y_ref = cf.conv(x, w, b, backend="numpy", **kw)
    gy = rng.standard_normal(y_ref.shape).astype(dt)
    y = cf.conv(x, w, b, backend="cpp", algorithm="gemm-phase", **kw)
    assert cpp.last_paths() == {"y": "gemm-phase"}
    _close(y, y_ref, c * k ** rank, dt)
    ref = cf.conv_backward(gy, x, w, needs=ALL, backend="numpy", **kw)
    wide = y_ref.shape[-1] > 256  # the weight gradient tiles whole output rows
    needs = ("x", "bias") if wide else ALL
    got = cf.conv_backward(gy, x, w, needs=needs, backend="cpp", algorithm="gemm-phase", **kw)
    _close(got[0], ref[0], w.shape[0] // kw["groups"] * k ** rank, dt)
    if not wide:
        _close(got[1], ref[1], gy.size // gy.shape[1], dt)
    # the transposed convolution runs the same kernels in the other roles
    bt = rng.standard_normal(x.shape[1]).astype(dt)
    s, p, d = kw["stride"], kw["padding"], kw["dilation"]
    opad = tuple(hx - ((hy - 1) * s - 2 * p + d * (k - 1) + 1)
                 for hx, hy in zip(x.shape[2:], gy.shape[2:]))  # back to x's size
    t_ref = cf.conv_transpose(gy, w, bt, backend="numpy", output_padding=opad, **kw)
    t = cf.conv_transpose(gy, w, bt, backend="cpp", algorithm="gemm-phase",
                          output_padding=opad, **kw)
    assert t_ref.shape == x.shape
    _close(t, t_ref, w.shape[0] // kw["groups"] * k ** rank, dt)


@pytest.mark.parametrize("act", ["relu", "leaky_relu", "sigmoid", "tanh"])
def test_fused_activation(act):
    """The epilogue in both copy-outs: dense rows (forward) and the interleaved phases
    (the forward of a transposed convolution)."""
    rng = np.random.default_rng(5)
    x, w, b, kw = _shapes(rng, 2, 6, 7, (13, 11), 3, 2, 1, 1, 1, np.float64)
    ref = cf.conv(x, w, b, backend="numpy", activation=act, **kw)
    got = cf.conv(x, w, b, backend="cpp", algorithm="gemm-phase", activation=act, **kw)
    np.testing.assert_allclose(got, ref, rtol=1e-11, atol=1e-11)
    xt = rng.standard_normal((2, 12, 7, 6))
    wt = rng.standard_normal((12, 9, 4, 4))
    bt = rng.standard_normal(9)
    kt = dict(stride=2, padding=1, activation=act)
    ref = cf.conv_transpose(xt, wt, bt, backend="numpy", **kt)
    got = cf.conv_transpose(xt, wt, bt, backend="cpp", algorithm="gemm-phase", **kt)
    np.testing.assert_allclose(got, ref, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("s,k,p", [(3, 1, 0), (4, 2, 0), (5, 3, 1)])
def test_phases_without_taps_hold_the_bias(s, k, p):
    """A stride wider than the kernel: some positions of grad_x (of the transposed
    convolution's output) are reached by no tap and hold the bias (activated) alone."""
    rng = np.random.default_rng(s)
    xt = rng.standard_normal((2, 9, 5, 4))
    wt = rng.standard_normal((9, 8, k, k))
    bt = rng.standard_normal(8)
    kt = dict(stride=s, padding=p, output_padding=s - 1)
    for act in (None, "sigmoid"):
        ref = cf.conv_transpose(xt, wt, bt, backend="numpy", activation=act, **kt)
        got = cf.conv_transpose(xt, wt, bt, backend="cpp", algorithm="gemm-phase",
                                activation=act, **kt)
        np.testing.assert_allclose(got, ref, rtol=1e-11, atol=1e-11)


def test_long_rows_cut_into_column_tiles():
    """1-d rows longer than a product tile (768 columns): the forward and the input
    gradient cut them into runs of columns; the weight gradient refuses them."""
    rng = np.random.default_rng(8)
    x, w, b, kw = _shapes(rng, 2, 5, 9, (1, 2501), 5, 2, 2, 1, 1, np.float64, rank=1)
    y_ref = cf.conv(x, w, b, backend="numpy", **kw)
    y = cf.conv(x, w, b, backend="cpp", algorithm="gemm-phase", **kw)
    np.testing.assert_allclose(y, y_ref, rtol=1e-11, atol=1e-11)
    gy = rng.standard_normal(y.shape)
    ref = cf.conv_backward(gy, x, w, needs=("x",), backend="numpy", **kw)[0]
    x8, w8, _, kw8 = _shapes(rng, 1, 9, 4, (1, 3001), 3, 1, 1, 1, 1, np.float64, rank=1)
    got = cf.conv_backward(gy, x, w, needs=("x",), backend="cpp", algorithm="gemm-phase",
                           **kw)[0]
    np.testing.assert_allclose(got, ref, rtol=1e-11, atol=1e-11)
    y8 = cf.conv(x8, w8, backend="numpy", **kw8)
    np.testing.assert_allclose(cf.conv(x8, w8, backend="cpp", algorithm="gemm-phase", **kw8),
                               y8, rtol=1e-11, atol=1e-11)
    with pytest.raises(NotImplementedError, match="gemm-phase"):
        cf.conv_backward(gy, x, w, needs=("weight",), backend="cpp", algorithm="gemm-phase",
                         **kw)


@pytest.mark.parametrize("dt", [np.float32, np.float64])
@pytest.mark.parametrize("geo", [
    (3, 16, 8, (16, 16), 4, 2, 1, 1, 1),   # the k4s2 transposed-convolution pattern
    (2, 3, 16, (45, 41), 7, 2, 3, 1, 1),   # a stem: 7x7 / 2
    (2, 8, 6, (19, 23), 3, 3, 1, 2, 2),
])
def test_same_bits_for_any_thread_count(geo, dt):
    rng = np.random.default_rng(11)
    x, w, b, kw = _shapes(rng, *geo, dt)
    gy = rng.standard_normal(cf.conv(x, w, backend="numpy", **kw).shape).astype(dt)
    before = cf.get_num_threads()
    runs = []
    try:
        for nt in (1, 2, 3):
            cf.set_num_threads(nt)
            y = cf.conv(x, w, b, backend="cpp", algorithm="gemm-phase", **kw)
            gx, gw, _ = cf.conv_backward(gy, x, w, needs=ALL, backend="cpp",
                                         algorithm="gemm-phase", **kw)
            runs.append(y.tobytes() + gx.tobytes() + gw.tobytes())
    finally:
        cf.set_num_threads(before)
    assert runs[0] == runs[1] == runs[2]


def test_inputs_not_modified():
    rng = np.random.default_rng(2)
    x, w, b, kw = _shapes(rng, 2, 8, 8, (10, 10), 3, 2, 1, 1, 1, np.float32)
    gy = rng.standard_normal(cf.conv(x, w, backend="numpy", **kw).shape).astype(np.float32)
    copies = [a.copy() for a in (x, w, b, gy)]
    cf.conv(x, w, b, backend="cpp", algorithm="gemm-phase", **kw)
    cf.conv_backward(gy, x, w, needs=ALL, backend="cpp", algorithm="gemm-phase", **kw)
    for a, c in zip((x, w, b, gy), copies):
        assert a.tobytes() == c.tobytes()


def test_forced_on_3d_raises():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((1, 2, 6, 6, 6))
    w = rng.standard_normal((3, 2, 2, 2, 2))
    with pytest.raises(NotImplementedError, match="gemm-phase needs a 1-d or 2-d"):
        cf.conv(x, w, stride=2, backend="cpp", algorithm="gemm-phase")


def test_auto_choice():
    rng = np.random.default_rng(9)
    # the k4s2 transposed convolution: all three kernels, explained and recorded
    x = rng.standard_normal((2, 16, 8, 8)).astype(np.float32)
    w = rng.standard_normal((16, 20, 4, 4)).astype(np.float32)  # 320 taps: not wgrad-short
    kt = dict(stride=2, padding=1)
    assert "gemm-phase" in cf.explain("conv_transpose", x, w, backend="cpp", **kt)
    y = cf.conv_transpose(x, w, backend="cpp", **kt)
    assert cpp.last_paths() == {"y": "gemm-phase"}
    cf.conv_transpose_backward(np.ones_like(y), x, w, needs=("x", "weight"), backend="cpp",
                               **kt)
    assert cpp.last_paths() == {"grad_x": "gemm-phase", "grad_weight": "gemm-phase"}
    # a strided stem: the forward; its input gradient (3 channels: a thin product per
    # phase) stays with gemm
    xs, ws, _, ks = _shapes(rng, 1, 3, 16, (32, 32), 7, 2, 3, 1, 1, np.float32)
    y = cf.conv(xs, ws, backend="cpp", **ks)
    assert cpp.last_paths() == {"y": "gemm-phase"}
    cf.conv_backward(np.ones_like(y), xs, ws, needs=("x",), backend="cpp", **ks)
    assert cpp.last_paths()["grad_x"] == "gemm"
    # the input gradient of a kernel narrower than twice the stride (phases of 1 tap)
    # stays with gemm; the forward and the weight gradient take gemm-phase
    x3, w3, _, k3 = _shapes(rng, 1, 32, 8, (12, 12), 3, 2, 1, 1, 1, np.float32)  # 288 taps
    y = cf.conv(x3, w3, backend="cpp", **k3)
    cf.conv_backward(y, x3, w3, needs=("x", "weight"), backend="cpp", **k3)
    assert cpp.last_paths() == {"grad_x": "gemm", "grad_weight": "gemm-phase"}
    # stride 1 keeps gemm-s1, except for padded rows longer than 768 (forward and input
    # gradient; the weight gradient of such rows stays with gemm)
    x1, w1, _, k1 = _shapes(rng, 1, 8, 8, (9, 9), 3, 1, 1, 1, 1, np.float32)
    cf.conv(x1, w1, backend="cpp", **k1)
    assert cpp.last_paths() == {"y": "gemm-s1"}
    for width, path in ((760, "gemm-s1"), (900, "gemm-phase")):
        x1, w1, _, k1 = _shapes(rng, 1, 8, 8, (1, width), 9, 1, 4, 1, 1, np.float32, rank=1)
        y = cf.conv(x1, w1, backend="cpp", **k1)
        assert cpp.last_paths() == {"y": path}
        cf.conv_backward(y, x1, w1, needs=("x", "weight"), backend="cpp", **k1)
        assert cpp.last_paths() == {"grad_x": path, "grad_weight": "gemm"}


@pytest.mark.parametrize("act", [None, "relu", "tanh"])
@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_stride1_input_gradient(act, dt):
    """Stride 1 (one phase) with a reduction of 32 or more: the input gradient in runs
    of one row (1-d rows longer than a tile) and in whole rows per tile, and the same
    kernel as a transposed convolution with a bias and a fused activation."""
    rng = np.random.default_rng(12)
    tol = dict(rtol=2e-4, atol=2e-4) if dt == np.float32 else dict(rtol=1e-11, atol=1e-11)
    for xs, ws, pad in (((2, 9, 3001), (12, 9, 5), 2), ((2, 6, 20, 30), (16, 6, 3, 3), 1)):
        x = rng.standard_normal(xs).astype(dt)
        w = rng.standard_normal(ws).astype(dt)
        y = cf.conv(x, w, backend="numpy", padding=pad)
        gy = rng.standard_normal(y.shape).astype(dt)
        ref = cf.conv_backward(gy, x, w, needs=("x",), backend="numpy", padding=pad)[0]
        got = cf.conv_backward(gy, x, w, needs=("x",), backend="cpp", padding=pad,
                               algorithm="gemm-phase")[0]
        assert cpp.last_paths()["grad_x"] == "gemm-phase"
        np.testing.assert_allclose(got, ref, **tol)
        # the transposed convolution of gy: the same kernel, with a bias and activation
        bt = rng.standard_normal(ws[1]).astype(dt)
        t_ref = cf.conv_transpose(gy, w, bt, padding=pad, activation=act, backend="numpy")
        t = cf.conv_transpose(gy, w, bt, padding=pad, activation=act, backend="cpp",
                              algorithm="gemm-phase")
        np.testing.assert_allclose(t, t_ref, **tol)
