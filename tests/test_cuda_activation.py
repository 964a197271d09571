"""The activation fused into the CUDA kernels (cnnfast/backends/cuda/kernels/conv.cu):
the forward applies it at the final store of y (conv_gemm, conv_direct, or sum_splits
after a split reduction), the backward runs one act_grad pass over (grad_y, y) that
writes g = grad_y * act'(y) and its per-channel sums (grad_bias).

Every path forced with ``algorithm=`` x every activation x float16/32/64, conv and
conv_transpose, forward and backward, against the numpy reference (cnnfast.activation
applied unfused) in float64; split reductions; NaN, infinities and huge values; that
the unfused fallback is not called; ``explain``. On ``cuda-emu`` (the kernels on the
CPU) and on ``cupy`` when CuPy and a GPU are there (skipped otherwise).

Tolerances, of the output's scale (max(1, |expected|)): float64 1e-9 and float32 1e-4 as
the shared grid (tests/test_backend_grid.py); float16 2e-3 as tests/test_cuda_emu.py (a
float32 accumulation, then half roundings of y and of g). The extreme-value checks use a
1x1 convolution by 1, where y is the activation of x itself: rtol a few ulps of the
dtype (the kernels' exp and tanh against numpy's; see ``_ulps``).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import cnnfast
from cnnfast import activation
from cnnfast.backends.cuda import conv_launch
from cnnfast.backends.cuda import cupy_backend, emu_backend

ACTS = [("relu", 0.0), ("leaky_relu", 0.2), ("sigmoid", 0.0), ("tanh", 0.0)]
DTYPES = [np.float16, np.float32, np.float64]
NEEDS = ("x", "weight", "bias")


class Device:
    """A CUDA backend with its array conversions."""

    def __init__(self, name, to_device, to_host):
        self.name, self.to_device, self.to_host = name, to_device, to_host

    def put(self, *arrays):
        return [None if a is None else self.to_device(a) for a in arrays]

    def get(self, *arrays):
        return [None if a is None else self.to_host(a) for a in arrays]


def _devices():
    params = [pytest.param("cuda-emu", marks=pytest.mark.skipif(
        emu_backend.availability() is not None,
        reason=f"cuda-emu unavailable: {emu_backend.availability()}"))]
    reason = cupy_backend.availability()
    params.append(pytest.param("cupy", marks=pytest.mark.skipif(
        reason is not None, reason=f"cupy backend unavailable: {reason}")))
    return params


@pytest.fixture(params=_devices())
def dev(request):
    if request.param == "cupy":
        import cupy

        return Device("cupy", cupy.asarray, cupy.asnumpy)
    return Device("cuda-emu", np.asarray, np.asarray)


# The paths that run every case (the others' activation: tests/test_cuda_winograd.py,
# tests/test_cuda_depthwise_tiled.py).
GENERAL_PATHS = conv_launch.GENERAL_PATHS


def _close(got, expected, dtype, what):
    assert got.dtype == dtype, f"{what}: dtype {got.dtype}"
    assert got.shape == expected.shape, f"{what}: shape {got.shape} != {expected.shape}"
    tol = {np.float16: 2e-3, np.float32: 1e-4, np.float64: 1e-9}[dtype]
    scale = max(1.0, float(np.max(np.abs(expected))))
    np.testing.assert_allclose(got.astype(np.float64), expected, rtol=tol, atol=tol * scale,
                               err_msg=what)


def _case(transposed, dtype, seed=0):
    """(x, w, b, geometry kwargs): strided, padded, dilated, two groups; 3x3 kernels for
    conv (conv_direct's unrolled 3x3 instantiation on the direct path), 3x2 for
    conv_transpose (its generic one)."""
    rng = np.random.default_rng(seed)
    # conv_transpose: 12 input channels, so that each stride phase's reduction (6
    # channels x 2 or 4 taps) is long enough to split into three.
    x = rng.standard_normal((2, 12 if transposed else 4, 6, 5)).astype(dtype)
    if transposed:
        w = (rng.standard_normal((12, 3, 3, 2)) / 4).astype(dtype)
        kw = dict(stride=(2, 1), padding=1, output_padding=(1, 0), groups=2)
        c_out = 6
    else:
        w = (rng.standard_normal((6, 2, 3, 3)) / 2).astype(dtype)
        kw = dict(stride=(2, 1), padding=((1, 0), (1, 1)), dilation=(1, 2), groups=2)
        c_out = 6
    b = rng.standard_normal(c_out).astype(dtype)
    return x, w, b, kw


def _ops(transposed):
    if transposed:
        return cnnfast.conv_transpose, cnnfast.conv_transpose_backward
    return cnnfast.conv, cnnfast.conv_backward


def _run(dev, transposed, x, w, b, kw, act, slope, gy_seed=1, **call):
    """(y, grad_y, (grad_x, grad_weight, grad_bias)) of the fused op on ``dev`` (host
    arrays), grad_y random."""
    fwd, bwd = _ops(transposed)
    xd, wd, bd = dev.put(x, w, b)
    y = fwd(xd, wd, bd, backend=dev.name, activation=act, negative_slope=slope, **kw, **call)
    gy = np.random.default_rng(gy_seed).standard_normal(y.shape).astype(x.dtype)
    (gyd,) = dev.put(gy)
    grads = bwd(gyd, xd, wd, needs=NEEDS, backend=dev.name, activation=act,
                negative_slope=slope, y=y, **kw, **call)
    return dev.get(y)[0], gy, dev.get(*grads)


def _reference(transposed, x, w, b, kw, act, slope, y, gy):
    """The numpy backend in float64 (cnnfast.activation unfused); the backward reads the
    derivative from the device's own y, as a layer would."""
    fwd, bwd = _ops(transposed)
    f64 = [a.astype(np.float64) for a in (x, w, b, y, gy)]
    y_ref = fwd(*f64[:3], backend="numpy", activation=act, negative_slope=slope, **kw)
    grads = bwd(f64[4], f64[0], f64[1], needs=NEEDS, backend="numpy", activation=act,
                negative_slope=slope, y=f64[3], **kw)
    return y_ref, grads


def _check(dev, transposed, dtype, act, slope, **call):
    x, w, b, kw = _case(transposed, dtype)
    y, gy, grads = _run(dev, transposed, x, w, b, kw, act, slope, **call)
    y_ref, grads_ref = _reference(transposed, x, w, b, kw, act, slope, y, gy)
    _close(y, y_ref, dtype, f"{act} y")
    for name, got, exp in zip(NEEDS, grads, grads_ref):
        _close(got, exp, dtype, f"{act} grad_{name}")
    return y, grads


# ----------------------------------------------------------------------------- the grid


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("act,slope", ACTS, ids=[a for a, _ in ACTS])
@pytest.mark.parametrize("algorithm", GENERAL_PATHS)
@pytest.mark.parametrize("transposed", [False, True], ids=["conv", "conv_transpose"])
def test_every_path_activation_and_dtype(dev, transposed, algorithm, act, slope, dtype):
    _check(dev, transposed, dtype, act, slope, algorithm=algorithm)
    # Every kernel of the call ran the forced path.
    module = emu_backend if dev.name == "cuda-emu" else cupy_backend
    assert set(module.last_paths().values()) == {algorithm}


@pytest.mark.parametrize("act,slope", ACTS, ids=[a for a, _ in ACTS])
@pytest.mark.parametrize("transposed", [False, True], ids=["conv", "conv_transpose"])
def test_split_reductions_apply_it_once_and_stay_deterministic(dev, transposed, act, slope):
    """Three slices everywhere: the forward GEMM's split-K (the activation goes with
    sum_splits, after the slices are added) and act_grad's (n, position) slices, whose
    channel sums are added in slice order: repeated calls agree bit for bit."""
    with conv_launch.override(splits=3):
        y, grads = _check(dev, transposed, np.float32, act, slope, algorithm="gemm")
        x, w, b, kw = _case(transposed, np.float32)
        y2, _, grads2 = _run(dev, transposed, x, w, b, kw, act, slope, algorithm="gemm")
    assert y.tobytes() == y2.tobytes()
    for a, b2 in zip(grads, grads2):
        assert a.tobytes() == b2.tobytes()


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_automatic_paths_and_a_larger_gemm(dev, dtype):
    """The automatic choice, with M, NC and K spanning several tiles (ragged edges):
    the activation of the tile pass covers rows and columns that are not stored."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 20, 11, 10)).astype(dtype)
    w = (rng.standard_normal((70, 20, 3, 3)) / 8).astype(dtype)
    b = rng.standard_normal(70).astype(dtype)
    kw = dict(padding=1)
    for act, slope in ACTS:
        y, gy, grads = _run(dev, False, x, w, b, kw, act, slope)
        y_ref, grads_ref = _reference(False, x, w, b, kw, act, slope, y, gy)
        _close(y, y_ref, dtype, f"{act} y")
        for name, got, exp in zip(NEEDS, grads, grads_ref):
            _close(got, exp, dtype, f"{act} grad_{name}")


# ----------------------------------------------------------------------------- extreme values


def _extremes(dtype):
    big = float(np.finfo(dtype).max)
    v = [np.nan, np.inf, -np.inf, big, -big, 0.0, -0.0, 1.0, -1.0, 0.5, -2.5, 11.0, -11.0,
         20.0, -20.0, 1e-3, -1e-3]
    if dtype != np.float16:
        v += [88.0, -88.0, 100.0, -100.0, 1e30, -1e30, 1e-30, -1e-30]
    if dtype == np.float64:
        v += [710.0, -710.0, 800.0, -800.0, 1e300, -1e300]
    return np.asarray(v, dtype)


def _ulps(dtype):
    """A few ulps of ``dtype`` (the GPU's expf and tanhf are within 2), absolute below
    its smallest normal (a subnormal result, e.g. sigmoid(-100) in float32, has few
    significant bits)."""
    info = np.finfo(dtype)
    return dict(rtol=8 * float(info.eps), atol=float(info.tiny))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("act,slope", ACTS, ids=[a for a, _ in ACTS])
@pytest.mark.parametrize("algorithm", GENERAL_PATHS)
def test_nan_inf_and_huge_values_forward(dev, algorithm, act, slope, dtype):
    """A 1x1 convolution by 1 without bias: y = act(x) exactly as the kernels compute
    it. NaN stays NaN; sigmoid never overflows (0 and 1 at the ends, no NaN from
    inf/inf); tanh saturates at +-1; relu and leaky_relu keep the infinities' signs."""
    v = _extremes(dtype)
    x = v.reshape(1, 1, -1)
    w = np.ones((1, 1, 1), dtype)
    (y,) = dev.get(cnnfast.conv(*dev.put(x, w), backend=dev.name, algorithm=algorithm,
                                activation=act, negative_slope=slope))
    # The reference computes in float32 for float16, as the kernels do, then rounds.
    acc = np.float32 if dtype == np.float16 else dtype
    with np.errstate(over="ignore", invalid="ignore"):
        expected = activation.apply(v.astype(acc), act, slope).astype(dtype)
    y = y.ravel()
    assert y.dtype == dtype
    np.testing.assert_array_equal(np.isnan(y), np.isnan(v), err_msg="NaN where x is NaN only")
    np.testing.assert_allclose(y, expected, **_ulps(dtype), err_msg=act)
    if act == "sigmoid":
        assert (y[np.isposinf(v)] == 1).all() and (y[np.isneginf(v)] == 0).all()
    if act == "tanh":
        assert (y[np.isposinf(v)] == 1).all() and (y[np.isneginf(v)] == -1).all()
    if act == "relu":
        assert (y[v < 0] == 0).all() and np.isposinf(y[np.isposinf(v)]).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("act,slope", ACTS, ids=[a for a, _ in ACTS])
@pytest.mark.parametrize("algorithm", GENERAL_PATHS)
def test_nan_inf_and_huge_values_backward(dev, algorithm, act, slope, dtype):
    """Through a 1x1 convolution by 1, grad_x is g = grad_y * act'(y) itself: relu's
    and leaky_relu's derivative is a choice, not a product (an infinite grad_y where
    y <= 0 gives 0 for relu, no NaN), NaN in y takes the left side; grad_bias is the
    sum of g (infinities and NaN propagate as in the reference)."""
    v = _extremes(dtype)
    n = v.size
    # Every (grad_y, y) pair of the extremes and a few ordinary values.
    gy = np.repeat(v, n).reshape(1, 1, n * n)
    y = np.tile(v, n).reshape(1, 1, n * n)
    if act == "sigmoid":  # sigmoid's outputs lie in [0, 1] (or NaN)
        y = np.where(np.isnan(y), y, np.clip(np.abs(y), 0, 1)).astype(dtype)
    if act == "tanh":
        y = np.where(np.isnan(y), y, np.clip(y, -1, 1)).astype(dtype)
    x = np.ones((1, 1, n * n), dtype)
    w = np.ones((1, 1, 1), dtype)
    gx, _, gb = dev.get(*cnnfast.conv_backward(
        *dev.put(gy, x, w), needs=("x", "bias"), backend=dev.name, algorithm=algorithm,
        activation=act, negative_slope=slope, y=dev.put(y)[0]))
    acc = np.float32 if dtype == np.float16 else dtype
    with np.errstate(over="ignore", invalid="ignore"):
        g = activation.grad(gy.astype(acc), y.astype(acc), act, slope).astype(dtype)
        gb_ref = g.astype(np.float64).sum(axis=(0, 2))
    np.testing.assert_array_equal(np.isnan(gx), np.isnan(g))
    np.testing.assert_allclose(gx, g, **_ulps(dtype), err_msg=act)
    if act in ("relu", "leaky_relu"):
        # A NaN g comes from a NaN grad_y only (or, for leaky_relu, NaN * slope).
        assert not np.isnan(gx[~np.isnan(gy)]).any()
    assert gb.shape == (1,) and np.isnan(gb[0]) == np.isnan(gb_ref[0])


# ----------------------------------------------------------------------------- fused, explained


def test_the_unfused_fallback_is_not_called(dev, monkeypatch):
    """conv_launch applies the activation in its kernels: cnnfast.activation's numpy
    functions (the other backends' fallback) are never reached."""
    def refuse(*args, **kwargs):
        raise AssertionError("cnnfast.activation called: the activation is not fused")

    monkeypatch.setattr(activation, "apply", refuse)
    monkeypatch.setattr(activation, "grad", refuse)
    for transposed in (False, True):
        x, w, b, kw = _case(transposed, np.float32)
        fwd, bwd = _ops(transposed)
        xd, wd, bd = dev.put(x, w, b)
        y = fwd(xd, wd, bd, backend=dev.name, activation="tanh", **kw)
        bwd(y, xd, wd, backend=dev.name, activation="tanh", y=y, **kw)


EMU_ONLY = pytest.mark.skipif(emu_backend.availability() is not None,
                              reason=f"cuda-emu unavailable: {emu_backend.availability()}")


@EMU_ONLY
def test_explain_names_the_fused_epilogue():
    """The text keeps its "result path; why: ..." pairs (tests/test_cuda_paths.py reads
    them) and ends with where the activation is fused."""
    x, w, b, kw = _case(False, np.float32)
    plain = cnnfast.explain("conv", x, w, b, backend="cuda-emu", **kw)
    fused = cnnfast.explain("conv", x, w, b, backend="cuda-emu", activation="relu", **kw)
    assert "Fused" not in plain
    assert fused.startswith(plain + ". Fused: relu in the final store of y, after the bias")
    gy = np.ones(cnnfast.conv(x, w, b, backend="numpy", **kw).shape, np.float32)
    text = cnnfast.explain("conv_backward", gy, x, w, backend="cuda-emu", activation="sigmoid",
                           y=gy, **kw)
    assert ". Fused: sigmoid's derivative, read from y, in one pass" in text
    assert "grad_bias" in text


@EMU_ONLY
def test_backend_call_without_y_is_refused():
    """The API requires y= with an activation; the launcher says so too when called
    directly (no silent unfused or underived gradient)."""
    from cnnfast import params as P

    x, w, b, kw = _case(False, np.float64)
    p = P.with_activation(P.conv_params(x.shape, w.shape, kw["stride"], kw["padding"],
                                        kw["dilation"], kw["groups"]), "relu", 0.0)
    gy = np.ones((2, 6) + p.out_shape)
    with pytest.raises(ValueError, match="needs y="):
        emu_backend.OPS["conv_backward"](gy, x, w, p, frozenset(NEEDS), None)


@pytest.mark.slow
def test_conv_kernels_compile_with_nvcc(tmp_path):
    """conv.cu as the cupy backend compiles it (headers inlined, its options, every
    name expression instantiated), through nvcc to PTX for sm_80: a compile check on
    machines without the NVRTC pip packages that tests/test_cuda_nvrtc.py needs."""
    import shutil
    import subprocess

    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc is not on PATH")
    names = conv_launch.name_expressions("conv.cu")
    table = "\n".join(f"    (void*)&{n}," for n in names)
    src = tmp_path / "conv_check.cu"
    src.write_text(conv_launch.source_text("conv.cu") +
                   f"\nvoid* cnnfast_every_kernel[] = {{\n{table}\n}};\n")
    out = tmp_path / "conv_check.ptx"
    # the sanitizer jobs preload ASan into Python: nvcc must not inherit it (it crashes)
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    proc = subprocess.run([nvcc, *conv_launch.NVRTC_OPTIONS, "-arch=sm_80", "-ptx", str(src),
                           "-o", str(out)], capture_output=True, text=True, timeout=600,
                          env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ptx = out.read_text()
    assert ptx.count(".entry ") == len(names)
    assert "act_grad" in ptx
