"""The cpp backend's ``wgrad-short`` path (csrc/conv/wgrad_short.h): the weight gradient
of convolutions with few input channels x taps per group, vectorised over the output
channels. Checked against the numpy reference, for bit-identical results with 1 and 2
threads, for its refusals and for the automatic choice (csrc/kernels.h use_ws)."""
import numpy as np
import pytest

import cnnfast as cf

cpp = pytest.importorskip("cnnfast.backends.cpp.backend")
if "wgrad-short" not in cpp.ALGORITHMS:  # pragma: no cover - an old build
    pytest.skip("cpp backend built without wgrad-short", allow_module_level=True)


def _case(rng, n, c, o, hw, k, s, p, dt, groups=1, dil=1):
    h, w = hw
    x = rng.standard_normal((n, c * groups, h, w)).astype(dt)
    wt = rng.standard_normal((o * groups, c, k, k)).astype(dt)
    ek = (k - 1) * dil + 1
    ho, wo = (h + 2 * p - ek) // s + 1, (w + 2 * p - ek) // s + 1
    gy = rng.standard_normal((n, o * groups, ho, wo)).astype(dt)
    return gy, x, wt, dict(stride=s, padding=p, dilation=dil, groups=groups)


def _gw(gy, x, w, kw, **extra):
    return cf.conv_backward(gy, x, w, needs=("weight",), **kw, **extra)[1]


def _grid():
    rng = np.random.default_rng(1234)
    cases = []
    while len(cases) < 120:
        k = int(rng.integers(1, 8))
        s = int(rng.integers(1, 3))
        p = int(rng.integers(0, 4))
        h, w = int(rng.integers(1, 20)), int(rng.integers(1, 20))
        if h + 2 * p < k or w + 2 * p < k:
            continue
        cases.append((int(rng.integers(1, 6)), int(rng.integers(1, 5)),
                      int(rng.choice([1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 33, 64, 70])),
                      (h, w), k, s, p, (np.float32, np.float64)[len(cases) % 2]))
    return cases


@pytest.mark.parametrize("case", _grid(), ids=lambda c: "n{}c{}o{}_{}x{}_k{}s{}p{}_{}".format(
    c[0], c[1], c[2], c[3][0], c[3][1], c[4], c[5], c[6], np.dtype(c[7]).name))
def test_forced_matches_reference(case):
    rng = np.random.default_rng(hash(case[:7]) % 2**32)
    gy, x, w, kw = _case(rng, *case)
    ref = _gw(gy, x, w, kw, backend="numpy")
    got = _gw(gy, x, w, kw, backend="cpp", algorithm="wgrad-short")
    assert cpp.last_paths() == {"grad_weight": "wgrad-short"}
    assert got.dtype == ref.dtype and got.shape == ref.shape
    tol = 1e-4 if got.dtype == np.float32 else 1e-11
    scale = max(1.0, float(np.sqrt(gy.size * x.size / max(1, x.shape[0]))))
    np.testing.assert_allclose(got, ref, rtol=tol, atol=tol * scale)


@pytest.mark.parametrize("groups,dil,dt", [(2, 1, np.float32), (3, 2, np.float64),
                                           (1, 2, np.float32), (4, 3, np.float64)])
def test_groups_and_dilation(groups, dil, dt):
    rng = np.random.default_rng(7)
    gy, x, w, kw = _case(rng, 3, 2, 9, (15, 14), 3, 2, 2, dt, groups=groups, dil=dil)
    ref = _gw(gy, x, w, kw, backend="numpy")
    got = _gw(gy, x, w, kw, backend="cpp", algorithm="wgrad-short")
    tol = 1e-4 if dt == np.float32 else 1e-11
    np.testing.assert_allclose(got, ref, rtol=tol, atol=tol * 30)


def test_conv1d():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 2, 37))
    w = rng.standard_normal((12, 2, 5))
    gy = rng.standard_normal((3, 12, 19))  # (37 + 4 - 5) // 2 + 1
    kw = dict(stride=2, padding=2)
    ref = _gw(gy, x, w, kw, backend="numpy")
    got = _gw(gy, x, w, kw, backend="cpp", algorithm="wgrad-short")
    np.testing.assert_allclose(got, ref, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("dt", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [
    (64, 1, 64, (28, 28), 3, 1, 0),     # the Fashion-MNIST conv1: 128 chunks, 16 runs
    (5, 3, 32, (40, 37), 3, 2, 1),
    (2, 3, 17, (61, 50), 7, 2, 3),
    (1, 4, 70, (9, 9), 5, 1, 2),
])
def test_same_bits_for_any_thread_count(shape, dt):
    rng = np.random.default_rng(11)
    gy, x, w, kw = _case(rng, *shape, dt)
    before = cf.get_num_threads()
    try:
        cf.set_num_threads(1)
        one = _gw(gy, x, w, kw, backend="cpp", algorithm="wgrad-short")
        cf.set_num_threads(2)
        two = _gw(gy, x, w, kw, backend="cpp", algorithm="wgrad-short")
        cf.set_num_threads(3)
        three = _gw(gy, x, w, kw, backend="cpp", algorithm="wgrad-short")
    finally:
        cf.set_num_threads(before)
    assert one.tobytes() == two.tobytes() == three.tobytes()


def test_forced_on_ineligible_raises():
    rng = np.random.default_rng(5)
    # 8 input channels x 7x7 taps = 392 > 256
    gy, x, w, kw = _case(rng, 1, 8, 4, (9, 9), 7, 1, 0, np.float32)
    with pytest.raises(NotImplementedError, match="wgrad-short"):
        _gw(gy, x, w, kw, backend="cpp", algorithm="wgrad-short")
    # a weight-gradient kernel only: the input gradient and the forward refuse it
    gy, x, w, kw = _case(rng, 1, 2, 4, (9, 9), 3, 1, 0, np.float32)
    with pytest.raises(NotImplementedError, match="wgrad-short"):
        cf.conv_backward(gy, x, w, needs=("x",), backend="cpp", algorithm="wgrad-short", **kw)
    with pytest.raises(NotImplementedError, match="wgrad-short"):
        cf.conv2d(x, w, backend="cpp", algorithm="wgrad-short", **kw)
    # 3-d
    x3 = rng.standard_normal((1, 2, 4, 5, 5)).astype(np.float32)
    w3 = rng.standard_normal((3, 2, 2, 2, 2)).astype(np.float32)
    gy3 = rng.standard_normal((1, 3, 3, 4, 4)).astype(np.float32)
    with pytest.raises(NotImplementedError, match="wgrad-short"):
        cf.conv_backward(gy3, x3, w3, needs=("weight",), backend="cpp",
                         algorithm="wgrad-short")


def test_auto_choice():
    rng = np.random.default_rng(9)
    # a strided first layer (3 -> 32, 3x3, stride 2): chosen, explained, recorded
    gy, x, w, kw = _case(rng, 2, 3, 32, (32, 32), 3, 2, 1, np.float32)
    text = cf.explain("conv_backward", gy, x, w, backend="cpp", **kw)
    assert "wgrad-short" in text
    _gw(gy, x, w, kw, backend="cpp")
    assert cpp.last_paths()["grad_weight"] == "wgrad-short"
    # the Fashion-MNIST conv1 (stride 1, 1 -> 64 channels, 3x3)
    gy, x, w, kw = _case(rng, 64, 1, 64, (28, 28), 3, 1, 0, np.float32)
    assert "grad_weight wgrad-short" in cf.explain("conv_backward", gy, x, w, backend="cpp",
                                                   **kw)
    _gw(gy, x, w, kw, backend="cpp")
    assert cpp.last_paths()["grad_weight"] == "wgrad-short"
    # stride 1 with more than 64 input channels x taps: the stride-1 GEMM keeps it
    gy, x, w, kw = _case(rng, 2, 4, 64, (16, 16), 5, 1, 2, np.float32)
    _gw(gy, x, w, kw, backend="cpp")
    assert cpp.last_paths()["grad_weight"] == "gemm-s1"
    # depthwise (< 8 outputs per group): the direct kernels keep it
    gy, x, w, kw = _case(rng, 2, 1, 1, (16, 16), 3, 2, 1, np.float32, groups=4)
    _gw(gy, x, w, kw, backend="cpp")
    assert cpp.last_paths()["grad_weight"] != "wgrad-short"
