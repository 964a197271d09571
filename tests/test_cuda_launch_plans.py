"""The CUDA launch code's memoised launches (the runtime's ``memo``; issue 18's host
path): a repeated call replays the kernels, grids, blocks and device tables that a
fresh resolution would give, the test hooks' settings are part of the key, a refusal
is not remembered, and results stay those of the reference. Runs on a recording
runtime (no kernels) and on ``cuda-emu``."""

from __future__ import annotations

import numpy as np
import pytest

import cnnfast
from cnnfast import params as P
from cnnfast.backends.cuda import conv_launch


class RecordingRuntime:
    """The runtime protocol with kernels that record their launches (name, grid,
    block, and each argument's shape/dtype or scalar value)."""

    xp = np

    def __init__(self):
        self.record = conv_launch.PathRecord()
        self.launches = []
        self._tables, self._memo = {}, {}
        self.builds = 0

    def function(self, file, name):
        def kernel(grid, block, args, shared_mem=0):
            self.launches.append((name, tuple(grid), tuple(block), tuple(
                (a.shape, a.dtype.str, a.tobytes() if a.dtype == np.int32 else None)
                if isinstance(a, np.ndarray) else a.item() for a in args)))
        return kernel

    @staticmethod
    def int32_array(values):
        return np.asarray(values, np.int32)

    def cached(self, key, build):
        if key not in self._tables:
            self._tables[key] = tuple(np.asarray(a, np.int32) for a in build())
        return self._tables[key]

    def memo(self, key, build):
        if key not in self._memo:
            self.builds += 1
            self._memo[key] = build()
        return self._memo[key]


def _calls(dtype=np.float32):
    """Calls of every planned launch: gemm (split and unsplit), direct, stride
    phases, the weight gradients, depthwise-tiled, pooling forward and backward."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 9, 8)).astype(dtype)
    w = rng.standard_normal((6, 4, 3, 3)).astype(dtype)
    b = rng.standard_normal(6).astype(dtype)
    p = P.conv_params(x.shape, w.shape, 1, 1, 1, 1)
    gy = rng.standard_normal((2, 6, 9, 8)).astype(dtype)
    wd = rng.standard_normal((8, 1, 3, 3)).astype(dtype)
    pd = P.conv_params(x.shape, wd.shape, 2, 1, 1, 4)
    pdt = P.with_algorithm(P.conv_params(x.shape, wd.shape, 1, 1, 1, 4), "depthwise-tiled")
    wt = rng.standard_normal((4, 3, 3, 3)).astype(dtype)
    pt = P.conv_transpose_params(x.shape, wt.shape, 2, 1, 1, 1, 1)
    gyt = rng.standard_normal((2, 3) + tuple(pt.out_shape)).astype(dtype)
    pp = P.pool_params(x.shape, 2, 2, 0, 1, False)
    y, idx = conv_launch.max_pool(RecordingRuntime(), x, pp, True)
    gyp = rng.standard_normal(y.shape).astype(dtype)
    idx = np.zeros(y.shape, np.int64)
    needs = frozenset({"x", "weight", "bias"})
    return [
        lambda rt: conv_launch.conv(rt, x, w, b, p),
        lambda rt: conv_launch.conv_backward(rt, gy, x, w, p, needs),
        lambda rt: conv_launch.conv(rt, x, wd, None, pd),
        lambda rt: conv_launch.conv_backward(rt, np.ones((2, 8, 5, 4), dtype), x, wd, pd,
                                             needs),
        lambda rt: conv_launch.conv(rt, x, wd, None, pdt),
        lambda rt: conv_launch.conv_transpose(rt, x, wt, None, pt),
        lambda rt: conv_launch.conv_transpose_backward(rt, gyt, x, wt, pt,
                                                       frozenset({"x", "weight"})),
        lambda rt: conv_launch.max_pool(rt, x, pp, True),
        lambda rt: conv_launch.max_pool_backward(rt, gyp, idx, x.shape),
        lambda rt: conv_launch.avg_pool(rt, x, pp),
        lambda rt: conv_launch.avg_pool_backward(rt, gyp, pp),
    ]


def _launches(rt, call):
    rt.launches = []
    call(rt)
    return rt.launches


@pytest.mark.parametrize("splits", [None, 3], ids=["auto-splits", "3-splits"])
def test_a_replayed_call_launches_what_a_fresh_one_does(splits):
    with conv_launch.override(splits=splits):
        for i, call in enumerate(_calls()):
            rt = RecordingRuntime()
            first = _launches(rt, call)
            builds = rt.builds
            assert first and builds >= 1, i
            again = _launches(rt, call)
            assert rt.builds == builds, f"call {i}: a repeated call resolved its launches again"
            assert again == first, i
            assert _launches(RecordingRuntime(), call) == first, i


def test_the_test_hooks_are_part_of_the_key():
    rt = RecordingRuntime()
    conv = _calls()[0]
    plain = _launches(rt, conv)
    with conv_launch.override(tile="thin", splits=2):
        hooked = _launches(rt, conv)
    assert plain != hooked
    assert "32,256" in hooked[0][0] and len(hooked) == 2  # the thin tile, then the sum
    assert _launches(rt, conv) == plain
    with conv_launch.override(path="direct"):
        assert _launches(rt, conv)[0][0].startswith("conv_direct")


def test_a_refusal_is_not_remembered():
    rt = RecordingRuntime()
    x = np.ones((1, 2, 8, 8), np.float32)
    w = np.ones((3, 2, 3, 3), np.float32)
    p = P.with_algorithm(P.conv_params(x.shape, w.shape, 2, 1, 1, 1), "winograd")
    for _ in range(2):
        with pytest.raises(NotImplementedError, match="stride 1"):
            conv_launch.conv(rt, x, w, None, p)
    assert rt.launches == [] and rt.builds == 0


def test_repeated_calls_on_the_emulator_match_the_reference():
    emu = pytest.importorskip("cnnfast.backends.cuda.emu_backend")
    if emu.availability() is not None:  # pragma: no cover - depends on the machine
        pytest.skip(emu.availability())
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 5, 11, 9))
    w = rng.standard_normal((7, 5, 3, 3))
    b = rng.standard_normal(7)
    ref = cnnfast.conv2d(x, w, b, padding=1, backend="numpy")
    for _ in range(3):
        np.testing.assert_allclose(cnnfast.conv2d(x, w, b, padding=1, backend="cuda-emu"),
                                   ref, rtol=1e-12, atol=1e-12)
        y, i = cnnfast.max_pool2d(x, 2, return_indices=True, backend="cuda-emu")
        np.testing.assert_array_equal(y, cnnfast.max_pool2d(x, 2, backend="numpy"))
