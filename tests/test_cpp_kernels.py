"""The cpp backend's own guarantees, beyond the shared grid (tests/test_backend_grid.py):
bit-identical results for any thread count, the GIL released inside kernels, the
portable SIMD path, the floating-point state restored, bounded workspace, and its
error paths."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import cnnfast
from cnnfast import params as P
from cnnfast.backends.numpy import backend as ref
from cnnfast.registry import get_backend
from helpers.simd import ALL_PATHS, skip_unless_testable

_cpp = pytest.importorskip("cnnfast.backends.cpp._cpp", reason="C++ extension not built")
if get_backend("cpp").reason is not None:  # pragma: no cover - depends on the build
    pytest.skip(f"cpp backend unavailable: {get_backend('cpp').reason}",
                allow_module_level=True)

RNG = np.random.default_rng(1234)


def _arr(shape, dtype=np.float32):
    return RNG.standard_normal(shape).astype(dtype)


@pytest.fixture
def simd():
    yield _cpp.set_simd_path
    _cpp.set_simd_path("auto")


# Convolutions that reach every kernel: the stride-1 product (+ its gather input
# gradient), the general im2col product (stride 2, 3-d, asymmetric padding), the
# direct depthwise kernels, one input channel feeding many outputs, and groups.
CONV_CASES = [
    dict(x=(3, 8, 13, 11), w=(12, 8, 3, 3), stride=1, padding=1, groups=1),
    dict(x=(2, 6, 17, 15), w=(10, 6, 4, 3), stride=2, padding=((1, 2), (0, 1)), groups=1),
    dict(x=(2, 4, 6, 7, 5), w=(8, 2, 3, 2, 3), stride=(1, 2, 1), padding=1, groups=2),
    dict(x=(3, 16, 12, 12), w=(16, 1, 3, 3), stride=1, padding=1, groups=16),
    dict(x=(4, 1, 14, 14), w=(32, 1, 3, 3), stride=1, padding=0, groups=1),
    dict(x=(2, 9, 40), w=(15, 3, 5), stride=1, padding=2, groups=3, dilation=2),
]


def _conv_kwargs(case):
    return dict(stride=case["stride"], padding=case["padding"], groups=case["groups"],
                dilation=case.get("dilation", 1))


def _run_all_ops(dtype):
    """Every op of the backend on fixed inputs: a list of result arrays."""
    rng = np.random.default_rng(7)
    out = []
    for case in CONV_CASES:
        x = rng.standard_normal(case["x"]).astype(dtype)
        w = rng.standard_normal(case["w"]).astype(dtype)
        b = rng.standard_normal(case["w"][0]).astype(dtype)
        kw = _conv_kwargs(case)
        y = cnnfast.conv(x, w, b, backend="cpp", **kw)
        gy = rng.standard_normal(y.shape).astype(dtype)
        out.append(y)
        out.extend(cnnfast.conv_backward(gy, x, w, backend="cpp", **kw))
        # the same weight read as a transposed convolution from y-space back to x-space
        wt = rng.standard_normal((case["x"][1], case["w"][0] // case["groups"])
                                 + case["w"][2:]).astype(dtype)
        yt = cnnfast.conv_transpose(x, wt, None, stride=kw["stride"], groups=kw["groups"],
                                    dilation=kw["dilation"], backend="cpp")
        gyt = rng.standard_normal(yt.shape).astype(dtype)
        out.append(yt)
        out.extend(cnnfast.conv_transpose_backward(gyt, x, wt, stride=kw["stride"],
                                                   groups=kw["groups"],
                                                   dilation=kw["dilation"], backend="cpp"))
    x = rng.standard_normal((3, 5, 17, 14)).astype(dtype)
    y, idx = cnnfast.max_pool(x, 3, 2, 1, ceil_mode=True, return_indices=True, backend="cpp")
    out += [y, idx, cnnfast.max_pool_backward(np.ones_like(y), idx, x.shape, backend="cpp")]
    a = cnnfast.avg_pool(x, (2, 3), (2, 1), ((1, 0), (1, 1)), ceil_mode=True,
                         count_include_pad=False, backend="cpp")
    out += [a, cnnfast.avg_pool_backward(np.ones_like(a), x.shape, (2, 3), (2, 1),
                                         ((1, 0), (1, 1)), ceil_mode=True,
                                         count_include_pad=False, backend="cpp")]
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bit_identical_for_any_thread_count(threads, dtype):
    threads(1)
    one = _run_all_ops(dtype)
    for n in (2, 3):
        threads(n)
        other = _run_all_ops(dtype)
        assert len(one) == len(other)
        for i, (a, b) in enumerate(zip(one, other)):
            assert a.dtype == b.dtype and a.shape == b.shape
            assert np.array_equal(a, b, equal_nan=True), f"result {i} differs with {n} threads"


def test_weight_gradient_split_over_rows_is_deterministic(threads):
    # Few channels per group: the weight gradient is split over output rows too,
    # differently for each thread count.
    x = _arr((5, 2, 20, 20))
    w = _arr((48, 2, 3, 3))
    gy = _arr((5, 48, 18, 18))
    res = []
    for n in (1, 2, 4):
        threads(n)
        res.append(cnnfast.conv_backward(gy, x, w, needs=("weight",), backend="cpp")[1])
    assert np.array_equal(res[0], res[1]) and np.array_equal(res[0], res[2])
    p = P.conv_params(x.shape, w.shape, 1, 0, 1, 1)
    np.testing.assert_allclose(res[0], ref.conv_backward(gy.astype(np.float64),
                                                         x.astype(np.float64),
                                                         w.astype(np.float64), p,
                                                         {"weight"})[1], rtol=1e-4,
                               atol=1e-3)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("path", ALL_PATHS)
def test_simd_paths_match_the_reference(simd, path, dtype):
    skip_unless_testable(path)
    simd(path)
    assert _cpp.kernel_path() == path
    tol = 1e-10 if dtype == np.float64 else 2e-4
    for case in CONV_CASES:
        x = _arr(case["x"], dtype).astype(np.float64)
        w = _arr(case["w"], dtype).astype(np.float64)
        b = _arr(case["w"][0], dtype).astype(np.float64)
        kw = _conv_kwargs(case)
        p = P.conv_params(x.shape, w.shape, kw["stride"], kw["padding"], kw["dilation"],
                          kw["groups"])
        c = [a.astype(dtype) for a in (x, w, b)]
        y = cnnfast.conv(*c, backend="cpp", **kw)
        assert y.dtype == dtype
        np.testing.assert_allclose(y, ref.conv(x, w, b, p), rtol=tol, atol=tol * 10)
        gy = _arr(y.shape, dtype).astype(np.float64)
        got = cnnfast.conv_backward(gy.astype(dtype), c[0], c[1], backend="cpp", **kw)
        want = ref.conv_backward(gy, x, w, p, {"x", "weight", "bias"})
        for g, e in zip(got, want):
            np.testing.assert_allclose(g, e, rtol=tol, atol=tol * 10 * max(1, np.abs(e).max()))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("path", ALL_PATHS)
def test_gemm_tile_edges_match_the_reference(simd, path, dtype):
    """Every row count of a micro-kernel tile and every column count of its last one:
    M (output channels / input channels) across 1 .. 2 MR + 1 (MR = 6, 8 on AVX-512)
    and N (pixels) across 1 .. 97, past 2 NR + 1 for every NR (4 .. 48; masked stores
    on AVX-512), on the im2col GEMM path and the stride-1 one (whose 1x1 forward packs
    its panels from x and writes y directly), forward and both gradients."""
    skip_unless_testable(path)
    simd(path)
    rng = np.random.default_rng(11)
    tol = 1e-12 if dtype == np.float64 else 1e-5  # 3-5 terms per output, |terms| <~ 10
    # one row of `cols` pixels, then images of several rows (tiles of whole rows)
    shapes = [(o, c, 1, cols) for o, c in ((1, 3), (5, 7), (8, 6), (9, 9), (13, 4), (17, 16))
              for cols in range(1, 98, 1 if o in (5, 17) else 7)]
    shapes += [(o, 5, h, wd) for o in (3, 8)
               for h, wd in ((7, 9), (13, 11), (3, 50), (40, 41))]
    for o, c, h, cols in shapes:
        x = rng.standard_normal((2 if h > 1 else 1, c, h, cols))
        w = rng.standard_normal((o, c, 1, 1))
        gy = rng.standard_normal((x.shape[0], o, h, cols))
        p = P.conv_params(x.shape, w.shape, 1, 0, 1, 1)
        want = ref.conv_backward(gy, x, w, p, {"x", "weight", "bias"})
        for alg in ("gemm", "gemm-s1"):
            y = cnnfast.conv(x.astype(dtype), w.astype(dtype), backend="cpp",
                             algorithm=alg)
            np.testing.assert_allclose(y, ref.conv(x, w, None, p), rtol=tol, atol=tol)
            got = cnnfast.conv_backward(gy.astype(dtype), x.astype(dtype),
                                        w.astype(dtype), backend="cpp", algorithm=alg)
            for g, e in zip(got, want):
                np.testing.assert_allclose(g, e, rtol=tol, atol=tol * max(1, cols / 8))


def test_portable_path_from_the_environment():
    code = ("import numpy as np, cnnfast; from cnnfast.backends.cpp import _cpp\n"
            "x = np.arange(2*3*9*9, dtype=np.float32).reshape(2, 3, 9, 9) / 100\n"
            "w = np.ones((4, 3, 3, 3), np.float32)\n"
            "y = cnnfast.conv(x, w, padding=1, backend='cpp')\n"
            "e = cnnfast.conv(x, w, padding=1, backend='numpy')\n"
            "print(_cpp.kernel_path(), float(abs(y - e).max()))\n")
    env = dict(os.environ, CNNFAST_SIMD="portable")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True)
    path, err = out.stdout.split()
    assert path == "portable"
    assert float(err) < 1e-4


def test_set_simd_path_rejects_unknown_names():
    with pytest.raises(ValueError, match="expected 'auto', 'portable', 'avx2' or 'avx512'"):
        _cpp.set_simd_path("avx1024")
    assert _cpp.kernel_path() == _cpp.simd_path()


def test_set_simd_path_refuses_a_path_this_cpu_cannot_run():
    missing = [p for p in ALL_PATHS if p not in _cpp.simd_paths()]
    if not missing:
        pytest.skip("this build and CPU run every SIMD path")
    with pytest.raises(ValueError, match="cannot run it"):
        _cpp.set_simd_path(missing[-1])
    assert _cpp.kernel_path() == _cpp.simd_path()


def test_floating_point_state_is_restored():
    # Kernels flush denormals to zero; the caller's MXCSR must come back unchanged.
    tiny = np.float32(1e-39)  # a float32 denormal
    assert tiny * np.float32(1.0) != 0
    x = _arr((2, 3, 10, 10))
    cnnfast.conv(x, _arr((4, 3, 3, 3)), backend="cpp")
    cnnfast.max_pool(x, 2, backend="cpp")
    assert np.float32(1e-39) * np.float32(1.0) != 0
    assert np.float64(1e-310) * 1.0 != 0


def _conv_job(x, w, reps=3):
    def job():
        for _ in range(reps):
            cnnfast.conv(x, w, padding=1, backend="cpp")
    return job


def test_gil_is_released_during_a_kernel(threads):
    """While one thread is inside a long kernel, another keeps running Python: the
    longest pause it sees is far shorter than the kernel (with the GIL held it would
    be the whole kernel). Robust on a busy machine: it needs no spare core, and the
    kernel (~25 ms alone) is long against a scheduler time slice (a 7.8 ms kernel once
    saw a 4 ms stall in a loaded CI run)."""
    threads(1)
    x = _arr((8, 64, 64, 64))
    w = _arr((64, 64, 3, 3))
    job = _conv_job(x, w, reps=1)
    job()
    t0 = time.perf_counter()
    job()
    kernel = time.perf_counter() - t0
    for _ in range(3):
        worker = threading.Thread(target=job)
        last = time.perf_counter()
        worker.start()
        gap = 0.0
        while worker.is_alive():
            now = time.perf_counter()
            gap = max(gap, now - last)
            last = now
        worker.join()
        if gap < 0.5 * kernel:
            return
    pytest.fail(f"the main thread stalled {gap * 1e3:.1f} ms during a {kernel * 1e3:.1f} ms "
                f"kernel: GIL held?")


def test_two_threads_beat_serial_calls(threads):
    """Two Python threads running kernels at once take less wall time than one after
    the other (one kernel thread each; retried to ride out a noisy machine, skipped
    when the machine has no second core to give right now)."""
    if (os.cpu_count() or 1) < 2:
        pytest.skip("needs two cores")
    x = _arr((4, 64, 40, 40))  # ~15 ms of kernels per job: thread start-up is noise
    w = _arr((64, 64, 3, 3))
    job = _conv_job(x, w)
    threads(1)
    job()  # warm up the workspace of this thread
    best = capacity = None
    for _ in range(5):
        threads(1)
        t0 = time.perf_counter()
        job()
        job()
        serial = time.perf_counter() - t0
        workers = [threading.Thread(target=job) for _ in range(2)]
        t0 = time.perf_counter()
        for t in workers:
            t.start()
        for t in workers:
            t.join()
        ratio = (time.perf_counter() - t0) / serial
        best = ratio if best is None else min(best, ratio)
        if best < 0.85:
            return
        # the same work on two OpenMP threads in one call: the machine's spare capacity
        threads(2)
        t0 = time.perf_counter()
        job()
        job()
        omp = (time.perf_counter() - t0) / serial
        capacity = omp if capacity is None else min(capacity, omp)
    if capacity is not None and capacity > 0.85:
        pytest.skip(f"no spare core now (two OpenMP threads took {capacity:.2f} of the "
                    f"serial time too)")
    pytest.fail(f"two Python threads took {best:.2f} of the serial time while two OpenMP "
                f"threads took {capacity:.2f}: GIL held?")


def test_max_pool_backward_binding_rejects_out_of_range_indices():
    # The dispatcher validates indices too; the binding must not write out of
    # bounds even when called directly.
    gy = np.ones((1, 1, 2, 2), np.float32)
    idx = np.array([0, 1, 2, 99], np.int64).reshape(1, 1, 2, 2)
    with pytest.raises(ValueError, match="outside"):
        _cpp.max_pool_backward(gy, idx, np.empty((1, 1, 4, 4), np.float32), 1)


def test_bindings_check_their_arrays():
    x = _arr((1, 1, 4, 4))
    w = _arr((1, 1, 3, 3))
    geo = _cpp.ConvGeometry(batch=1, in_channels=1, out_channels=1, groups=1,
                            in_size=(1, 4, 4), out_size=(1, 2, 2), kernel=(1, 3, 3),
                            stride=(1, 1, 1), dilation=(1, 1, 1), pad_before=(0, 0, 0))
    with pytest.raises(ValueError, match="elements"):
        _cpp.conv_forward(x, w, None, np.empty((1, 1, 3, 3), np.float32), geo, 1)
    with pytest.raises(TypeError, match="dtype"):
        _cpp.conv_forward(x, w.astype(np.float64), None, np.empty((1, 1, 2, 2), np.float32),
                          geo, 1)
    with pytest.raises(ValueError, match="read-only"):
        y = np.empty((1, 1, 2, 2), np.float32)
        y.flags.writeable = False
        _cpp.conv_forward(x, w, None, y, geo, 1)


def _conv_geometry(**over):
    fields = dict(batch=1, in_channels=2, out_channels=4, groups=2, in_size=(1, 5, 5),
                  out_size=(1, 3, 3), kernel=(1, 3, 3), stride=(1, 1, 1), dilation=(1, 1, 1),
                  pad_before=(0, 0, 0))
    fields.update(over)
    return _cpp.ConvGeometry(**fields)


def test_geometry_is_named_and_checked_once():
    # The geometry crosses into C++ by field name, is checked when made and is
    # read-only afterwards.
    g = _conv_geometry()
    assert (g.batch, g.in_channels, g.out_channels, g.groups) == (1, 2, 4, 2)
    assert g.in_size == (1, 5, 5) and g.kernel == (1, 3, 3) and g.pad_before == (0, 0, 0)
    assert "ConvGeometry(batch=1" in repr(g)
    with pytest.raises(AttributeError):
        g.batch = 2
    with pytest.raises(TypeError):
        _cpp.ConvGeometry(1, 2, 4, 2, (1, 5, 5), (1, 3, 3), (1, 3, 3), (1, 1, 1), (1, 1, 1),
                          (0, 0, 0))  # keywords only
    for over, match in [(dict(in_size=(1, 0, 5)), "in_size"),
                        (dict(kernel=(3, 3)), "kernel must have 3 entries"),
                        (dict(stride=(1, 0, 1)), "stride"),
                        (dict(dilation=(1, 1, -1)), "dilation"),
                        (dict(pad_before=(0, -1, 0)), "pad_before"),
                        (dict(batch=0), "batch"),
                        (dict(groups=3), "groups 3 must divide"),
                        (dict(batch=2**40, in_channels=2**20, groups=1), "overflow")]:
        with pytest.raises(ValueError, match=match):
            _conv_geometry(**over)
    p = _cpp.PoolGeometry(planes=3, in_size=(1, 4, 4), out_size=(1, 2, 2), kernel=(1, 2, 2),
                          stride=(1, 2, 2), dilation=(1, 1, 1), pad_before=(0, 0, 0))
    assert p.planes == 3 and p.out_size == (1, 2, 2)
    with pytest.raises(ValueError, match="pool geometry: planes"):
        _cpp.PoolGeometry(planes=-1, in_size=(1, 4, 4), out_size=(1, 2, 2), kernel=(1, 2, 2),
                          stride=(1, 2, 2), dilation=(1, 1, 1), pad_before=(0, 0, 0))
    # the kernels take nothing else
    x, w = _arr((1, 2, 5, 5)), _arr((4, 1, 3, 3))
    with pytest.raises(TypeError):
        _cpp.conv_forward(x, w, None, np.empty((1, 4, 3, 3), np.float32),
                          [1, 2, 4, 2, 1, 5, 5, 1, 3, 3, 1, 3, 3, 1, 1, 1, 1, 1, 1, 0, 0, 0], 1)


def test_workspace_is_bounded_by_tiles():
    # A conv whose whole-batch im2col would be ~150 MB must run in a few MB of
    # per-thread buffers (this call's: the workspace earlier tests grew is given back).
    _cpp.release_workspace(max(8, cnnfast.get_num_threads()))
    x = _arr((8, 32, 64, 64))
    w = _arr((32, 32, 3, 3))
    cnnfast.conv(x, w, padding=1, backend="cpp")
    cnnfast.conv_backward(x, x, w, padding=1, backend="cpp")
    held, peak = _cpp.workspace_bytes()
    full_im2col = 8 * 32 * 9 * 64 * 64 * 4
    assert 0 < held <= peak < full_im2col / 8


def test_debug_build_when_sanitizing():
    """Under .ci/sanitize_cpp.sh the extension must be the CNNFAST_DEBUG build."""
    if os.environ.get("CNNFAST_SANITIZE_EXPECT_DEBUG") != "1":
        pytest.skip("only meaningful under .ci/sanitize_cpp.sh")
    assert _cpp.debug_build()
