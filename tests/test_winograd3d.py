"""The cpp backend's Winograd path on 3-d convolutions (``algorithm="winograd"``; see
``csrc/conv/winograd3d.h``): a KD x 3 x 3 kernel, stride 1 and dilation 1 in every dim,
one group, any padding -- forward, input gradient and weight gradient, float32 and
float64.

Winograd F(4x4, 3x3) on (H, W) with a direct sum over the depth taps: the products
reduce over KD * C (depth tap, channel) pairs. The accuracy contract is that of the 2-d
path (tests/test_winograd.py): with S = the largest sum of |terms| of any output of the
call (the float64 reference applied to |inputs|),

* float32: |got - exact| <= 1e-5 * S + 1e-4 * |exact| for every output;
* float64: |got - exact| <= 1e-12 * S,

on random data and adversarial data: a wide dynamic range, large channel counts at small
spatial sizes, constant-sign data and one huge value among small ones (in x, in the
weight or in gy). The 2-d path's limit holds here too: two huge values, one in each
operand of a product, at positions that never meet in an exact term break the S bound.

Every test name holds "cpp" so that ``-k cpp`` (the sanitizer job) selects them.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest

import cnnfast
from cnnfast.registry import get_backend

from helpers import winograd_contract as contract

_cpp = pytest.importorskip("cnnfast.backends.cpp._cpp", reason="C++ extension not built")
if get_backend("cpp").reason is not None:  # pragma: no cover - depends on the build
    pytest.skip(f"cpp backend unavailable: {get_backend('cpp').reason}",
                allow_module_level=True)
from cnnfast.backends.cpp import backend as cpp  # noqa: E402

def _check(x, w, gy, b, kw, dtype, what):
    return contract.check(x, w, gy, b, kw, dtype, what, "cpp", last_paths=cpp.last_paths)


def _out_shape(n, k, dhw, kd, pad):
    return (n, k, dhw[0] + 2 * pad - kd + 1, dhw[1] + 2 * pad - 2, dhw[2] + 2 * pad - 2)


# (kind, N, C, K, (D, H, W), padding[, the array with the huge value])
ADVERSARIAL = [
    ("normal", 2, 16, 16, (5, 15, 15), 1),
    ("wide-range", 1, 48, 32, (4, 14, 14), 1),
    ("deep", 1, 256, 256, (3, 6, 6), 1),
    ("deep", 1, 128, 192, (2, 5, 7), 1),
    ("constant-sign", 1, 64, 48, (4, 13, 13), 1),
    ("one-huge", 2, 16, 16, (4, 11, 12), 1, "x"),
    ("one-huge", 2, 16, 16, (4, 11, 12), 1, "w"),
    ("one-huge", 2, 16, 16, (4, 11, 12), 1, "gy"),
    ("one-huge", 1, 64, 64, (3, 9, 9), 2, "x"),
    ("one-huge", 1, 64, 64, (3, 9, 9), 2, "w"),
    ("one-huge", 1, 64, 64, (3, 9, 9), 2, "gy"),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", ADVERSARIAL,
                         ids=lambda c: "-".join(map(str, (c[0], *c[6:], f"C{c[2]}", f"K{c[3]}"))))
def test_cpp_winograd3d_accuracy_contract(case, dtype):
    kind, n, c, k, dhw, pad = case[:6]
    huge = case[6] if len(case) > 6 else None
    for seed in range(3 if huge else 1):  # a few places for the huge value
        rng = np.random.default_rng([zlib.crc32(repr(case).encode()), seed])
        x = contract.values(rng, kind, (n, c, *dhw), huge == "x")
        wt = contract.values(rng, kind, (k, c, 3, 3, 3), huge == "w")
        gy = contract.values(rng, kind, _out_shape(n, k, dhw, 3, pad), huge == "gy")
        b = contract.values(rng, kind, (k,))
        _check(x, wt, gy, b, dict(padding=pad), dtype, f"{kind} seed {seed}")


# (N, C, K, (D, H, W), KD, padding): sizes not multiples of 4, depth 1 with padding (the
# output slices whose taps all fall in the padding hold the bias), depth taps 1, 2, 3
# and 5, asymmetric and large padding (the input gradient's padding k - 1 - p is then
# negative), one channel in or out, more output slices than V slots (the window moved
# to the front), several tile blocks per plane.
GRID = [
    (1, 1, 1, (1, 1, 1), 1, 1),
    (2, 3, 2, (1, 2, 2), 3, 1),
    (1, 2, 3, (3, 4, 4), 1, 2),
    (2, 4, 6, (4, 5, 7), 2, 1),
    (1, 5, 7, (7, 8, 6), 3, ((1, 0), (0, 2), (2, 1))),
    (1, 4, 4, (9, 6, 6), 5, 2),
    (1, 6, 4, (5, 8, 8), 3, "same"),
    (2, 3, 5, (6, 6, 5), 3, "valid"),
    (1, 1, 9, (12, 9, 9), 3, 1),
    (2, 9, 1, (11, 7, 10), 3, 1),
    (1, 17, 20, (5, 13, 14), 3, 3),
    (1, 8, 8, (3, 70, 66), 3, 1),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", GRID,
                         ids=lambda c: f"{c[0]}x{c[1]}x{c[2]}-{'x'.join(map(str, c[3]))}"
                                       f"-k{c[4]}-p{c[5]}")
def test_cpp_winograd3d_matches_the_reference(case, dtype):
    n, c, k, dhw, kd, pad = case
    rng = np.random.default_rng(7)
    x = rng.standard_normal((n, c, *dhw))
    wt = rng.standard_normal((k, c, kd, 3, 3))
    b = rng.standard_normal(k)
    y = cnnfast.conv3d(x, wt, padding=pad, backend="numpy")
    gy = rng.standard_normal(y.shape)
    _check(x, wt, gy, b, dict(padding=pad), dtype, str(case))


@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "tanh"])
def test_cpp_winograd3d_fused_activation(activation):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 8, 5, 9, 10)).astype(np.float32)
    w = rng.standard_normal((12, 8, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(12).astype(np.float32)
    kw = dict(padding=1, activation=activation)
    y = cnnfast.conv3d(x, w, b, backend="cpp", algorithm="winograd", **kw)
    assert cpp.last_paths() == {"y": "winograd"}
    f64 = [a.astype(np.float64) for a in (x, w, b)]
    ref = cnnfast.conv3d(*f64, backend="numpy", **kw)
    S = cnnfast.conv3d(*(np.abs(a) for a in f64), padding=1, backend="numpy").max()
    # the activations are 1-Lipschitz: the bound of the pre-activation holds
    pre = cnnfast.conv3d(*f64, padding=1, backend="numpy")
    assert np.all(np.abs(y - ref) <= 1e-5 * S + 1e-4 * np.abs(pre) + 1e-6 * np.abs(ref))


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_cpp_winograd3d_transposed_convolution(dtype):
    # conv_transpose3d runs the input-gradient kernel, its input gradient the forward
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 12, 4, 9, 10)).astype(dtype)
    w = rng.standard_normal((12, 10, 3, 3, 3)).astype(dtype)
    b = rng.standard_normal(10).astype(dtype)
    y = cnnfast.conv_transpose3d(x, w, b, padding=1, backend="cpp", algorithm="winograd")
    assert cpp.last_paths() == {"y": "winograd"}
    f64 = [a.astype(np.float64) for a in (x, w, b)]
    ref = cnnfast.conv_transpose3d(*f64, padding=1, backend="numpy")
    S = cnnfast.conv_transpose3d(*(np.abs(a) for a in f64[:2]), padding=1,
                                 backend="numpy").max()
    a, r = contract.BOUNDS[dtype]
    assert np.all(np.abs(y - ref) <= a * S + r * np.abs(ref))
    gy = rng.standard_normal(y.shape).astype(dtype)
    got = cnnfast.conv_transpose_backward(gy, x, w, padding=1, needs=("x", "weight"),
                                          backend="cpp", algorithm="winograd")
    assert set(cpp.last_paths().values()) == {"winograd"}
    g64 = [v.astype(np.float64) for v in (gy, x, w)]
    want = cnnfast.conv_transpose_backward(*g64, padding=1, needs=("x", "weight"),
                                           backend="numpy")
    Sb = cnnfast.conv_transpose_backward(*(np.abs(v) for v in g64), padding=1,
                                         needs=("x", "weight"), backend="numpy")
    for g, e, s in zip(got[:2], want[:2], Sb[:2]):
        assert np.all(np.abs(g - e) <= a * s.max() + r * np.abs(e))


# With 1, 2 and 3 threads the tile blocks stay but the output depths are split into a
# different number of ranges (each transforming its first slices again), and the weight
# gradient's channels into a different number of ranges: few blocks per plane and a
# deep input (many ranges), several blocks per plane, and a 1-slice kernel.
SCHEDULES = [((1, 16, 24, 20, 8, 8), 3), ((2, 8, 16, 6, 30, 26), 3), ((1, 12, 8, 9, 12, 12), 1)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", SCHEDULES, ids=lambda c: "x".join(map(str, c[0])) + f"-k{c[1]}")
def test_cpp_winograd3d_bits_do_not_depend_on_the_thread_count(threads, case, dtype):
    (n, c, k, d, h, w), kd = case
    rng = np.random.default_rng(11)
    x = rng.standard_normal((n, c, d, h, w)).astype(dtype)
    wt = rng.standard_normal((k, c, kd, 3, 3)).astype(dtype)
    b = rng.standard_normal(k).astype(dtype)
    gy = rng.standard_normal((n, k, d + 3 - kd, h, w)).astype(dtype)
    runs = []
    for nt in (1, 2, 3):
        threads(nt)
        runs.append(contract.ops(x, wt, gy, b, dict(padding=1), "cpp", "winograd"))
    for r in runs[1:]:
        for name in r:
            assert np.array_equal(r[name], runs[0][name]), name


@pytest.mark.parametrize("what,kw,w_shape", [
    ("stride 2 in depth", dict(stride=(2, 1, 1)), (4, 4, 3, 3, 3)),
    ("dilation 2 in depth", dict(dilation=(2, 1, 1)), (4, 4, 3, 3, 3)),
    ("stride 2", dict(stride=2), (4, 4, 3, 3, 3)),
    ("groups", dict(groups=2), (4, 2, 3, 3, 3)),
    ("3x3x5", {}, (4, 4, 3, 3, 5)),
])
def test_cpp_winograd3d_refuses_what_it_cannot_run(what, kw, w_shape):
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((1, 4, 7, 7, 7)), rng.standard_normal(w_shape)
    with pytest.raises(NotImplementedError, match="winograd needs"):
        cnnfast.conv(x, w, backend="cpp", algorithm="winograd", **kw)
    y = cnnfast.conv(x, w, backend="numpy", **kw)
    with pytest.raises(NotImplementedError, match="winograd"):
        cnnfast.conv_backward(y, x, w, backend="cpp", algorithm="winograd", **kw)
    with pytest.raises(NotImplementedError, match="winograd"):
        cnnfast.explain("conv", x, w, backend="cpp", algorithm="winograd", **kw)


def test_cpp_winograd3d_is_the_automatic_choice():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 16, 8, 28, 28)).astype(np.float32)
    w = rng.standard_normal((16, 16, 3, 3, 3)).astype(np.float32)
    text = cnnfast.explain("conv", x, w, padding=1, backend="cpp")
    assert "winograd F(4x4,3x3)" in text and "3-d" in text, text
    y = cnnfast.conv3d(x, w, padding=1, backend="cpp")
    assert cpp.last_paths() == {"y": "winograd"}
    cnnfast.conv_backward(y, x, w, padding=1, backend="cpp")
    assert cpp.last_paths() == {"grad_x": "winograd", "grad_weight": "winograd"}
    # not for small planes (4 tiles of 4x4: the products would be thin), nor for the
    # gradients of a layer with 1 input and 16 output channels
    cnnfast.conv3d(x[:, :, :, :8, :8], w, padding=1, backend="cpp")
    assert cpp.last_paths() == {"y": "gemm"}
    cnnfast.conv_backward(y, x[:, :1], w[:, :1], padding=1, backend="cpp")
    assert cpp.last_paths() == {"grad_x": "gemm", "grad_weight": "gemm"}


def test_cpp_winograd3d_workspace_is_bounded():
    # no whole-batch buffer: the transformed input of this batch would be ~29 MB
    _cpp.release_workspace(max(8, cnnfast.get_num_threads()))
    rng = np.random.default_rng(2)
    x = rng.standard_normal((8, 32, 16, 28, 28)).astype(np.float32)
    w = rng.standard_normal((32, 32, 3, 3, 3)).astype(np.float32)
    y = cnnfast.conv3d(x, w, padding=1, backend="cpp", algorithm="winograd")
    cnnfast.conv_backward(y, x, w, padding=1, backend="cpp", algorithm="winograd")
    held, peak = _cpp.workspace_bytes()
    whole_batch_v = 36 * 32 * 8 * 16 * 7 * 7 * 4
    # Measured: 5.2 MB (AVX2: blocks of tiles in 16-column panels), 7.3 MB (AVX-512:
    # 48-column panels, the 49 tiles of an image in 96 columns).
    assert 0 < held <= peak < whole_batch_v / 3
