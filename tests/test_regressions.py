"""One named test per wrong result found (by a user or by tests/fuzz.py), on every CPU
backend against the numpy reference -- and, where the reference itself was wrong,
against the value worked out by hand (and torch, where torch can express the case)."""

from __future__ import annotations

import numpy as np
import pytest

import cnnfast


@pytest.fixture
def cpu(backend):
    if backend.array != "numpy":
        pytest.skip("a CPU backend's test")
    return backend.name


def _agree(got, expected):
    for g, e in zip(got, expected):
        assert (g is None) == (e is None)
        if e is not None:
            assert g.dtype == e.dtype and g.shape == e.shape
            np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cpp_conv3d_collapsed_depth_with_leading_padding(cpu, dtype):
    # Depth 1, kernel depth 1, output depth 1, but padding 1 before: the one depth tap
    # reads the padding, so every output is zero (or the bias). cpp's 2-d fast paths
    # (d2_ok, s1_ok) took the depth dim for a no-op and gave ~6.6 (issue 13).
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 2, 1, 5, 5)).astype(dtype)
    w = rng.standard_normal((1, 2, 1, 3, 3)).astype(dtype)
    kw = dict(stride=(3, 1, 1), padding=(1, 0, 0))
    y = cnnfast.conv3d(x, w, backend=cpu, **kw)
    assert y.shape == (1, 1, 1, 3, 3) and not y.any()
    gy = rng.standard_normal(y.shape).astype(dtype)
    grads = cnnfast.conv_backward(gy, x, w, backend=cpu, **kw)
    _agree(grads, cnnfast.conv_backward(gy, x, w, backend="numpy", **kw))
    assert not grads[0].any() and not grads[1].any()  # grad_x, grad_weight
    # depthwise: the direct kernels' fast path (one input channel per group)
    wd = rng.standard_normal((2, 1, 1, 3, 3)).astype(dtype)
    _agree(cnnfast.conv_backward(gy.repeat(2, axis=1), x, wd, groups=2, backend=cpu, **kw),
           cnnfast.conv_backward(gy.repeat(2, axis=1), x, wd, groups=2, backend="numpy", **kw))
    assert not cnnfast.conv3d(x, wd, groups=2, backend=cpu, **kw).any()
    # the transposed convolution: output depth (1-1)*3 - 1 + 1 + 1 = 1, cropped away
    wt = rng.standard_normal((2, 3, 1, 3, 3)).astype(dtype)
    b = rng.standard_normal(3).astype(dtype)
    tk = dict(stride=(3, 1, 1), padding=((1, 0), 0, 0), output_padding=(1, 0, 0))
    yt = cnnfast.conv_transpose3d(x, wt, b, backend=cpu, **tk)
    assert yt.shape == (1, 3, 1, 7, 7)
    np.testing.assert_array_equal(yt, np.broadcast_to(b.reshape(1, 3, 1, 1, 1), yt.shape))
    gyt = rng.standard_normal(yt.shape).astype(dtype)
    _agree(cnnfast.conv_transpose_backward(gyt, x, wt, backend=cpu, **tk),
           cnnfast.conv_transpose_backward(gyt, x, wt, backend="numpy", **tk))


def test_numpy_conv_transpose_crop_wider_than_the_input(cpu):
    # Input length 1, stride 5, padding (2, 0), output_padding 2: the full output is
    # [x*w, 0, 0] and the crop of 2 leaves [0] (+ bias). The reference's adjoint pads
    # by (-2, 2): it cropped before padding, so the crop ran past the input and it
    # raised "cannot reshape" (fuzz seed 1, case 161).
    x = np.array([[[2.0]]])
    w = np.array([[[3.0]]])
    b = np.array([0.5])
    kw = dict(stride=5, padding=((2, 0),), output_padding=2)
    y = cnnfast.conv_transpose1d(x, w, b, backend=cpu, **kw)
    np.testing.assert_array_equal(y, [[[0.5]]])
    gy = np.array([[[4.0]]])
    gx, gw, gb = cnnfast.conv_transpose_backward(gy, x, w, backend=cpu, **kw)
    np.testing.assert_array_equal(gx, [[[0.0]]])
    np.testing.assert_array_equal(gw, [[[0.0]]])
    np.testing.assert_array_equal(gb, [4.0])
    # 3-d, several channels and groups: the case the fuzzer drew
    rng = np.random.default_rng(1)
    x3 = rng.standard_normal((2, 4, 1, 1, 4))
    w3 = rng.standard_normal((4, 3, 1, 3, 3))
    k3 = dict(stride=(5, 1, 2), padding=((2, 0), (0, 4), 2), output_padding=(2, 0, 0),
              groups=2, dilation=(1, 2, 2))
    y3 = cnnfast.conv_transpose3d(x3, w3, backend=cpu, **k3)
    assert y3.shape == (2, 6, 1, 1, 7) and not y3.any()
    gy3 = rng.standard_normal(y3.shape)
    _agree(cnnfast.conv_transpose_backward(gy3, x3, w3, backend=cpu, **k3),
           cnnfast.conv_transpose_backward(gy3, x3, w3, backend="numpy", **k3))


def test_numpy_conv_transpose_crop_wider_than_the_input_matches_torch():
    torch = pytest.importorskip("torch")
    # symmetric padding, which torch takes: input 1, stride 5, padding 2 (a crop of 2
    # on each side of the full output [x*w, 0, 0, 0, 0] of output_padding 4) -> [0]
    x = np.array([[[2.0]]])
    w = np.array([[[3.0]]])
    kw = dict(stride=5, padding=2, output_padding=4)
    expected = torch.nn.functional.conv_transpose1d(torch.from_numpy(x), torch.from_numpy(w),
                                                    **kw).numpy()
    np.testing.assert_array_equal(cnnfast.conv_transpose1d(x, w, backend="numpy", **kw),
                                  expected)
