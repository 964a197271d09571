"""The cpp backend's Winograd F(4x4, 3x3) path (``algorithm="winograd"``; see
``csrc/conv/winograd.h``): 2-d convolutions with a 3x3 kernel, stride 1, dilation 1,
one group, any padding -- forward, input gradient and weight gradient, float32 and
float64.

Accuracy contract: the transforms mix the values of a whole 6x6 tile, so an output's
error is not bounded by its own sum of |terms| but by the largest one of the call,
S = max over the outputs of sum |terms| (the float64 reference applied to |inputs|):

* float32: |got - exact| <= 1e-5 * S + 1e-4 * |exact| for every output;
* float64: |got - exact| <= 1e-12 * S (else float64 would keep the exact algorithms),

with ``exact`` the float64 numpy reference on the very inputs the kernel got, on
random data and on adversarial data: a wide dynamic range (values x 10**U(-4, 4)),
large channel counts at small spatial sizes, constant-sign data (no cancellation: S
is as large as the values allow) and one huge value among small ones (in x, in the
weight or in gy).

Its limit: a transformed tile mixes every value of the window with every tap, so the
error of a product is ~eps * (largest |value| of one operand in a tile) * (largest of
the other), which S holds only when the two meet in an exact term. Two huge values,
one in each operand of a product (x and gy for the weight gradient, the weight and gy
for the input gradient, x and the weight of one channel for the forward) at positions
that never meet break the S bound: the error then follows their product
(test_cpp_winograd_two_huge_values_error_follows_their_product).

Every test name holds "cpp" so that ``-k cpp`` (the sanitizer job) selects them.
"""

from __future__ import annotations

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


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", contract.ADVERSARIAL_2D, ids=contract.adversarial_id)
def test_cpp_winograd_accuracy_contract(case, dtype):
    for seed in range(4 if len(case) > 7 else 1):  # a few places for a huge value
        x, wt, gy, b, kw = contract.adversarial_case(case, seed)
        _check(x, wt, gy, b, kw, dtype, f"{case[0]} seed {seed}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_cpp_winograd_two_huge_values_error_follows_their_product(dtype):
    # x and gy huge at places that never meet in a term of the weight gradient: its
    # error is ~eps * their product (not bounded by S, which holds no such term)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 4, 8, 8)) * 1e-3
    gy = rng.standard_normal((1, 4, 8, 8)) * 1e-3
    w = rng.standard_normal((4, 4, 3, 3))
    x[0, 1, 0, 0] = gy[0, 2, 3, 3] = 1e4  # one tile; offset (-3, -3): no tap
    x, gy, w = (a.astype(dtype) for a in (x, gy, w))
    gw = cnnfast.conv_backward(gy, x, w, padding=1, needs=("weight",), backend="cpp",
                               algorithm="winograd")[1]
    f64 = [a.astype(np.float64) for a in (gy, x, w)]
    exact = cnnfast.conv_backward(*f64, padding=1, needs=("weight",), backend="numpy")[1]
    S = cnnfast.conv_backward(*(np.abs(a) for a in f64), padding=1, needs=("weight",),
                              backend="numpy")[1].max()
    err = np.abs(gw - exact).max()
    eps = np.finfo(dtype).eps
    assert err <= 100 * eps * 1e8  # the product of the two huge values
    assert S < 1e5  # ... which S holds nothing of: S alone would not bound the error


# The shared 2-d grid (helpers/winograd_contract.py); here it also covers both
# schedules (one block per thread; all threads on one block with its own weight
# transform).
GRID = contract.GRID_2D


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", GRID, ids=contract.grid_id)
def test_cpp_winograd_matches_the_reference(case, dtype):
    _check(*contract.grid_case(case), dtype, str(case))


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_cpp_winograd_transposed_convolutions(dtype):
    # conv_transpose runs the input-gradient kernel, its backward pass the forward and
    # weight-gradient kernels
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 12, 9, 10)).astype(dtype)
    w = rng.standard_normal((12, 10, 3, 3)).astype(dtype)
    b = rng.standard_normal(10).astype(dtype)
    y = cnnfast.conv_transpose2d(x, w, b, padding=1, backend="cpp", algorithm="winograd")
    assert cpp.last_paths() == {"y": "winograd"}
    ref = cnnfast.conv_transpose2d(*(a.astype(np.float64) for a in (x, w, b)), padding=1,
                                   backend="numpy")
    S = cnnfast.conv_transpose2d(np.abs(x.astype(np.float64)), np.abs(w.astype(np.float64)),
                                 padding=1, backend="numpy").max()
    a, r = contract.BOUNDS[dtype]
    assert np.all(np.abs(y - ref) <= a * S + r * np.abs(ref))
    gy = rng.standard_normal(y.shape).astype(dtype)
    got = cnnfast.conv_transpose_backward(gy, x, w, padding=1, needs=("x", "weight"),
                                          backend="cpp", algorithm="winograd")
    assert set(cpp.last_paths().values()) == {"winograd"}
    f64 = [v.astype(np.float64) for v in (gy, x, w)]
    want = cnnfast.conv_transpose_backward(*f64, padding=1, needs=("x", "weight"),
                                           backend="numpy")
    Sb = cnnfast.conv_transpose_backward(*(np.abs(v) for v in f64), padding=1,
                                         needs=("x", "weight"), backend="numpy")
    for g, e, s in zip(got[:2], want[:2], Sb[:2]):
        assert np.all(np.abs(g - e) <= a * s.max() + r * np.abs(e))


# One case per schedule of wino_geo (csrc/conv/winograd.h) with 2 threads: a block per
# thread (many tiles), all threads on one block with a weight transform per chunk of
# output channels (few tiles), all threads on each of a few blocks with the weights
# transformed once. 1, 2 and 3 threads also change the schedule of the first.
SCHEDULES = [(8, 32, 40, 28, 28), (2, 96, 100, 6, 6), (8, 512, 16, 14, 14)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", SCHEDULES, ids=lambda c: "x".join(map(str, c)))
def test_cpp_winograd_bits_do_not_depend_on_the_thread_count(threads, case, dtype):
    n, c, k, h, w = case
    rng = np.random.default_rng(11)
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    wt = rng.standard_normal((k, c, 3, 3)).astype(dtype)
    b = rng.standard_normal(k).astype(dtype)
    gy = rng.standard_normal((n, k, h, w)).astype(dtype)
    runs = []
    for nt in (1, 2, 3):
        threads(nt)
        runs.append(contract.ops(x, wt, gy, b, dict(padding=1), "cpp", "winograd"))
    for r in runs[1:]:
        for name in r:
            assert np.array_equal(r[name], runs[0][name]), name


@pytest.mark.parametrize("what,kw,x_shape,w_shape", [
    ("stride 2", dict(stride=2), (1, 4, 9, 9), (4, 4, 3, 3)),
    ("5x5", {}, (1, 4, 9, 9), (4, 4, 5, 5)),
    ("groups", dict(groups=2), (1, 4, 9, 9), (4, 2, 3, 3)),
    ("dilation 2", dict(dilation=2), (1, 4, 9, 9), (4, 4, 3, 3)),
    ("1-d", {}, (1, 4, 9), (4, 4, 3)),
    ("3-d 3x5x5", {}, (1, 4, 5, 9, 9), (4, 4, 3, 5, 5)),
    ("3x1", {}, (1, 4, 9, 9), (4, 4, 3, 1)),
])
def test_cpp_winograd_refuses_what_it_cannot_run(what, kw, x_shape, w_shape):
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    with pytest.raises(NotImplementedError, match="winograd needs"):
        cnnfast.conv(x, w, backend="cpp", algorithm="winograd", **kw)
    y = cnnfast.conv(x, w, backend="numpy", **kw)
    with pytest.raises(NotImplementedError, match="winograd"):
        cnnfast.conv_backward(y, x, w, backend="cpp", algorithm="winograd", **kw)
    with pytest.raises(NotImplementedError, match="winograd"):
        cnnfast.explain("conv", x, w, backend="cpp", algorithm="winograd", **kw)


def test_cpp_winograd_is_the_automatic_choice_for_deep_float32_layers():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((8, 64, 28, 28)).astype(np.float32)
    w = rng.standard_normal((64, 64, 3, 3)).astype(np.float32)
    text = cnnfast.explain("conv", x, w, padding=1, backend="cpp")
    assert "winograd F(4x4,3x3)" in text, text
    cnnfast.conv2d(x, w, padding=1, backend="cpp")
    assert cpp.last_paths() == {"y": "winograd"}
    # not for a stride-2 layer, nor for a thin one (a few channels: the transforms
    # would cost more than the products save)
    cnnfast.conv2d(x, w, padding=1, stride=2, backend="cpp")
    assert cpp.last_paths() == {"y": "gemm-phase"}
    cnnfast.conv2d(x[:, :4], w[:4, :4], padding=1, backend="cpp")
    assert cpp.last_paths() == {"y": "gemm-s1"}


def test_cpp_winograd_workspace_is_bounded():
    # no whole-batch buffer: the transformed input of this batch would be ~29 MB
    _cpp.release_workspace(max(8, cnnfast.get_num_threads()))
    rng = np.random.default_rng(2)
    x = rng.standard_normal((16, 64, 56, 56)).astype(np.float32)
    w = rng.standard_normal((64, 64, 3, 3)).astype(np.float32)
    y = cnnfast.conv2d(x, w, padding=1, backend="cpp", algorithm="winograd")
    cnnfast.conv_backward(y, x, w, padding=1, backend="cpp", algorithm="winograd")
    held, peak = _cpp.workspace_bytes()
    whole_batch_v = 36 * 64 * 16 * 14 * 14 * 4
    assert 0 < held <= peak < whole_batch_v / 4
