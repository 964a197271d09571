"""The CUDA backends' Winograd F(2x2, 3x3) path (``algorithm="winograd"``; see
``cnnfast/backends/cuda/kernels/winograd.cu`` and ``winograd_launch.py``), run on
``cuda-emu``: the very launch code and kernel source the cupy backend runs.

The accuracy contract is the CPU backends' (helpers/winograd_contract.py): with S =
max over the outputs of sum |terms|, float32 |got - exact| <= 1e-5 * S + 1e-4 *
|exact|, float64 |got - exact| <= 1e-12 * S, on random and adversarial data; then
grouped and transposed convolutions, the bias and fused activations, the workspace
chunks, split-K, what the path refuses, and a random differential run.
"""

from __future__ import annotations

import numpy as np
import pytest

import cnnfast

from helpers import winograd_contract as contract

emu = pytest.importorskip("cnnfast.backends.cuda.emu_backend")
if emu.availability() is not None:  # pragma: no cover - depends on the machine
    pytest.skip(f"cuda-emu unavailable: {emu.availability()}", allow_module_level=True)
from cnnfast.backends.cuda import conv_launch, winograd_launch  # noqa: E402

BACKEND = "cuda-emu"
DTYPES = [np.float32, np.float64]


def _check(x, w, gy, b, kw, dtype, what):
    return contract.check(x, w, gy, b, kw, dtype, what, BACKEND, "winograd",
                          last_paths=emu.last_paths)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("case", contract.ADVERSARIAL_2D, ids=contract.adversarial_id)
def test_winograd_accuracy_contract(case, dtype):
    for seed in range(3 if len(case) > 7 else 1):  # a few places for a huge value
        x, wt, gy, b, kw = contract.adversarial_case(case, seed)
        _check(x, wt, gy, b, kw, dtype, f"{case[0]} seed {seed}")


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("case", contract.GRID_2D, ids=contract.grid_id)
def test_winograd_matches_the_reference(case, dtype):
    _check(*contract.grid_case(case), dtype, str(case))


def _grouped_case(n, c, k, h, w, groups, pad, seed=7):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w))
    wt = rng.standard_normal((k, c // groups, 3, 3))
    b = rng.standard_normal(k)
    y = cnnfast.conv2d(x, wt, padding=pad, groups=groups, backend="numpy")
    return x, wt, rng.standard_normal(y.shape), b, dict(padding=pad, groups=groups)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("case", [(2, 6, 4, 7, 8, 2, 1), (1, 12, 9, 5, 5, 3, 0),
                                  (3, 8, 8, 9, 6, 8, 2)], ids=["g2", "g3", "depthwise"])
def test_winograd_grouped(case, dtype):
    # slice e of group g is GEMM group e * groups + g: the groups must not mix
    *shape, groups, pad = case
    _check(*_grouped_case(*shape, groups, pad), dtype, str(case))


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_winograd_transposed_convolutions(dtype):
    # conv_transpose's forward is the adjoint (taps reversed, padding 2 - p); its
    # backward the correlation and the weight gradient with the roles swapped
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 12, 9, 10)).astype(dtype)
    w = rng.standard_normal((12, 5, 3, 3)).astype(dtype)
    b = rng.standard_normal(10).astype(dtype)
    kw = dict(padding=1, groups=2)
    y = cnnfast.conv_transpose2d(x, w, b, backend=BACKEND, algorithm="winograd", **kw)
    assert emu.last_paths() == {"y": "winograd"}
    f64 = [v.astype(np.float64) for v in (x, w, b)]
    ref = cnnfast.conv_transpose2d(*f64, backend="numpy", **kw)
    S = cnnfast.conv_transpose2d(*(np.abs(v) for v in f64[:2]), backend="numpy", **kw).max()
    a, r = contract.BOUNDS[dtype]
    assert np.all(np.abs(y - ref) <= a * S + r * np.abs(ref))
    gy = rng.standard_normal(y.shape).astype(dtype)
    got = cnnfast.conv_transpose_backward(gy, x, w, needs=("x", "weight"), backend=BACKEND,
                                          algorithm="winograd", **kw)
    assert emu.last_paths() == {"grad_x": "winograd", "grad_weight": "winograd"}
    g64 = [v.astype(np.float64) for v in (gy, x, w)]
    want = cnnfast.conv_transpose_backward(*g64, needs=("x", "weight"), backend="numpy", **kw)
    Sb = cnnfast.conv_transpose_backward(*(np.abs(v) for v in g64), needs=("x", "weight"),
                                         backend="numpy", **kw)
    for g, e, s in zip(got[:2], want[:2], Sb[:2]):
        assert g.dtype == dtype
        assert np.all(np.abs(g - e) <= a * s.max() + r * np.abs(e))


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("act", ["relu", "leaky_relu", "sigmoid", "tanh"])
def test_winograd_bias_and_fused_activation(act, dtype):
    # the output transform's epilogue: act(sum + bias), bounded as in the numba test;
    # the backward reads grad_y * act'(y) and sums grad_bias as the other paths do
    rng = np.random.default_rng(13)
    x = (rng.standard_normal((3, 20, 11, 9)) * 3).astype(dtype)
    w = rng.standard_normal((18, 20, 3, 3)).astype(dtype)
    b = rng.standard_normal(18).astype(dtype)
    slope = 0.3 if act == "leaky_relu" else 0.01
    kw = dict(padding=1, activation=act, negative_slope=slope)
    y = cnnfast.conv2d(x, w, b, backend=BACKEND, algorithm="winograd", **kw)
    assert emu.last_paths() == {"y": "winograd"}
    f64 = [v.astype(np.float64) for v in (x, w, b)]
    ref = cnnfast.conv2d(*f64, backend="numpy", **kw)
    S = cnnfast.conv2d(*(np.abs(v) for v in f64), padding=1, backend="numpy").max()
    pre = cnnfast.conv2d(*f64, padding=1, backend="numpy")
    a, r = contract.BOUNDS[dtype]
    eps = np.finfo(dtype).eps
    assert np.all(np.abs(y - ref) <= (a * S + r * np.abs(pre)) + 4 * eps * np.abs(ref))
    gy = rng.standard_normal(y.shape).astype(dtype)
    got = cnnfast.conv_backward(gy, x, w, needs=("x", "weight", "bias"), y=y,
                                backend=BACKEND, algorithm="winograd", **kw)
    gemm = cnnfast.conv_backward(gy, x, w, needs=("x", "weight", "bias"), y=y,
                                 backend=BACKEND, algorithm="gemm", **kw)
    np.testing.assert_array_equal(got[2], gemm[2])  # grad_bias: the same pass
    g = cnnfast.conv_backward(gy, x, w, needs=("x",), y=y, backend="numpy", **kw)[0]
    scale = np.abs(gemm[0]).max()
    assert np.abs(got[0] - g).max() <= 1e-4 * scale  # both round differently from g


def test_winograd_workspace_chunks_and_split_k(monkeypatch):
    # one image per chunk (the weight gradient then adds the chunks' slices in order),
    # and the slice GEMM split over its reduction: the contract still holds, and each
    # setting is deterministic
    x, wt, gy, b, kw = contract.grid_case((5, 7, 6, 9, 8, 1))
    plain = _check(x, wt, gy, b, kw, np.float32, "one chunk")
    monkeypatch.setattr(winograd_launch, "WORKSPACE_BYTES", 1)
    assert len(winograd_launch._chunks(5, 100, 10 ** 6)) == 5
    chunked = _check(x, wt, gy, b, kw, np.float32, "a chunk per image")
    for splits in (2, 3):
        with conv_launch.override(splits=splits):
            _check(x, wt, gy, b, kw, np.float32, f"{splits} split-K slices")
            runs = [contract.ops(*(a.astype(np.float32) for a in (x, wt, gy, b)), kw,
                                 BACKEND, "winograd") for _ in range(2)]
        for k in runs[0]:
            np.testing.assert_array_equal(runs[0][k], runs[1][k])
    assert set(plain) == set(chunked)


@pytest.mark.parametrize("shape", [(0, 3, 4, 5, 5), (2, 0, 4, 5, 5), (2, 3, 0, 5, 5)],
                         ids=["no-images", "no-input-channels", "no-output-channels"])
def test_winograd_empty_dims(shape):
    n, c, k, h, w = shape
    rng = np.random.default_rng(1)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    wt = rng.standard_normal((k, c, 3, 3)).astype(np.float32)
    b = rng.standard_normal(k).astype(np.float32)
    y = cnnfast.conv2d(x, wt, b, padding=1, backend=BACKEND, algorithm="winograd")
    np.testing.assert_allclose(y, cnnfast.conv2d(x, wt, b, padding=1, backend="numpy"),
                               atol=1e-5)
    gy = np.ones_like(y)
    got = cnnfast.conv_backward(gy, x, wt, padding=1, needs=("x", "weight"), backend=BACKEND,
                                algorithm="winograd")
    want = cnnfast.conv_backward(gy, x, wt, padding=1, needs=("x", "weight"), backend="numpy")
    for g, e in zip(got[:2], want[:2]):
        np.testing.assert_allclose(g, e, atol=1e-4)


@pytest.mark.parametrize("x_shape,w_shape,kw,why", [
    ((1, 2, 8, 8), (3, 2, 3, 3), dict(stride=2), "stride 1"),
    ((1, 2, 8, 8), (3, 2, 3, 3), dict(dilation=2), "dilation 1"),
    ((1, 2, 8, 8), (3, 2, 5, 5), {}, "3x3"),
    ((1, 2, 8), (3, 2, 3), {}, "2-d"),
    ((1, 2, 4, 8, 8), (3, 2, 3, 3, 3), {}, "2-d"),
], ids=["stride", "dilation", "5x5", "1-d", "3-d"])
def test_winograd_refuses_what_it_cannot_run(x_shape, w_shape, kw, why):
    x = np.ones(x_shape, np.float32)
    w = np.ones(w_shape, np.float32)
    with pytest.raises(NotImplementedError, match=f"winograd.*{why}"):
        cnnfast.conv(x, w, backend=BACKEND, algorithm="winograd", **kw)
    assert emu.last_paths() == {}  # refused before any kernel
    with pytest.raises(NotImplementedError, match="winograd"):
        cnnfast.explain("conv", x, w, backend=BACKEND, algorithm="winograd", **kw)


def test_winograd_refuses_float16_and_is_never_the_automatic_choice():
    x = np.ones((1, 4, 8, 8), np.float16)
    w = np.ones((4, 4, 3, 3), np.float16)
    with pytest.raises(NotImplementedError, match="float32 and float64 only"):
        cnnfast.conv2d(x, w, padding=1, backend=BACKEND, algorithm="winograd")
    x, w = x.astype(np.float32), w.astype(np.float32)
    assert "winograd" in emu.ALGORITHMS
    assert cnnfast.explain("conv", x, w, padding=1, backend=BACKEND) == \
        f"{BACKEND}: gemm; why: one group"
    text = cnnfast.explain("conv_backward", np.ones((1, 4, 8, 8), np.float32), x, w,
                           padding=1, backend=BACKEND, algorithm="winograd")
    assert text.count("winograd; why: forced: F(2x2, 3x3)") == 2, text


def test_winograd_random_differential():
    # random 2-d 3x3 stride-1 problems (batch, channels, groups, sizes, asymmetric
    # and large padding, bias, split-K), both dtypes, against the contract
    seed = 20261208
    rng = np.random.default_rng(seed)
    for i in range(40):
        groups = int(rng.choice([1, 1, 2, 3]))
        c, k = (groups * int(rng.integers(1, 7)) for _ in range(2))
        n, h, w = int(rng.integers(1, 4)), int(rng.integers(1, 14)), int(rng.integers(1, 14))
        pad = tuple((int(rng.integers(0, 4)), int(rng.integers(0, 4))) for _ in range(2))
        try:
            x, wt, gy, b, kw = _grouped_case(n, c, k, h, w, groups, pad, seed=[seed, i])
        except ValueError:  # padding too small for the image: no output
            continue
        if rng.random() < 0.5:
            b = None
        dtype = DTYPES[int(rng.integers(2))]
        splits = int(rng.choice([0, 2, 4])) or None
        with conv_launch.override(splits=splits):
            _check(x, wt, gy, b, kw, dtype, f"seed {seed} case {i}: {x.shape} {wt.shape} "
                                            f"{kw} splits {splits}")
