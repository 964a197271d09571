"""The cpp backend's fused activation (``activation=``): the epilogue applied by every
conv path where it writes ``y`` (``csrc/common/activation.h``) and the backward's one
pass ``g = grad_y * act'(y)`` + bias gradient (``_cpp.act_grad``,
``csrc/conv/act_grad.h``); both SIMD tables (AVX2 and portable), float32 and float64.

Two comparisons per case:

* against the same path without an activation, followed by the reference
  ``cnnfast.activation`` (what the backend did before the fusion): this isolates the
  epilogue. relu and leaky_relu must give the same bits (the formulas are the
  reference's, in its order). float32 sigmoid and tanh are vectorised in the kernels
  (within 2 ulps of the exact values, tested on a sweep below) and numpy's own SIMD
  float32 exp and tanh are within 3; float64 calls libm as numpy does: a few ulps apart
  at most (``MAX_ULP``). The
  backward: relu and leaky_relu select or scale grad_y exactly, so the gradients have
  the bits of the unfused kernels on the reference's g; sigmoid's and tanh's products
  may be contracted into an FMA (one rounding less) in the AVX2 build, so g differs by
  ~1 ulp, and the gradients (sums of g) by ~1 ulp of the sum of |terms|: 1e-5 (float32)
  and 1e-13 (float64) of the largest |gradient|.
* against the numpy backend (the oracle): float64 1e-10 of the output's scale (only the
  summation order differs); float32 1e-4 of the scale as in tests/test_activation.py
  (Winograd's error is bounded by the largest sum of |terms|, tests/test_winograd.py;
  the activations are 1-Lipschitz, so they do not enlarge it).

Every test name holds "cpp" so that ``-k cpp`` selects them.
"""

from __future__ import annotations

import numpy as np
import pytest

import cnnfast
from cnnfast import activation
from cnnfast.registry import get_backend
from helpers.simd import ALL_PATHS, forced_path, runnable_simd_paths

_cpp = pytest.importorskip("cnnfast.backends.cpp._cpp", reason="C++ extension not built")
if get_backend("cpp").reason is not None:  # pragma: no cover - depends on the build
    pytest.skip(f"cpp backend unavailable: {get_backend('cpp').reason}",
                allow_module_level=True)
from cnnfast.backends.cpp import backend as cpp  # noqa: E402

ACTS = [("relu", 0.0), ("leaky_relu", 0.2), ("sigmoid", 0.0), ("tanh", 0.0)]
EXACT = ("relu", "leaky_relu")
MAX_ULP = 4
DTYPES = (np.float32, np.float64)
ALL = ("x", "weight", "bias")
# The forward paths (wgrad-short is a weight-gradient kernel only).
PATHS = ("direct-2d", "direct-rows", "gemm-s1", "gemm", "winograd", "gemm-phase")

# (name, transposed, x shape, w shape, keywords): between them every path above runs
# the forward kernel of conv (forward) and of conv_transpose (backward_data), with and
# without a bias, tiles within one image and across images (gemm's two copy-outs).
CASES = [
    ("2d-3x3", False, (2, 4, 9, 10), (8, 4, 3, 3), dict(padding=1)),
    ("2d-3x3-one-image-tiles", False, (2, 4, 16, 16), (8, 4, 3, 3), dict(padding=1)),
    ("2d-5x5-stride2", False, (3, 2, 11, 9), (4, 2, 5, 5), dict(stride=2, padding=2)),
    ("depthwise-3x3", False, (2, 4, 9, 11), (8, 1, 3, 3), dict(padding=1, groups=4)),
    ("depthwise-stride2", False, (2, 3, 10, 9), (3, 1, 5, 5), dict(stride=2, padding=1,
                                                                    groups=3)),
    ("1d", False, (2, 3, 17), (5, 3, 3), dict(padding=1)),
    ("3d-depthwise", False, (2, 2, 4, 5, 6), (4, 1, 2, 3, 3), dict(padding=1, groups=2)),
    ("t-2d-3x3", True, (2, 8, 7, 6), (8, 4, 3, 3), dict(padding=1)),
    ("t-2d-stride2", True, (2, 4, 5, 5), (4, 3, 3, 3), dict(stride=2, padding=1,
                                                            output_padding=1)),
    ("t-depthwise", True, (2, 4, 8, 9), (4, 1, 3, 3), dict(padding=1, groups=4)),
    ("t-1d", True, (2, 3, 9), (3, 2, 5), dict(stride=2)),
]


@pytest.fixture(params=ALL_PATHS)
def simd(request):
    """Each kernel table, through the test switch (helpers/simd.py says which run)."""
    with forced_path(request.param):
        yield request.param


def _inputs(case, dtype, seed=0):
    _, transposed, xs, ws, kw = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(xs).astype(dtype)
    w = (rng.standard_normal(ws) / np.sqrt(np.prod(ws[1:]))).astype(dtype)
    channels = ws[1] * kw.get("groups", 1) if transposed else ws[0]
    b = rng.standard_normal(channels).astype(dtype)
    return x, w, b


def _forward(case, x, w, b, **kw):
    _, transposed, _, _, geo = case
    fn = cnnfast.conv_transpose if transposed else cnnfast.conv
    return fn(x, w, b, **geo, **kw)


def _backward(case, gy, x, w, **kw):
    _, transposed, _, _, geo = case
    fn = cnnfast.conv_transpose_backward if transposed else cnnfast.conv_backward
    return fn(gy, x, w, **geo, needs=ALL, **kw)


def _reference_act(v, act, slope):
    return activation.apply(np.array(v), act, slope)


def _assert_ulp(got, want, max_ulp=MAX_ULP):
    """NaN where the reference has NaN, else within max_ulp units in the last place."""
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    ok = ~np.isnan(want)
    np.testing.assert_array_max_ulp(got[ok], want[ok], maxulp=max_ulp)


def _assert_bits(got, want):
    """The same bits, NaN for NaN (the sign of a NaN made from two NaNs of either sign
    follows the order of an addition's operands, which the compiler may swap)."""
    assert got.dtype == want.dtype and got.shape == want.shape
    nan = np.isnan(want)
    np.testing.assert_array_equal(np.isnan(got), nan)
    bits = np.uint32 if got.dtype == np.float32 else np.uint64
    np.testing.assert_array_equal(got[~nan].view(bits), want[~nan].view(bits))


def _assert_scaled(got, want, dtype, scale_of=None):
    scale = max(1.0, float(np.max(np.abs(scale_of if scale_of is not None else want))))
    tol = 1e-4 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(got, want, rtol=0, atol=tol * scale)


def _fits(case, path):
    """Whether the forced path can run this case's forward kernel."""
    x, w, _ = _inputs(case, np.float64)
    try:
        _forward(case, x, w, None, backend="cpp", algorithm=path)
    except NotImplementedError:
        return False
    return cpp.last_paths().get("y") == path


# --------------------------------------------------------------------------- forward


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_cpp_fused_forward_every_path_matches_unfused_and_reference(case, dtype, simd):
    x, w, b = _inputs(case, dtype)
    want = {(bias is None, act): _forward(
                case, x.astype(np.float64), w.astype(np.float64),
                None if bias is None else bias.astype(np.float64), backend="numpy",
                activation=act, negative_slope=slope)
            for bias in (b, None) for act, slope in ACTS}
    ran = 0
    for path in PATHS:
        for bias in (b, None):
            try:
                plain = _forward(case, x, w, bias, backend="cpp", algorithm=path)
            except NotImplementedError:
                break
            assert cpp.last_paths()["y"] == path
            ran += 1
            for act, slope in ACTS:
                got = _forward(case, x, w, bias, backend="cpp", algorithm=path,
                               activation=act, negative_slope=slope)
                assert cpp.last_paths()["y"] == path
                unfused = _reference_act(plain, act, slope)
                if act in EXACT:
                    _assert_bits(got, unfused)
                else:
                    _assert_ulp(got, unfused)
                _assert_scaled(got, want[bias is None, act], dtype)
    assert ran, "no path ran this case"


def test_cpp_every_forward_path_is_exercised():
    """The case list reaches every forward path, for conv and for conv_transpose
    (a guard against cases that silently stop fitting a path)."""
    for transposed in (False, True):
        for path in PATHS:
            cases = [c for c in CASES if c[1] == transposed]
            assert any(_fits(c, path) for c in cases), (transposed, path)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_cpp_fused_relu_is_bit_identical_to_conv_then_numpy_relu(dtype, simd):
    """conv + relu fused gives the very bits of conv followed by np.maximum(y, 0), on
    the automatic path of a seed-CNN layer (64 -> 64, 3x3, 13x13) and of a transposed
    convolution."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 64, 13, 13)).astype(dtype)
    w = (rng.standard_normal((64, 64, 3, 3)) / 24).astype(dtype)
    b = rng.standard_normal(64).astype(dtype)
    for fn in (cnnfast.conv2d, cnnfast.conv_transpose2d):
        for bias in (b, None):
            plain = fn(x, w, bias, padding=1, backend="cpp")
            fused = fn(x, w, bias, padding=1, backend="cpp", activation="relu")
            _assert_bits(fused, np.maximum(plain, 0))
            assert (fused == 0).any() and (fused > 0).any()


# The values a 1x1 identity convolution passes through unchanged: y = act(x) exactly.
def _special(dtype):
    big = 1e30 if dtype == np.float32 else 1e300
    v = [np.nan, -np.nan, np.inf, -np.inf, big, -big, 1e4, -1e4, 89.0, -89.0, 710.0,
         -710.0, 20.0, -20.0, 1e-3, -1e-3, 1e-30, -1e-30, 0.0, -0.0, 0.5, -0.5, 3.0, -3.0]
    return np.array(v, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("path", ["direct-rows", "gemm-s1", "gemm"])
@pytest.mark.parametrize("transposed", [False, True], ids=["conv", "conv_transpose"])
def test_cpp_fused_forward_special_values(dtype, path, transposed, simd):
    """NaN stays NaN, +-inf and huge values saturate sigmoid (to exactly 0 and 1, no
    overflow) and tanh (to +-1); relu and leaky_relu keep the bits of the reference
    (a 1x1 identity convolution, so y is act(x) of these very values -- but for -0.0,
    which the convolution's sum, started at +0, makes +0)."""
    v = _special(dtype)
    x = np.tile(v, 3).reshape(1, 1, 3, v.size)
    w = np.ones((1, 1, 1, 1), dtype)
    fn = cnnfast.conv_transpose2d if transposed else cnnfast.conv2d
    plain = fn(x, w, backend="cpp", algorithm=path)
    np.testing.assert_array_equal(plain, x)
    with np.errstate(all="ignore"):
        for act, slope in ACTS:
            got = fn(x, w, backend="cpp", algorithm=path, activation=act,
                     negative_slope=slope)
            want = _reference_act(plain, act, slope)
            if act in EXACT:
                _assert_bits(got, want)
            else:
                _assert_ulp(got, want)
                ok = ~np.isnan(got)
                assert np.all(np.abs(got[ok]) <= 1)
            if act == "sigmoid":
                assert np.all(got[np.isposinf(x) | (x >= 89)] == 1)
                assert np.all(got[np.isneginf(x) | (x <= -1e4)] == 0)
            if act == "tanh":
                assert np.all(got[x >= 20] == 1) and np.all(got[x <= -20] == -1)


def _ulp_distance(a, b):
    """Units in the last place between float32 arrays (ordered as integers)."""
    def ordered(v):
        i = v.view(np.int32).astype(np.int64)
        return np.where(i < 0, -(i & 0x7FFFFFFF), i)
    return np.abs(ordered(a) - ordered(b))


def test_cpp_float32_sigmoid_and_tanh_within_2_ulp_of_exact(simd):
    """The vectorised float32 sigmoid and tanh (Cephes' expf and tanhf) on a dense
    sweep through their whole range, the denormal tail of sigmoid included: within 2 ulps
    of the float64 values rounded to float32 (numpy's own SIMD float32 sigmoid is within 3)."""
    rng = np.random.default_rng(6)
    v = np.concatenate([rng.standard_normal(50_000) * s for s in (0.01, 0.3, 1, 3, 10, 40)]
                       + [np.linspace(-110, 110, 100_001), np.linspace(-1, 1, 50_001)])
    v = v.astype(np.float32)
    x = v.reshape(1, 1, 1, -1)
    w = np.ones((1, 1, 1, 1), np.float32)
    for act in ("sigmoid", "tanh"):
        got = cnnfast.conv2d(x, w, backend="cpp", algorithm="gemm", activation=act).ravel()
        exact = activation.apply(v.astype(np.float64), act, 0.0).astype(np.float32)
        assert _ulp_distance(got, exact).max() <= 2, act


# --------------------------------------------------------------------------- backward


def _unfused_backward(case, gy, x, w, y, act, slope, path):
    """The gradient kernels run on the reference's g (what the backend did before)."""
    g = activation.grad(gy, y, act, slope)
    return _backward(case, np.ascontiguousarray(g), x, w, backend="cpp", algorithm=path)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_cpp_fused_backward_matches_unfused_and_reference(case, dtype, simd):
    x, w, b = _inputs(case, dtype)
    rng = np.random.default_rng(2)
    # The gradient kernels are those of the unfused pass; every forced path once (on
    # the process's own table), the automatic one on each.
    own = simd == runnable_simd_paths()[-1]
    paths = ["auto"] + ([p for p in PATHS + ("wgrad-short",)] if own else [])
    for act, slope in ACTS:
        y = _forward(case, x, w, b, backend="cpp", activation=act, negative_slope=slope)
        gy = rng.standard_normal(y.shape).astype(dtype)
        want = _backward(case, gy.astype(np.float64), x.astype(np.float64),
                         w.astype(np.float64), backend="numpy", activation=act,
                         negative_slope=slope, y=y.astype(np.float64))
        for path in paths:
            try:
                got = _backward(case, gy, x, w, backend="cpp", algorithm=path,
                                activation=act, negative_slope=slope, y=y)
            except NotImplementedError:
                continue
            unfused = _unfused_backward(case, gy, x, w, y, act, slope, path)
            for name, a, u, r in zip(ALL, got, unfused, want):
                assert a.dtype == dtype, name
                if act in EXACT:
                    _assert_bits(a, u)
                else:
                    tol = 1e-5 if dtype == np.float32 else 1e-13
                    np.testing.assert_allclose(a, u, rtol=0,
                                               atol=tol * max(1.0, np.abs(u).max()))
                _assert_scaled(a, r, dtype)


def _assert_derivative_close(g, want, gy, y):
    """sigmoid's and tanh's g = gy * (y * (1 - y)) or gy * ((1 - y) * (1 + y)): the
    AVX2 build may contract a product and a sum into one FMA (one rounding less), so
    |g - want| <= 4 eps |gy| (1 + y*y) rather than the same bits; infinities and NaN
    exactly where the reference has them."""
    finite = np.isfinite(want)
    np.testing.assert_array_equal(np.isfinite(g), finite)
    np.testing.assert_array_equal(g[~finite], want[~finite])
    eps = np.finfo(g.dtype).eps
    bound = 4 * eps * np.abs(gy[finite]) * (1 + y[finite] * y[finite])
    assert np.all(np.abs(g[finite] - want[finite]) <= bound)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_cpp_act_grad_special_values_and_bias(dtype, simd, threads):
    """_cpp.act_grad on NaN / inf / saturated y: relu and leaky_relu take the "else"
    side for NaN and give the reference's bits; the bias gradient it makes in the same
    pass has bias_grad's bits on that g, for any thread count."""
    rng = np.random.default_rng(3)
    y = rng.standard_normal((3, 5, 7, 13)).astype(dtype)
    y.flat[:24] = _special(dtype)
    gy = rng.standard_normal(y.shape).astype(dtype)
    with np.errstate(all="ignore"):
        for act, slope in ACTS:
            want = activation.grad(gy, y, act, slope)
            results = []
            for nt in (1, 2, 3):
                g = np.empty_like(gy)
                gb = np.empty(5, dtype)
                _cpp.act_grad(gy, y, act, slope, g, gb, nt)
                results.append((g, gb))
            g, gb = results[0]
            for g2, gb2 in results[1:]:
                _assert_bits(g2, g)
                _assert_bits(gb2, gb)
            if act in EXACT:
                _assert_bits(g, want)
            else:
                _assert_derivative_close(g, want, gy, y)
            gb_sep = np.empty(5, dtype)
            _cpp.bias_grad(g, gb_sep, 1)
            _assert_bits(gb, gb_sep)
            g_only = np.empty_like(gy)
            _cpp.act_grad(gy, y, act, slope, g_only, None, 2)
            _assert_bits(g_only, g)


@pytest.mark.parametrize("transposed", [False, True], ids=["conv", "conv_transpose"])
def test_cpp_fused_backward_is_deterministic_across_thread_counts(transposed, threads):
    case = CASES[7] if transposed else CASES[1]
    x, w, b = _inputs(case, np.float32)
    y = _forward(case, x, w, b, backend="cpp", activation="tanh")
    gy = np.random.default_rng(4).standard_normal(y.shape).astype(np.float32)
    runs = []
    for nt in (1, 2, 3):
        threads(nt)
        runs.append(_backward(case, gy, x, w, backend="cpp", activation="tanh", y=y))
    for other in runs[1:]:
        for a, b2 in zip(runs[0], other):
            _assert_bits(b2, a)


def test_cpp_fused_backward_workspace_is_reused_and_never_stale():
    """g lives in a per-thread buffer kept between calls: a smaller call after a larger
    one reuses it (no new allocation) and reads none of the larger call's values."""
    big, small = CASES[1], CASES[0]
    for case in (big, small):
        x, w, b = _inputs(case, np.float64)
        y = _forward(case, x, w, b, backend="cpp", activation="sigmoid")
        gy = np.random.default_rng(5).standard_normal(y.shape)
        got = _backward(case, gy, x, w, backend="cpp", activation="sigmoid", y=y)
        if case is big:
            buf = cpp._work.float64
        want = _backward(case, gy, x, w, backend="numpy", activation="sigmoid", y=y)
        for a, r in zip(got, want):
            _assert_scaled(a, r, np.float64)
    assert cpp._work.float64 is buf


def test_cpp_explain_says_the_activation_is_fused():
    x = np.zeros((2, 4, 9, 9), np.float32)
    w = np.zeros((8, 4, 3, 3), np.float32)
    text = cnnfast.explain("conv2d", x, w, padding=1, backend="cpp", activation="relu")
    assert "epilogue: bias + relu fused" in text
    text = cnnfast.explain("conv_transpose2d", x, np.zeros((4, 8, 3, 3), np.float32),
                           padding=1, backend="cpp", activation="tanh")
    assert "epilogue: bias + tanh fused" in text
    assert "fused" not in cnnfast.explain("conv2d", x, w, padding=1, backend="cpp")


def test_cpp_act_grad_rejects_bad_arguments():
    gy = np.zeros((2, 3, 4), np.float32)
    with pytest.raises(ValueError, match="activation"):
        _cpp.act_grad(gy, gy, "gelu", 0.0, np.empty_like(gy), None, 1)
    with pytest.raises(ValueError, match="negative_slope"):
        _cpp.act_grad(gy, gy, "leaky_relu", -1.0, np.empty_like(gy), None, 1)
    with pytest.raises(ValueError, match="g must not"):
        _cpp.act_grad(gy, gy.copy(), "relu", 0.0, gy, None, 1)
    with pytest.raises(TypeError, match="dtype"):
        _cpp.act_grad(gy, gy.astype(np.float64), "relu", 0.0, np.empty_like(gy), None, 1)


def test_cpp_activation_runs_in_the_kernels_not_in_numpy(monkeypatch):
    """The cpp backend no longer calls the reference's numpy passes: with them made to
    fail, conv, conv_transpose and both backwards still run (and agree with them)."""
    def refuse(*args, **kwargs):
        raise AssertionError("the cpp backend called cnnfast.activation")
    for case in (CASES[0], CASES[7]):
        x, w, b = _inputs(case, np.float32)
        for act, slope in ACTS:
            with monkeypatch.context() as m:
                m.setattr(activation, "apply", refuse)
                m.setattr(activation, "grad", refuse)
                y = _forward(case, x, w, b, backend="cpp", activation=act,
                             negative_slope=slope)
                gy = np.ones_like(y)
                got = _backward(case, gy, x, w, backend="cpp", activation=act,
                                negative_slope=slope, y=y)
            want = _unfused_backward(case, gy, x, w, y, act, slope, "auto")
            for a, u in zip(got, want):
                np.testing.assert_allclose(a, u, rtol=1e-5, atol=1e-5 * np.abs(u).max())
