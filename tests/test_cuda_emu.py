"""The CUDA emulator (cnnfast/backends/cuda/emu) and the cuda-emu backend's own paths.

The shared grid (tests/test_backend_grid.py) checks the eight operations of the
``cuda-emu`` backend against the numpy reference; this file checks the emulator's
semantics (shared memory, barriers, warp collectives, atomics, launch errors, the
argument type checks) on the small kernels of csrc/cuda_emu/test_kernels.cu, the
kernel paths the grid's automatic choices may not reach (GEMM vs direct, split-K
weight gradients), determinism, and the build cache.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cnnfast.backends.cuda import conv_launch, pool_launch
from cnnfast.backends.cuda.common import CONV_GEO, POOL_GEO, pack_geometry
from cnnfast import params as P
from cnnfast.backends.numpy import backend as ref

emu = pytest.importorskip("cnnfast.backends.cuda.emu_backend")
if emu.availability() is not None:  # pragma: no cover - depends on the machine
    pytest.skip(f"cuda-emu unavailable: {emu.availability()}", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[1]
TEST_KERNELS = ["reverse_block<float>", "reverse_block<double>", "ids", "barrier_partial",
                "barrier_mismatch", "warp_ops", "warp_deadlock", "atomic_count",
                "typed_args", "racy", "race_free", "out_of_bounds"]


@pytest.fixture(scope="module")
def mod():
    return emu.EmuModule({"test_kernels.cu": TEST_KERNELS}, source_dir=ROOT / "csrc" / "cuda_emu")


@pytest.fixture(scope="module")
def rt():
    return emu.runtime()


# ----------------------------------------------------------------------------- semantics


@pytest.mark.parametrize("dtype,ct", [(np.float32, "float"), (np.float64, "double")])
def test_shared_memory_and_barrier(mod, dtype, ct):
    x = np.arange(3 * 64, dtype=dtype)
    y = np.zeros_like(x)
    mod.function(f"reverse_block<{ct}>")((3,), (64,), (x, y))
    np.testing.assert_array_equal(y, x.reshape(3, 64)[:, ::-1].ravel())


def test_thread_and_block_ids_3d(mod):
    grid, block = (2, 3, 2), (4, 2, 3)
    nb, nt = int(np.prod(grid)), int(np.prod(block))
    out = np.full(nb * nt, -1, np.int32)
    mod.function("ids")(grid, block, (out,))
    expected = (np.arange(nb)[:, None] * 10000 + np.arange(nt)[None, :]).ravel()
    np.testing.assert_array_equal(out, expected)


def test_warp_collectives(mod):
    v = np.array([(7 * i + 2) % 19 for i in range(64)], np.int32)
    out = np.zeros(64 * 8, np.int32)
    mod.function("warp_ops")((1,), (64,), (v, out))
    out = out.reshape(64, 8)
    for w in range(2):
        lanes = v[32 * w:32 * w + 32]
        o = out[32 * w:32 * w + 32]
        lane = np.arange(32)
        np.testing.assert_array_equal(o[:, 0], lanes[3])
        np.testing.assert_array_equal(o[:, 1], np.where(lane >= 2, lanes[lane - 2], lanes))
        np.testing.assert_array_equal(o[:, 2], np.where(lane + 5 < 32, lanes[np.minimum(lane + 5, 31)], lanes))
        np.testing.assert_array_equal(o[:, 3], lanes[lane ^ 1])
        ballot = sum(1 << i for i in range(32) if lanes[i] % 3 == 0)
        np.testing.assert_array_equal(o[:, 4].view(np.uint32), np.uint32(ballot))
        np.testing.assert_array_equal(o[:, 5], int((lanes == 7).any()))
        np.testing.assert_array_equal(o[:, 6], 1)
        seg = np.where(lane % 8 + 1 < 8, lanes[np.minimum(lane + 1, 31)], lanes)
        np.testing.assert_array_equal(o[:, 7], seg)


def test_atomics_are_real(mod):
    counter = np.zeros(1, np.int32)
    fsum = np.zeros(1, np.float32)
    mod.function("atomic_count")((4,), (64,), (counter, fsum))
    assert counter[0] == 256 and fsum[0] == 128.0


# ----------------------------------------------------------------------------- launch errors


def test_barrier_not_reached_by_all_threads_is_a_launch_error(mod):
    with pytest.raises(emu.CudaEmuError, match=r"exited.*__syncthreads\(\) at test_kernels\.cu:\d+"):
        mod.function("barrier_partial")((1,), (64,), (np.zeros(64, np.int32), np.int32(10)))


def test_mismatched_barriers_name_both_lines(mod):
    with pytest.raises(emu.CudaEmuError,
                       match=r"mismatched __syncthreads.*test_kernels\.cu:\d+.*test_kernels\.cu:\d+"):
        mod.function("barrier_mismatch")((1,), (64,), (np.zeros(64, np.int32),))


def test_deadlock_is_reported(mod):
    with pytest.raises(emu.CudaEmuError, match=r"deadlock.*warp collective at test_kernels\.cu:\d+"):
        mod.function("warp_deadlock")((1,), (32,), (np.zeros(32, np.int32),))


@pytest.mark.parametrize("block", [(1025,), (32, 33), (1, 1, 65)])
def test_too_many_threads_per_block(mod, block):
    with pytest.raises(emu.CudaEmuError, match="at most 1024"):
        mod.function("ids")((1,), block, (np.zeros(2048, np.int32),))


def test_dynamic_shared_memory_is_rejected(mod):
    with pytest.raises(emu.CudaEmuError, match="dynamic shared memory"):
        mod.function("ids")((1,), (32,), (np.zeros(32, np.int32),), shared_mem=128)


def test_module_recovers_after_a_launch_error(mod):
    with pytest.raises(emu.CudaEmuError):
        mod.function("barrier_mismatch")((1,), (64,), (np.zeros(64, np.int32),))
    x = np.arange(64, dtype=np.float32)
    y = np.zeros_like(x)
    mod.function("reverse_block<float>")((1,), (64,), (x, y))
    np.testing.assert_array_equal(y, x[::-1])


# ----------------------------------------------------------------------------- argument checks


def test_typed_scalars_pass(mod):
    out = np.zeros(32, np.float32)
    mod.function("typed_args")((1,), (32,), (np.int32(3), np.int64(4), 0.5, out))
    np.testing.assert_array_equal(out, 5.0)
    # A Python int is a 64-bit integer, as CuPy passes it: fine for long long.
    mod.function("typed_args")((1,), (32,), (np.int32(1), 4, 2.0, out))
    np.testing.assert_array_equal(out, 9.0)


@pytest.mark.parametrize("args,match", [
    ((3, np.int64(4), 0.5), "Python int, which CuPy passes as a 64-bit"),
    ((np.int64(3), np.int64(4), 0.5), "is int but got numpy int64"),
    ((np.int32(3), np.int32(4), 0.5), "is long long but got numpy int32"),
    ((np.int32(3), np.int64(4), np.float32(0.5)), "is double but got numpy float32"),
])
def test_scalar_type_mismatch_is_caught(mod, args, match):
    with pytest.raises(TypeError, match=match):
        mod.function("typed_args")((1,), (32,), args + (np.zeros(32, np.float32),))


def test_array_arguments_are_checked(mod):
    k = mod.function("reverse_block<float>")
    x = np.zeros(64, np.float32)
    with pytest.raises(TypeError, match=r"const float\* but the array has dtype float64"):
        k((1,), (64,), (np.zeros(64), x))
    with pytest.raises(TypeError, match="needs a numpy array"):
        k((1,), (64,), (x, np.float32(1)))
    ro = np.zeros(64, np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        k((1,), (64,), (x, ro))
    with pytest.raises(ValueError, match="C-contiguous"):
        k((1,), (64,), (np.zeros(128, np.float32)[::2], x))
    with pytest.raises(TypeError, match="1 arguments given"):
        k((1,), (64,), (x,))


# ----------------------------------------------------------------------------- library kernels


def test_every_name_expression_is_instantiated(rt):
    for file in conv_launch.SOURCE_FILES:
        for name in conv_launch.name_expressions(file):
            k = rt.function(file, name)
            assert k.signature[-1] in ("c:i4:int", "s:i4:int", "s:i8:long long"), (
                name, k.signature)


def _conv_case(rank, groups, c=4, o=6, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    spatial = (7, 6, 5)[:rank]
    x = rng.standard_normal((2, c) + spatial).astype(dtype)
    w = rng.standard_normal((o, c // groups) + (3, 2, 2)[:rank]).astype(dtype)
    b = rng.standard_normal(o).astype(dtype)
    p = P.conv_params(x.shape, w.shape, (2, 1, 1)[:rank], ((1, 2), (0, 1), (1, 0))[:rank],
                      (1, 2, 1)[:rank], groups)
    return x, w, b, p


@pytest.mark.parametrize("path", ["gemm", "direct"])
@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("groups", [1, 2])
def test_conv_paths(rt, path, rank, groups):
    x, w, b, p = _conv_case(rank, groups)
    with conv_launch.override(path=path):
        y = conv_launch.conv(rt, x, w, b, p)
        gy = np.random.default_rng(1).standard_normal(y.shape)
        gx, _, _ = conv_launch.conv_backward(rt, gy, x, w, p, frozenset({"x"}))
    np.testing.assert_allclose(y, ref.conv(x, w, b, p), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gx, ref.conv_backward(gy, x, w, p, {"x"})[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("path", ["gemm", "direct"])
def test_conv_transpose_paths(rt, path):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 4, 5, 6))
    w = rng.standard_normal((4, 3, 3, 2))
    b = rng.standard_normal(6)
    p = P.conv_transpose_params(x.shape, w.shape, (2, 3), ((1, 0), (2, 1)), (1, 1), 2, (1, 2))
    with conv_launch.override(path=path):
        y = conv_launch.conv_transpose(rt, x, w, b, p)
        gy = rng.standard_normal(y.shape)
        gx, _, _ = conv_launch.conv_transpose_backward(rt, gy, x, w, p, frozenset({"x"}))
    np.testing.assert_allclose(y, ref.conv_transpose(x, w, b, p), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gx, ref.conv_transpose_backward(gy, x, w, p, {"x"})[0],
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("splits", [1, 3, 7])
def test_split_k_weight_gradient_is_exact_and_deterministic(rt, splits):
    x, w, b, p = _conv_case(2, 2, dtype=np.float32)
    gy = np.random.default_rng(3).standard_normal((2, 6) + p.out_shape).astype(np.float32)
    with conv_launch.override(splits=splits):
        _, gw1, gb1 = conv_launch.conv_backward(rt, gy, x, w, p, frozenset({"weight", "bias"}))
        _, gw2, gb2 = conv_launch.conv_backward(rt, gy, x, w, p, frozenset({"weight", "bias"}))
    _, gw_ref, gb_ref = ref.conv_backward(gy.astype(np.float64), x.astype(np.float64),
                                          w.astype(np.float64), p, {"weight", "bias"})
    np.testing.assert_allclose(gw1, gw_ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gb1, gb_ref, rtol=1e-4, atol=1e-4)
    assert gw1.tobytes() == gw2.tobytes() and gb1.tobytes() == gb2.tobytes()


def test_max_pool_backward_overlapping_windows_many_segments(rt):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((1, 2, 40, 40))
    p = P.pool_params(x.shape, 3, 1, 1, 1, False)
    y, idx = pool_launch.max_pool(rt, x, p, True)
    gy = rng.standard_normal(y.shape)
    gx = pool_launch.max_pool_backward(rt, gy, idx, x.shape)
    np.testing.assert_allclose(gx, ref.max_pool_backward(gy, idx, x.shape), rtol=1e-12, atol=1e-12)
    assert gx.tobytes() == pool_launch.max_pool_backward(rt, gy, idx, x.shape).tobytes()


def test_public_api_runs_on_cuda_emu():
    import cnnfast

    x = np.random.default_rng(5).standard_normal((1, 3, 8, 8)).astype(np.float32)
    w = np.random.default_rng(6).standard_normal((5, 3, 3, 3)).astype(np.float32)
    y = cnnfast.conv(x, w, padding="same", backend="cuda-emu")
    np.testing.assert_allclose(y, cnnfast.conv(x, w, padding="same", backend="numpy"),
                               rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- build, caches


def test_library_build_is_cached(mod):
    again = emu.EmuModule({"test_kernels.cu": TEST_KERNELS}, source_dir=ROOT / "csrc" / "cuda_emu")
    assert again.path == mod.path
    other = emu.EmuModule({"test_kernels.cu": TEST_KERNELS[:1]}, source_dir=ROOT / "csrc" / "cuda_emu")
    assert other.path != mod.path  # different instantiations, different library


def test_availability_names_a_missing_compiler(monkeypatch):
    monkeypatch.setenv("CXX", "/nonexistent/c++-compiler")
    reason = emu.availability()
    assert reason is not None and "no C++ compiler" in reason


def test_nvrtc_source_inlines_headers():
    for file in conv_launch.SOURCE_FILES:
        text = conv_launch.source_text(file)
        assert '#include "' not in text
        assert "enum ConvGeoField" in text


def test_cache_key_is_deterministic_across_processes():
    code = ("from cnnfast.backends.cuda import conv_launch as c; "
            "print(' '.join(c.cache_key(f) for f in c.SOURCE_FILES))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout.split()
    assert out == [conv_launch.cache_key(f) for f in conv_launch.SOURCE_FILES]
    assert conv_launch.cache_key("conv.cu") != conv_launch.cache_key("conv.cu", ("-G",))


def test_geometry_is_packed_by_field_name_and_complete():
    """pack_geometry puts each value at its field's place in the header's layout and
    refuses a geometry that misses a field (which the kernels would read as 0), names
    an unknown one, or gives a per-dim field without its 3 dims."""
    full = dict(N=2, G=1, CI=3, CO=4, I=(1, 6, 7), O=(1, 5, 6), K=(1, 2, 2), S=(1, 1, 1),
                P=(0, 0, 1), D=(1, 1, 1), HAS_BIAS=True, SPLITS=1, KCHUNK=0, KSPLITS=5)
    geo = pack_geometry(CONV_GEO, **full)
    assert len(geo) == CONV_GEO.size
    at = {name: geo[i] for name, i in CONV_GEO.index.items()}
    assert (at["CI"], at["I1"], at["I2"], at["P2"], at["HAS_BIAS"], at["KSPLITS"]) == (
        3, 6, 7, 1, 1, 5)
    missing = {k: v for k, v in full.items() if k != "KSPLITS"}
    with pytest.raises(ValueError, match="fields not given: CG_KSPLITS"):
        pack_geometry(CONV_GEO, **missing)
    with pytest.raises(ValueError, match="no field CG_BOGUS"):
        pack_geometry(CONV_GEO, BOGUS=1, **full)
    with pytest.raises(ValueError, match="per-dim"):
        pack_geometry(CONV_GEO, **dict(full, I=(6, 7)))
    with pytest.raises(NotImplementedError, match="int32"):
        pack_geometry(CONV_GEO, **dict(full, N=2 ** 31))
    # The launchers fill every field (or the packing raises), max-pool backward's
    # geometry (no pooling params) included.
    p = P.conv_params((2, 4, 5, 6, 7), (6, 2, 3, 3, 3), 2, 1, 1, 2)
    conv_launch._conv_geo(2, 2, 4, 6, p.in_shape, p.out_shape, p)
    pp = P.pool_params((2, 3, 5, 6, 7), 2, None, 1, 1, False)
    geo = pool_launch._pool_geo.__wrapped__(6, pp.in_shape, pp.out_shape, pp)  # uncached
    assert (geo[POOL_GEO.index["P2"]], geo[POOL_GEO.index["K2"]]) == (1, 2)
    geo = pool_launch._pool_geo.__wrapped__(6, pp.in_shape, pp.out_shape, None, 4, 2, 4)
    assert [geo[POOL_GEO.index[f]] for f in ("P2", "K2", "SEGMENTS", "MODE")] == [0, 1, 4, 2]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rank", [1, 2, 3])
def test_all_eight_ops_small(rt, rank, dtype):
    """Every kernel of the library once per rank and dtype (the sanitizer jobs run
    this file: it must reach every kernel)."""
    tol = 1e-4 if dtype == np.float32 else 1e-12
    rng = np.random.default_rng(rank)
    f64 = lambda a: None if a is None else np.asarray(a, np.float64)  # noqa: E731
    x, w, b, p = _conv_case(rank, 2, dtype=dtype)
    y = conv_launch.conv(rt, x, w, b, p)
    np.testing.assert_allclose(y, ref.conv(f64(x), f64(w), f64(b), p), rtol=tol, atol=tol * 10)
    gy = rng.standard_normal(y.shape).astype(dtype)
    all_grads = frozenset({"x", "weight", "bias"})
    for got, exp in zip(conv_launch.conv_backward(rt, gy, x, w, p, all_grads),
                        ref.conv_backward(f64(gy), f64(x), f64(w), p, all_grads)):
        np.testing.assert_allclose(got, exp, rtol=tol, atol=tol * 10)
    wt = rng.standard_normal((4, 3) + w.shape[2:]).astype(dtype)
    pt = P.conv_transpose_params(x.shape, wt.shape, 2, 1, 1, 1, 1)
    yt = conv_launch.conv_transpose(rt, x, wt, None, pt)
    np.testing.assert_allclose(yt, ref.conv_transpose(f64(x), f64(wt), None, pt), rtol=tol,
                               atol=tol * 10)
    gyt = rng.standard_normal(yt.shape).astype(dtype)
    for got, exp in zip(conv_launch.conv_transpose_backward(rt, gyt, x, wt, pt, all_grads),
                        ref.conv_transpose_backward(f64(gyt), f64(x), f64(wt), pt, all_grads)):
        np.testing.assert_allclose(got, exp, rtol=tol, atol=tol * 10)
    pp = P.pool_params(x.shape, 3, 2, 1, 1, True, False, None)
    ym, idx = pool_launch.max_pool(rt, x, pp, True)
    ym_ref, idx_ref = ref.max_pool(x, pp, True)
    np.testing.assert_array_equal(ym, ym_ref)
    np.testing.assert_array_equal(idx, idx_ref)
    gym = rng.standard_normal(ym.shape).astype(dtype)
    np.testing.assert_allclose(pool_launch.max_pool_backward(rt, gym, idx, x.shape),
                               ref.max_pool_backward(f64(gym), idx, x.shape), rtol=tol, atol=tol)
    ya = pool_launch.avg_pool(rt, x, pp)
    np.testing.assert_allclose(ya, ref.avg_pool(f64(x), pp), rtol=tol, atol=tol)
    np.testing.assert_allclose(pool_launch.avg_pool_backward(rt, gym, pp),
                               ref.avg_pool_backward(f64(gym), pp), rtol=tol, atol=tol)


def test_gemm_with_several_tiles_in_every_dimension(rt):
    """M, NC and K each span several 64/64/16 tiles with ragged edges (the grid's
    small shapes fit in one tile)."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 20, 11, 10))
    w = rng.standard_normal((70, 20, 3, 3))
    b = rng.standard_normal(70)
    p = P.conv_params(x.shape, w.shape, 1, 1, 1, 1)
    with conv_launch.override(path="gemm", splits=2):
        y = conv_launch.conv(rt, x, w, b, p)
        gy = rng.standard_normal(y.shape)
        grads = conv_launch.conv_backward(rt, gy, x, w, p, frozenset({"x", "weight", "bias"}))
        wt = rng.standard_normal((20, 70, 3, 3))
        pt = P.conv_transpose_params(x.shape, wt.shape, 2, 1, 1, 1, 1)
        yt = conv_launch.conv_transpose(rt, x, wt, None, pt)
    np.testing.assert_allclose(y, ref.conv(x, w, b, p), rtol=1e-11, atol=1e-11)
    for got, exp in zip(grads, ref.conv_backward(gy, x, w, p, {"x", "weight", "bias"})):
        np.testing.assert_allclose(got, exp, rtol=1e-11, atol=1e-10)
    np.testing.assert_allclose(yt, ref.conv_transpose(x, wt, None, pt), rtol=1e-11, atol=1e-11)


# ----------------------------------------------------------------------------- float16


def _f16_values(rng, n):
    """float16 values across the whole range: subnormals, normals, +-inf, NaN, zeros."""
    bits = rng.integers(0, 1 << 16, n, dtype=np.uint16)
    v = bits.view(np.float16)
    v[:6] = [0.0, -0.0, np.inf, -np.inf, np.nan, 6.0e-8]
    return v


@pytest.mark.parametrize("scale", [0.37, 1000.0, 1e-3, -3.0])
def test_float16_rounding_matches_numpy(rt, scale):
    """A 1x1 convolution by one weight: y = half(float(x) * float(w)), which must round
    exactly as numpy does (round to nearest even, subnormals, overflow to inf)."""
    rng = np.random.default_rng(8)
    x = _f16_values(rng, 4096).reshape(1, 1, 4096)
    w = np.full((1, 1, 1), scale, np.float16)
    p = P.conv_params(x.shape, w.shape, 1, 0, 1, 1)
    with conv_launch.override(path="direct"):
        y = conv_launch.conv(rt, x, w, None, p)
    with np.errstate(invalid="ignore", over="ignore"):
        # 0 + x*w: the kernel's sum starts at +0, so -0 products give +0.
        expected = (np.float32(0) + x.astype(np.float32) * np.float32(w[0, 0, 0])).astype(np.float16)
    assert y.dtype == np.float16
    np.testing.assert_array_equal(y.view(np.uint16)[~np.isnan(expected)],
                                  expected.view(np.uint16)[~np.isnan(expected)])
    assert np.isnan(y[np.isnan(expected)]).all()


def test_float16_ops_accumulate_in_float32(rt):
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 8, 9, 9)).astype(np.float16)
    w = (rng.standard_normal((16, 8, 3, 3)) / 8).astype(np.float16)
    p = P.conv_params(x.shape, w.shape, 1, 1, 1, 1)
    f64 = lambda a: a.astype(np.float64)  # noqa: E731
    y = conv_launch.conv(rt, x, w, None, p)
    assert y.dtype == np.float16
    # float32 accumulation: only the final rounding to half (~5e-4 relative) remains.
    np.testing.assert_allclose(y.astype(np.float64), ref.conv(f64(x), f64(w), None, p),
                               rtol=2e-3, atol=2e-3)
    gy = rng.standard_normal(y.shape).astype(np.float16)
    got = conv_launch.conv_backward(rt, gy, x, w, p, frozenset({"x", "weight", "bias"}))
    exp = ref.conv_backward(f64(gy), f64(x), f64(w), p, {"x", "weight", "bias"})
    for g, e in zip(got, exp):
        scale = np.abs(e).max()
        np.testing.assert_allclose(g.astype(np.float64), e, rtol=2e-3, atol=2e-3 * scale)
    pp = P.pool_params(x.shape, 3, 2, 1, 1, True)
    ym, idx = pool_launch.max_pool(rt, x, pp, True)
    ym_ref, idx_ref = ref.max_pool(x, pp, True)
    np.testing.assert_array_equal(ym, ym_ref)
    np.testing.assert_array_equal(idx, idx_ref)
    ya = pool_launch.avg_pool(rt, x, pp)
    np.testing.assert_allclose(ya.astype(np.float64), ref.avg_pool(f64(x), pp), rtol=2e-3, atol=2e-3)


def test_zero_channels(rt):
    """Empty channel dims launch nothing (a grid of 0 blocks is a CUDA error)."""
    x = np.ones((2, 0, 5, 5))
    w = np.ones((3, 0, 3, 3))
    p = P.conv_params(x.shape, w.shape, 1, 1, 1, 1)
    y = conv_launch.conv(rt, x, w, np.ones(3), p)
    np.testing.assert_array_equal(y, ref.conv(x, w, np.ones(3), p))
    gy = np.ones(y.shape)
    for got, exp in zip(conv_launch.conv_backward(rt, gy, x, w, p, frozenset({"x", "weight", "bias"})),
                        ref.conv_backward(gy, x, w, p, {"x", "weight", "bias"})):
        assert got.shape == exp.shape
        np.testing.assert_array_equal(got, exp)
    w0 = np.ones((0, 2, 3, 3))
    x2 = np.ones((2, 2, 5, 5))
    p0 = P.conv_params(x2.shape, w0.shape, 1, 1, 1, 1)
    assert conv_launch.conv(rt, x2, w0, None, p0).shape == (2, 0, 5, 5)
    got = conv_launch.conv_backward(rt, np.ones((2, 0, 5, 5)), x2, w0, p0,
                                    frozenset({"x", "weight", "bias"}))
    np.testing.assert_array_equal(got[0], 0)
    assert got[1].shape == (0, 2, 3, 3) and got[2].shape == (0,)


def test_unsupported_names_the_limit():
    p = P.conv_params((1, 70000, 4), (70000, 1, 1), 1, 0, 1, 70000)
    assert "groups" in conv_launch.unsupported("conv", p, "float32")
    assert conv_launch.unsupported("conv", _conv_case(2, 1)[3], "float32") is None


# ----------------------------------------------------------------------------- tiles, phases


def _all_conv_ops(rt, x, w, b, p, pt, wt):
    """Every convolution kernel on (x, w, b, p) and the transposed case (pt, wt):
    returns [(got, expected)]."""
    rng = np.random.default_rng(11)
    out = []
    y = conv_launch.conv(rt, x, w, b, p)
    gy = rng.standard_normal(y.shape)
    out.append((y, ref.conv(x, w, b, p)))
    out += list(zip(conv_launch.conv_backward(rt, gy, x, w, p, frozenset({"x", "weight", "bias"})),
                    ref.conv_backward(gy, x, w, p, {"x", "weight", "bias"})))
    yt = conv_launch.conv_transpose(rt, x, wt, None, pt)
    gyt = rng.standard_normal(yt.shape)
    out.append((yt, ref.conv_transpose(x, wt, None, pt)))
    out += list(zip(conv_launch.conv_transpose_backward(rt, gyt, x, wt, pt,
                                                        frozenset({"x", "weight"})),
                    ref.conv_transpose_backward(gyt, x, wt, pt, {"x", "weight"})))
    return [(g, e) for g, e in out if e is not None]


@pytest.mark.parametrize("tile", sorted(conv_launch.GEMM_TILES))
@pytest.mark.parametrize("rank", [1, 2, 3])
def test_every_gemm_tile_on_every_mode(rt, tile, rank):
    """Each tile shape, forced, on the three GEMM modes: rows and columns that do not
    fill a tile, strided + dilated + asymmetric padding (several ADJ phases with
    different tap counts, some empty), two groups, split-K weight gradients."""
    rng = np.random.default_rng(rank)
    spatial = (9, 7, 5)[-rank:] if rank > 1 else (13,)
    x = rng.standard_normal((3, 6) + spatial)
    k = (3, 2, 3)[:rank]
    w = rng.standard_normal((40, 3) + k)
    b = rng.standard_normal(40)
    p = P.conv_params(x.shape, w.shape, (2, 3, 1)[:rank], ((1, 2), (0, 1), (2, 0))[:rank],
                      (1, 2, 1)[:rank], 2)
    wt = rng.standard_normal((6, 20) + k)
    pt = P.conv_transpose_params(x.shape, wt.shape, (3, 2, 2)[:rank], ((1, 0), (2, 1), (0, 0))[:rank],
                                 (1, 0, 1)[:rank], 2, (2, 1, 1)[:rank])
    with conv_launch.override(path="gemm", tile=tile, splits=3):
        pairs = _all_conv_ops(rt, x, w, b, p, pt, wt)
    for got, exp in pairs:
        np.testing.assert_allclose(got, exp, rtol=1e-11, atol=1e-11)


def test_adjoint_phases_cover_outputs_no_tap_reaches(rt):
    """Stride larger than the dilated kernel: many outputs of a transposed convolution
    receive no tap at all (their phase has an empty row table) and must be exactly
    the bias."""
    rng = np.random.default_rng(12)
    x = rng.standard_normal((2, 4, 5, 4))
    wt = rng.standard_normal((4, 3, 2, 1))
    b = rng.standard_normal(3)
    pt = P.conv_transpose_params(x.shape, wt.shape, (4, 3), 0, (3, 2), 1, 1)
    y = conv_launch.conv_transpose(rt, x, wt, b, pt)
    np.testing.assert_allclose(y, ref.conv_transpose(x, wt, b, pt), rtol=1e-12, atol=1e-12)
    assert np.all(y[:, :, 2::4, :] == b[None, :, None, None])


@pytest.mark.parametrize("splits", [None, 3])  # one slice of (n, position), and three
@pytest.mark.parametrize("taps", [(3, 3), (7, 5)])  # one tap chunk, and several
def test_direct_weight_gradient_of_depthwise(rt, taps, splits):
    rng = np.random.default_rng(13)
    x = rng.standard_normal((3, 8, 11, 10))
    w = rng.standard_normal((16, 1) + taps)
    p = P.conv_params(x.shape, w.shape, (2, 1), (1, 2) if taps == (3, 3) else 1, (1, 2), 8)
    gy = rng.standard_normal((3, 16) + p.out_shape)
    with conv_launch.override(path="direct", splits=splits):
        _, gw, _ = conv_launch.conv_backward(rt, gy, x, w, p, frozenset({"weight"}))
        _, gw2, _ = conv_launch.conv_backward(rt, gy, x, w, p, frozenset({"weight"}))
    np.testing.assert_allclose(gw, ref.conv_backward(gy, x, w, p, {"weight"})[1],
                               rtol=1e-12, atol=1e-12)
    assert gw.tobytes() == gw2.tobytes()


@pytest.mark.parametrize("stride", [1, (2, 1)])
def test_direct_3x3_instantiation(rt, stride):
    """The compile-time 3x3 conv_direct (unrolled taps) on forward, input gradient and
    transposed convolution, with padding that cuts taps at every border."""
    rng = np.random.default_rng(14)
    x = rng.standard_normal((2, 6, 9, 8))
    w = rng.standard_normal((6, 1, 3, 3))
    b = rng.standard_normal(6)
    p = P.conv_params(x.shape, w.shape, stride, ((2, 0), (1, 2)), (1, 2), 6)
    wt = rng.standard_normal((6, 2, 3, 3))
    pt = P.conv_transpose_params(x.shape, wt.shape, stride, 1, 0, 6, (2, 1))
    with conv_launch.override(path="direct"):
        y = conv_launch.conv(rt, x, w, b, p)
        gy = rng.standard_normal(y.shape)
        gx, _, _ = conv_launch.conv_backward(rt, gy, x, w, p, frozenset({"x"}))
        yt = conv_launch.conv_transpose(rt, x, wt, None, pt)
    np.testing.assert_allclose(y, ref.conv(x, w, b, p), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gx, ref.conv_backward(gy, x, w, p, {"x"})[0], rtol=1e-12,
                               atol=1e-12)
    np.testing.assert_allclose(yt, ref.conv_transpose(x, wt, None, pt), rtol=1e-12, atol=1e-12)
