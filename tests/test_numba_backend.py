"""The numba backend beyond the shared grid: determinism (run to run and across
thread counts), thread safety, NaN/inf semantics of max pooling, the code paths
the backend picks (product, direct, gather, flipped-weight adjoint, stride
phases), threads and compile flags, and the ``cnnfast warmup`` command.

Shapes are small: every kernel is compiled once per session (or loaded from
numba's on-disk cache) and each test then runs in milliseconds.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

numba = pytest.importorskip("numba", reason="numba is not installed")

import cnnfast  # noqa: E402
from cnnfast import params as P  # noqa: E402
from cnnfast.backends.numba import backend as nb
from cnnfast.backends.numpy import backend as ref

pytestmark = pytest.mark.skipif(nb.availability() is not None,
                                reason=f"numba backend unavailable: {nb.availability()}")

ALL = ("x", "weight", "bias")


def _rand(rng, shape, dtype=np.float32):
    return rng.standard_normal(shape).astype(dtype)


def _workload(seed=0, dtype=np.float32):
    """Every op once, on shapes that reach every kernel: a dense conv (product),
    a depthwise conv (direct), strided adjoints (gather) and both poolings."""
    rng = np.random.default_rng(seed)
    x = _rand(rng, (3, 8, 13, 11), dtype)
    w = _rand(rng, (12, 8, 3, 3), dtype)
    wd = _rand(rng, (8, 1, 3, 3), dtype)
    b = _rand(rng, (12,), dtype)
    out = {}
    out["conv"] = cnnfast.conv(x, w, b, padding=1, backend="numba")
    out["conv_s2"] = cnnfast.conv(x, w, b, stride=2, padding=(1, 2), backend="numba")
    out["dw"] = cnnfast.conv(x, wd, groups=8, padding=1, backend="numba")
    gy = _rand(rng, out["conv"].shape, dtype)
    out["conv_bw"] = cnnfast.conv_backward(gy, x, w, padding=1, backend="numba")
    gy2 = _rand(rng, out["conv_s2"].shape, dtype)
    out["conv_s2_bw"] = cnnfast.conv_backward(gy2, x, w, stride=2, padding=(1, 2),
                                              backend="numba")
    wt = _rand(rng, (8, 4, 3, 3), dtype)
    yt = cnnfast.conv_transpose(x, wt, stride=2, padding=1, output_padding=1,
                                backend="numba")
    out["convt"] = yt
    out["convt_bw"] = cnnfast.conv_transpose_backward(
        _rand(rng, yt.shape, dtype), x, wt, stride=2, padding=1, output_padding=1,
        backend="numba")
    y, idx = cnnfast.max_pool(x, 3, 2, 1, return_indices=True, backend="numba")
    out["max"] = (y, idx)
    out["max_bw"] = cnnfast.max_pool_backward(_rand(rng, y.shape, dtype), idx, x.shape,
                                              backend="numba")
    ya = cnnfast.avg_pool(x, 3, 2, 1, ceil_mode=True, backend="numba")
    out["avg"] = ya
    out["avg_bw"] = cnnfast.avg_pool_backward(_rand(rng, ya.shape, dtype), x.shape, 3, 2, 1,
                                              ceil_mode=True, backend="numba")
    return out


def _assert_identical(a, b):
    assert a.keys() == b.keys()
    for key in a:
        va, vb = a[key], b[key]
        va = va if isinstance(va, tuple) else (va,)
        vb = vb if isinstance(vb, tuple) else (vb,)
        for ea, eb in zip(va, vb):
            # Bit-identical, NaN included (none expected here).
            assert ea.dtype == eb.dtype and ea.shape == eb.shape, key
            assert ea.tobytes() == eb.tobytes(), f"{key}: results differ"


# ----------------------------------------------------------------------------- determinism


def test_bit_identical_run_to_run():
    _assert_identical(_workload(), _workload())


def test_bit_identical_across_thread_counts(threads):
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("numba has a single thread here (NUMBA_NUM_THREADS=1)")
    cnnfast.set_num_threads(1)
    one = _workload()
    assert numba.get_num_threads() == 1
    cnnfast.set_num_threads(2)
    two = _workload()
    assert numba.get_num_threads() == 2
    _assert_identical(one, two)


def test_thread_count_is_capped_by_numba(threads):
    cnnfast.set_num_threads(cnnfast.threads.MAX_THREADS)  # far above numba's pool
    _workload()
    assert numba.get_num_threads() == numba.config.NUMBA_NUM_THREADS


# ----------------------------------------------------------------------------- threads


def test_concurrent_calls_from_python_threads():
    seeds = list(range(6))
    expected = {s: _workload(s) for s in seeds}
    results, errors = {}, []
    barrier = threading.Barrier(len(seeds))

    def work(seed):
        try:
            barrier.wait()
            for _ in range(3):
                results[seed] = _workload(seed)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(s,)) for s in seeds]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert not errors, errors
    for s in seeds:
        _assert_identical(results[s], expected[s])


# ----------------------------------------------------------------------------- max pool


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_max_pool_nan_wins_first_nan_index(dtype):
    x = np.zeros((1, 1, 4, 4), dtype)
    x[0, 0, 0, 1] = np.nan
    x[0, 0, 1, 0] = np.nan
    x[0, 0, 0, 0] = 5.0
    x[0, 0, 2, 2] = np.nan
    y, idx = cnnfast.max_pool(x, 2, return_indices=True, backend="numba")
    assert np.isnan(y[0, 0, 0, 0]) and idx[0, 0, 0, 0] == 1  # first NaN in scan order
    assert np.isnan(y[0, 0, 1, 1]) and idx[0, 0, 1, 1] == 10
    assert y[0, 0, 0, 1] == 0 and idx[0, 0, 0, 1] == 2  # ties: first maximum
    # Without indices the NaN is kept too, even when a larger value follows it.
    x[0, 0, 1, 1] = 7.0
    y2 = cnnfast.max_pool(x, 2, backend="numba")
    assert np.isnan(y2[0, 0, 0, 0])


def test_max_pool_nan_in_1d_and_3d():
    x1 = np.array([[[1.0, np.nan, 3.0, 4.0, 9.0, np.nan]]])
    y1 = cnnfast.max_pool(x1, 3, 1, backend="numba")
    assert np.isnan(y1[0, 0, :2]).all() and y1[0, 0, 2] == 9 and np.isnan(y1[0, 0, 3])
    x3 = np.zeros((1, 1, 2, 2, 2), np.float32)
    x3[0, 0, 1, 1, 0] = np.nan
    y3, i3 = cnnfast.max_pool(x3, 2, return_indices=True, backend="numba")
    assert np.isnan(y3[0, 0, 0, 0, 0]) and i3[0, 0, 0, 0, 0] == 6


def test_max_pool_all_minus_inf_window_returns_first_inbounds_cell():
    x = np.full((1, 1, 3, 3), -np.inf)
    y, idx = cnnfast.max_pool(x, 2, 2, 1, return_indices=True, backend="numba")
    assert np.all(y == -np.inf)
    # Window (0, 0) covers padding and cell 0 only; (1, 1) starts at cell (1, 1) = 4.
    assert idx[0, 0, 0, 0] == 0 and idx[0, 0, 1, 1] == 4 and idx[0, 0, 0, 1] == 1


def test_max_pool_inf_beats_finite_and_nan_beats_inf():
    x = np.array([[[1.0, np.inf, -np.inf, np.nan, np.inf]]])
    y, idx = cnnfast.max_pool(x, 2, 1, return_indices=True, backend="numba")
    assert y[0, 0, 0] == np.inf and idx[0, 0, 0] == 1
    assert y[0, 0, 1] == np.inf and idx[0, 0, 1] == 1
    assert np.isnan(y[0, 0, 2]) and idx[0, 0, 2] == 3
    assert np.isnan(y[0, 0, 3]) and idx[0, 0, 3] == 3


# ----------------------------------------------------------------------------- code paths


def _check_conv(x, w, b, groups, **kw):
    p = P.conv_params(x.shape, w.shape, kw.get("stride", 1), kw.get("padding", 0),
                      kw.get("dilation", 1), groups)
    y = cnnfast.conv(x, w, b, groups=groups, backend="numba", **kw)
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    b64 = None if b is None else b.astype(np.float64)
    exp = ref.conv(x64, w64, b64, p)
    tol = 1e-4 if x.dtype == np.float32 else 1e-10
    np.testing.assert_allclose(y, exp, rtol=tol, atol=tol * max(1.0, np.abs(exp).max()))
    gy = np.random.default_rng(9).standard_normal(y.shape).astype(x.dtype)
    got = cnnfast.conv_backward(gy, x, w, groups=groups, backend="numba", **kw)
    want = ref.conv_backward(gy.astype(np.float64), x64, w64, p, frozenset(ALL))
    for g, e in zip(got, want):
        np.testing.assert_allclose(g, e, rtol=tol, atol=tol * max(1.0, np.abs(e).max()))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_product_path_tails(dtype):
    """Output channels not a multiple of the register tile, pixel counts not a
    multiple of the panel, several tiles per image."""
    rng = np.random.default_rng(1)
    x = _rand(rng, (2, 3, 23, 19), dtype)
    w = _rand(rng, (7, 3, 3, 2), dtype)
    _check_conv(x, w, _rand(rng, (7,), dtype), 1, padding=((2, 0), (1, 3)), dilation=(1, 2))


def test_product_path_long_reduction():
    """A long reduction (K = 1152) shrinks the pixel tile to one panel."""
    rng = np.random.default_rng(2)
    x = _rand(rng, (1, 128, 9, 9))
    w = _rand(rng, (8, 128, 3, 3)) * 0.1
    _check_conv(x, w, None, 1, padding=1)


def test_1x1_conv_is_exact_product():
    rng = np.random.default_rng(3)
    x = _rand(rng, (2, 16, 7, 5), np.float64)
    w = _rand(rng, (8, 16, 1, 1), np.float64)
    y = cnnfast.conv(x, w, backend="numba")
    np.testing.assert_allclose(y, np.einsum("oc,nchw->nohw", w[:, :, 0, 0], x), rtol=1e-12,
                               atol=1e-12)


def test_direct_path_depthwise_and_narrow_groups():
    rng = np.random.default_rng(4)
    x = _rand(rng, (2, 6, 10, 9))
    _check_conv(x, _rand(rng, (6, 1, 3, 3)), _rand(rng, (6,)), 6, padding=1)
    _check_conv(x, _rand(rng, (12, 3, 3, 3)), None, 2, stride=2, padding=(0, 1))
    _check_conv(x, _rand(rng, (18, 1, 5, 3)), None, 6, stride=(2, 1), dilation=(1, 2))


def test_adjoint_with_padding_beyond_kernel_extent():
    """Stride 1 and padding > dilation*(k-1): the flipped-weight adjoint crops
    (negative padding) instead of padding."""
    rng = np.random.default_rng(5)
    x = _rand(rng, (2, 4, 6, 6), np.float64)
    _check_conv(x, _rand(rng, (8, 4, 3, 3), np.float64), None, 1, padding=(3, (4, 2)))
    wt = _rand(rng, (4, 8, 2, 2), np.float64)
    p = P.conv_transpose_params(x.shape, wt.shape, 1, 1, 0, 1, 1)
    y = cnnfast.conv_transpose(x, wt, padding=1, backend="numba")
    np.testing.assert_allclose(y, ref.conv_transpose(x, wt, None, p), rtol=1e-10)


@pytest.mark.parametrize("case", [
    # (x spatial, kernel, stride, padding, dilation, output_padding, groups, out/group)
    ((5, 6), (4, 4), 2, 1, 1, 0, 1, 6),          # every phase has 2x2 taps
    ((4, 5), (2, 3), 3, (0, 1), 1, (2, 1), 2, 3),  # stride > kernel: tap-less phases
    ((5, 4), (3, 2), (2, 3), (2, 1), 2, 1, 1, 2),  # gcd(d, s) = 2: tap-less phases
    ((6, 5), (3, 3), 3, 1, 2, 1, 3, 1),          # tap spacing d (gcd 1), depthwise-like
    ((3, 4, 3), (2, 3, 2), (2, 1, 3), (1, 0, 1), 1, (1, 0, 2), 1, 5),
])
def test_strided_adjoint_by_stride_phases(case):
    """Strided transposed conv (and so the input gradient of strided conv) runs
    as one stride-1 correlation per stride phase: phases with no tap get the
    bias alone, tap spacing is d / gcd(d, s), padding and output padding shift
    the phases."""
    sp, k, s, pad, d, op, groups, og = case
    rng = np.random.default_rng(11)
    x = _rand(rng, (2, 2 * groups) + sp, np.float64)
    wt = _rand(rng, (2 * groups, og) + k, np.float64)
    b = _rand(rng, (og * groups,), np.float64)
    p = P.conv_transpose_params(x.shape, wt.shape, s, pad, op, groups, d)
    y = cnnfast.conv_transpose(x, wt, b, stride=s, padding=pad, output_padding=op,
                               groups=groups, dilation=d, backend="numba")
    np.testing.assert_allclose(y, ref.conv_transpose(x, wt, b, p), rtol=1e-10, atol=1e-10)
    # The same kernel as the input gradient of the strided conv.
    w = _rand(rng, (og * groups, 2) + k, np.float64)
    xc = _rand(rng, (2, 2 * groups) + tuple(v + 5 for v in sp), np.float64)
    pc = P.conv_params(xc.shape, w.shape, s, pad, d, groups)
    gy = _rand(rng, (2, og * groups) + tuple(pc.out_shape), np.float64)
    gx = cnnfast.conv_backward(gy, xc, w, stride=s, padding=pad, dilation=d, groups=groups,
                               needs=("x",), backend="numba")[0]
    want = ref.conv_backward(gy, xc, w, pc, frozenset({"x"}))[0]
    np.testing.assert_allclose(gx, want, rtol=1e-10, atol=1e-10)


# Weight gradients on the "gemm" path (``kernels.wgrad``): image by image (wide
# rows of >= ROWS_STACK_BELOW positions, the input used in place or copied into
# stride phases) and stacked (small images side by side), several chunks and
# units, k blocks and output blocks with tails, groups, ranks 1-3.
_WGRAD_CASES = [
    # (x shape, w shape, conv keywords)
    ((64, 1, 28, 28), (64, 1, 3, 3), dict()),                         # in place, 1 channel
    ((3, 5, 40, 37), (7, 5, 3, 2), dict(padding=(2, (0, 3)), dilation=(1, 2))),
    ((2, 3, 50, 47), (10, 3, 7, 7), dict(stride=2, padding=3)),        # stem-like, phases
    ((5, 8, 9, 11), (10, 4, 3, 3), dict(stride=(2, 3), groups=2)),     # stacked, groups
    ((6, 16, 7, 7), (9, 16, 1, 1), dict()),                            # stacked 1x1
    ((3, 6, 700), (8, 6, 9), dict(padding=4)),                         # rank 1
    ((2, 4, 6, 9, 10), (5, 4, 3, 2, 3),
     dict(stride=(1, 2, 1), padding=1, dilation=(2, 1, 1))),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", _WGRAD_CASES)
def test_weight_grad_rows_matches_reference(case, dtype):
    xs, ws, kw = case
    rng = np.random.default_rng(13)
    x, w = _rand(rng, xs, dtype), _rand(rng, ws, dtype)
    groups = kw.get("groups", 1)
    p = P.conv_params(xs, ws, kw.get("stride", 1), kw.get("padding", 0),
                      kw.get("dilation", 1), groups)
    gy = _rand(rng, (xs[0], ws[0]) + tuple(p.out_shape), dtype)
    gw = cnnfast.conv_backward(gy, x, w, needs=("weight",), backend="numba", **kw)[1]
    assert nb.last_paths() == {"grad_weight": "gemm"}
    want = ref.conv_backward(gy.astype(np.float64), x.astype(np.float64),
                             w.astype(np.float64), p, frozenset({"weight"}))[1]
    tol = 1e-4 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(gw, want, rtol=tol, atol=tol * np.abs(want).max())
    # The transposed convolution's weight gradient: the same kernel, roles swapped.
    wt = _rand(rng, (ws[1] * groups, ws[0] // groups) + ws[2:], dtype)
    kwt = {k: v for k, v in kw.items() if k != "padding"}
    pt = P.conv_transpose_params(xs, wt.shape, kw.get("stride", 1), 0, 0, groups,
                                 kw.get("dilation", 1))
    gyt = _rand(rng, (xs[0], wt.shape[1] * groups) + tuple(pt.out_shape), dtype)
    gwt = cnnfast.conv_transpose_backward(gyt, x, wt, needs=("weight",), backend="numba",
                                          **kwt)[1]
    want = ref.conv_transpose_backward(gyt.astype(np.float64), x.astype(np.float64),
                                       wt.astype(np.float64), pt, frozenset({"weight"}))[1]
    np.testing.assert_allclose(gwt, want, rtol=tol, atol=tol * np.abs(want).max())


def test_weight_grad_rows_bit_identical_across_thread_counts(threads):
    """The chunks of positions (and so every sum) depend on the shapes only; the
    thread count changes only how the k blocks are sliced between tasks."""
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("numba has a single thread here (NUMBA_NUM_THREADS=1)")
    rng = np.random.default_rng(14)
    cases = [(_rand(rng, xs), _rand(rng, ws), kw) for xs, ws, kw in _WGRAD_CASES]
    cases.append((_rand(rng, (8, 32, 14, 14)), _rand(rng, (64, 32, 1, 1)), {}))  # k slices
    grads = [_rand(rng, cnnfast.conv(x, w, backend="numba", **kw).shape)
             for x, w, kw in cases]
    results = []
    for n in (1, 2, 1):
        cnnfast.set_num_threads(n)
        results.append([cnnfast.conv_backward(gy, x, w, needs=("weight",), backend="numba",
                                              **kw)[1]
                        for gy, (x, w, kw) in zip(grads, cases)])
    for one, two in zip(results[0], results[1]):
        assert one.tobytes() == two.tobytes()
    for one, again in zip(results[0], results[2]):
        assert one.tobytes() == again.tobytes()


def test_weight_grad_rows_non_finite_input_is_exact():
    """A padding position of the wide rows pairs a zero gradient with an input
    value the exact sum never reads: an inf there would give NaN. The result is
    then recomputed by the direct kernel, as the reference computes it."""
    rng = np.random.default_rng(15)
    x = _rand(rng, (2, 3, 9, 9), np.float64)
    w = _rand(rng, (8, 3, 3, 3), np.float64)
    x[0, 1, 4, 8] = np.inf  # last column: read by taps kw = 2 only
    p = P.conv_params(x.shape, w.shape, 1, 0, 1, 1)
    gy = _rand(rng, (2, 8, 7, 7), np.float64)
    gw = cnnfast.conv_backward(gy, x, w, needs=("weight",), backend="numba")[1]
    want = ref.conv_backward(gy, x, w, p, frozenset({"weight"}))[1]
    assert np.isfinite(want[:, :, :, :2]).all() and not np.isfinite(want).all()
    np.testing.assert_allclose(gw, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("shape, kw", [
    ((7, 7), dict(kernel_size=7)),                                   # global: whole rows
    ((6, 7), dict(kernel_size=(3, 7), stride=2, padding=(1, 0))),   # whole rows, padded h
    ((6, 9), dict(kernel_size=(2, 5), stride=(1, 9), padding=(0, 2),
                  count_include_pad=False)),                         # partial rows, padded w
    ((5, 9), dict(kernel_size=3, stride=(2, 9), dilation=(1, 3))),  # strided taps
    ((3, 4, 5), dict(kernel_size=(2, 4, 5), stride=1, ceil_mode=True, divisor_override=7)),
])
def test_avg_pool_single_output_column(shape, kw):
    """Output width 1 (global average pooling and the like): forward and backward
    handle each input row's taps in one loop (whole rows: one run per depth
    slice) instead of one row sweep per tap."""
    rng = np.random.default_rng(12)
    x = _rand(rng, (2, 3) + shape, np.float64)
    y = cnnfast.avg_pool(x, backend="numba", **kw)
    assert y.shape[-1] == 1
    np.testing.assert_allclose(y, cnnfast.avg_pool(x, backend="numpy", **kw), rtol=1e-12,
                               atol=1e-12)
    gy = _rand(rng, y.shape, np.float64)
    args = (gy, x.shape, kw.pop("kernel_size"))
    np.testing.assert_allclose(cnnfast.avg_pool_backward(*args, backend="numba", **kw),
                               cnnfast.avg_pool_backward(*args, backend="numpy", **kw),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("rank", [1, 3])
def test_other_ranks_share_the_kernels(rank):
    rng = np.random.default_rng(6)
    spatial = (11,) if rank == 1 else (5, 6, 4)
    x = _rand(rng, (2, 4) + spatial, np.float64)
    w = _rand(rng, (8, 2) + (3,) * rank, np.float64)
    _check_conv(x, w, None, 2, padding=1, stride=2)
    _check_conv(x, w, _rand(rng, (8,), np.float64), 2, padding=1)


def test_read_only_inputs():
    rng = np.random.default_rng(7)
    x = _rand(rng, (1, 4, 6, 6))
    w = _rand(rng, (4, 4, 3, 3))
    expected = cnnfast.conv(x, w, backend="numba")
    x.flags.writeable = False
    w.flags.writeable = False
    np.testing.assert_array_equal(cnnfast.conv(x, w, backend="numba"), expected)


# ----------------------------------------------------------------------------- flags, CLI


def test_every_case_is_supported():
    p = P.conv_params((1, 2, 5), (2, 1, 3), 1, 0, 1, 2)
    for op in nb.OPS:
        assert nb.unsupported(op, p, "float32") is None
    assert set(nb.OPS) == set(cnnfast.registry.OP_NAMES)


def test_fastmath_keeps_nan_and_inf():
    from cnnfast.backends.numba.kernels import FASTMATH, JIT

    assert FASTMATH <= {"nsz", "arcp", "contract", "afn", "reassoc"}
    assert JIT["cache"] and JIT["parallel"] and JIT["nogil"]


def test_one_compiled_specialisation_per_kernel_and_dtype():
    """Every rank, parameter and code path shares one signature per dtype (the
    5-D design): a stray specialisation (an int32 shape, a read-only or strided
    array) would cost a compile on a user's first call. The warmup must reach
    every kernel."""
    from cnnfast.cli.warmup import warm_numba
    from cnnfast.backends.numba.kernels import common, direct, gemm, pool, wgrad

    warm_numba(log=lambda *a: None)
    kernels = {f"{m.__name__}.{name}": obj for m in (common, direct, gemm, pool, wgrad)
               for name, obj in vars(m).items()
               if isinstance(obj, numba.core.registry.CPUDispatcher)
               and obj.targetoptions.get("parallel")}
    counts = {name: len(k.signatures) for name, k in kernels.items()}
    assert counts and all(n == 2 for n in counts.values()), counts
    for dtype in (np.float32, np.float64):
        _workload(dtype=dtype)
    rng = np.random.default_rng(8)
    x3 = _rand(rng, (1, 4, 3, 4, 5), np.float64)
    cnnfast.conv_backward(cnnfast.conv(x3, _rand(rng, (4, 4, 1, 2, 3), np.float64),
                                       backend="numba"),
                          x3, _rand(rng, (4, 4, 1, 2, 3), np.float64), backend="numba")
    cnnfast.avg_pool_backward(cnnfast.avg_pool(x3, 2, 1, backend="numba"), x3.shape, 2, 1,
                              backend="numba")
    assert {name: len(k.signatures) for name, k in kernels.items()} == counts


def test_warmup_command(capsys):
    from cnnfast import cli

    assert cli.main(["warmup", "--dtype", "float32"]) == 0
    out = capsys.readouterr().out
    assert "numba float32" in out and "ready" in out
