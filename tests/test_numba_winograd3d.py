"""The numba backend's Winograd path on 3-d convolutions (``algorithm="winograd"``; see
``cnnfast/backends/numba/kernels/winograd.py``): a KD x 3 x 3 kernel, stride 1 and
dilation 1 in every dim, one group, any padding -- forward, input gradient and weight
gradient, float32 and float64.

The 2-d path's transforms and products with the depth taps in the products' reduction
(rows kd * C + c; a window in a slice outside the input transforms to zeros; the
forward keeps a window of transformed slices per work item), held to the
same accuracy contract (helpers/winograd_contract.py) on the cpp backend's 3-d cases:
random and adversarial data (wide dynamic range, deep channels, constant sign, one huge
value in x, the weight or gy), a grid of depths, depth taps and paddings, and bits
that do not depend on the thread count.
"""

from __future__ import annotations

import numpy as np
import pytest

import cnnfast
from cnnfast.registry import get_backend

from helpers import winograd_contract as contract

if get_backend("numba").reason is not None:  # pragma: no cover - depends on the environment
    pytest.skip(f"numba backend unavailable: {get_backend('numba').reason}",
                allow_module_level=True)
from cnnfast.backends.numba import backend as nb  # noqa: E402


def _check(x, w, gy, b, kw, dtype, what):
    return contract.check(x, w, gy, b, kw, dtype, what, "numba", last_paths=nb.last_paths)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", contract.ADVERSARIAL_3D, ids=contract.adversarial3d_id)
def test_numba_winograd3d_accuracy_contract(case, dtype):
    for seed in range(3 if len(case) > 6 else 1):  # a few places for the huge value
        _check(*contract.adversarial3d_case(case, seed), dtype, f"{case[0]} seed {seed}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", contract.GRID_3D, ids=contract.grid3d_id)
def test_numba_winograd3d_matches_the_reference(case, dtype):
    _check(*contract.grid3d_case(case), dtype, str(case))


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", contract.SCHEDULES_3D, ids=contract.schedule3d_id)
def test_numba_winograd3d_bits_do_not_depend_on_the_thread_count(threads, case, dtype):
    runs = contract.thread_runs3d(case, dtype, threads, "numba")
    for r in runs[1:]:
        for name in r:
            assert np.array_equal(r[name], runs[0][name]), name


@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "tanh"])
def test_numba_winograd3d_fused_activation_and_transposed(activation):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 8, 5, 9, 10)).astype(np.float32)
    w = rng.standard_normal((12, 8, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(12).astype(np.float32)
    kw = dict(padding=1, activation=activation)
    y = cnnfast.conv3d(x, w, b, backend="numba", algorithm="winograd", **kw)
    assert nb.last_paths() == {"y": "winograd"}
    f64 = [a.astype(np.float64) for a in (x, w, b)]
    ref = cnnfast.conv3d(*f64, backend="numpy", **kw)
    S = cnnfast.conv3d(*(np.abs(a) for a in f64), padding=1, backend="numpy").max()
    pre = cnnfast.conv3d(*f64, padding=1, backend="numpy")
    # the activations are 1-Lipschitz: the bound of the pre-activation holds
    assert np.all(np.abs(y - ref) <= 1e-5 * S + 1e-4 * np.abs(pre) + 1e-6 * np.abs(ref))
    # conv_transpose3d runs the input-gradient correlation (the flipped weight)
    yt = cnnfast.conv_transpose3d(y, w, padding=1, backend="numba", algorithm="winograd")
    assert nb.last_paths() == {"y": "winograd"}
    y64 = y.astype(np.float64)
    ref_t = cnnfast.conv_transpose3d(y64, f64[1], padding=1, backend="numpy")
    S_t = cnnfast.conv_transpose3d(np.abs(y64), np.abs(f64[1]), padding=1,
                                   backend="numpy").max()
    assert np.all(np.abs(yt - ref_t) <= 1e-5 * S_t + 1e-4 * np.abs(ref_t))


@pytest.mark.parametrize("what,kw,w_shape", [
    ("stride 2 in depth", dict(stride=(2, 1, 1)), (4, 4, 3, 3, 3)),
    ("dilation 2 in depth", dict(dilation=(2, 1, 1)), (4, 4, 3, 3, 3)),
    ("groups", dict(groups=2), (4, 2, 3, 3, 3)),
    ("3x3x5", {}, (4, 4, 3, 3, 5)),
])
def test_numba_winograd3d_refuses_what_it_cannot_run(what, kw, w_shape):
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((1, 4, 7, 7, 7)), rng.standard_normal(w_shape)
    with pytest.raises(NotImplementedError, match="winograd needs"):
        cnnfast.conv(x, w, backend="numba", algorithm="winograd", **kw)
    with pytest.raises(NotImplementedError, match="winograd needs"):
        cnnfast.explain("conv", x, w, backend="numba", algorithm="winograd", **kw)


def test_numba_winograd3d_is_the_automatic_choice():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 32, 4, 16, 16)).astype(np.float32)
    w = rng.standard_normal((32, 32, 3, 3, 3)).astype(np.float32)
    text = cnnfast.explain("conv", x, w, padding=1, backend="numba")
    assert "winograd (Winograd F(4x4,3x3)" in text and "3-d 3x3x3" in text, text
    y = cnnfast.conv3d(x, w, padding=1, backend="numba")
    assert nb.last_paths() == {"y": "winograd"}
    cnnfast.conv_backward(y, x, w, padding=1, backend="numba")
    assert nb.last_paths() == {"grad_x": "winograd", "grad_weight": "winograd"}
    # 16 x 16 channels: the correlations still, not the weight gradient (it transforms
    # each slice once per depth tap, which costs what the fewer multiply-adds save)
    x, w = x[:, :16], w[:16, :16]
    y = cnnfast.conv3d(x, w, padding=1, backend="numba")
    assert nb.last_paths() == {"y": "winograd"}
    cnnfast.conv_backward(y, x, w, padding=1, backend="numba")
    assert nb.last_paths() == {"grad_x": "winograd", "grad_weight": "gemm"}
