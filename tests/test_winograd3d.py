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
@pytest.mark.parametrize("case", contract.ADVERSARIAL_3D, ids=contract.adversarial3d_id)
def test_cpp_winograd3d_accuracy_contract(case, dtype):
    for seed in range(3 if len(case) > 6 else 1):  # a few places for the huge value
        _check(*contract.adversarial3d_case(case, seed), dtype, f"{case[0]} seed {seed}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", contract.GRID_3D, ids=contract.grid3d_id)
def test_cpp_winograd3d_matches_the_reference(case, dtype):
    _check(*contract.grid3d_case(case), dtype, str(case))


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
# gradient's channels into a different number of ranges.
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", contract.SCHEDULES_3D, ids=contract.schedule3d_id)
def test_cpp_winograd3d_bits_do_not_depend_on_the_thread_count(threads, case, dtype):
    runs = contract.thread_runs3d(case, dtype, threads, "cpp")
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
