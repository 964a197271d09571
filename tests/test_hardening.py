"""Issue 13, library level: bad inputs that used to crash, hang or overflow.

* a huge thread count no longer kills the process (``cnnfast.threads.MAX_THREADS``);
* integers past the kernels' 32-bit indexing are rejected in validation (the cases run
  on every backend are in ``test_bad_input.py``); the CUDA launch code never builds
  stride-phase tables without bound;
* pooling validation is closed-form, not O(output x kernel);
* an empty convolution (N, C_in, C_out or a spatial size of 0) is valid and the same
  on every backend;
* ``BackendUnavailable`` is a ValueError (and still a RuntimeError).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import cnnfast
from cnnfast import params as P
from cnnfast import registry, threads


def _run(code, env=None, timeout=120):
    full_env = dict(os.environ)
    full_env.pop("CNNFAST_NUM_THREADS", None)
    full_env.pop("OMP_NUM_THREADS", None)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def _finishes(fn, timeout=10.0):
    """Run ``fn`` in a thread; its result, or a failure if it takes past ``timeout``
    (a generous bound: the point is "not tens of seconds", not a benchmark)."""
    box = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as exc:  # re-raised in the test's thread
            box["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"still running after {timeout} s"
    if "error" in box:
        raise box["error"]
    return box["value"]


def _need(name):
    b = registry.get_backend(name)
    if not b.available:
        pytest.skip(f"backend {name!r} unavailable: {b.reason}")


# ----------------------------------------------------------------------------- threads


def test_set_num_threads_is_bounded():
    old = cnnfast.get_num_threads()
    try:
        for n in (threads.MAX_THREADS + 1, 100000, 2 ** 40):
            with pytest.raises(ValueError) as info:
                cnnfast.set_num_threads(n)
            assert f"n={n}" in str(info.value) and str(threads.MAX_THREADS) in str(info.value)
            assert cnnfast.get_num_threads() == old  # unchanged by a refused call
        cnnfast.set_num_threads(np.int64(2))  # numpy ints are ints
        assert cnnfast.get_num_threads() == 2 and type(cnnfast.get_num_threads()) is int
    finally:
        cnnfast.set_num_threads(old)


def test_thread_environment_is_bounded(monkeypatch):
    # CNNFAST_NUM_THREADS is ours: too large is an error naming it. OMP_NUM_THREADS is
    # shared with every OpenMP program: too large is clamped.
    monkeypatch.setenv("CNNFAST_NUM_THREADS", "100000")
    with pytest.raises(ValueError, match="CNNFAST_NUM_THREADS='100000'.*at most 1024"):
        threads._default_threads()
    monkeypatch.delenv("CNNFAST_NUM_THREADS")
    # before the cpp extension loads its OpenMP runtime (after, the runtime's own
    # setting counts, also clamped: tests/test_threads_interplay.py)
    monkeypatch.setattr(threads, "_openmp_max_threads", None)
    monkeypatch.setenv("OMP_NUM_THREADS", "100000")
    assert threads._default_threads() == threads.MAX_THREADS
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads._default_threads() == 3


def test_huge_thread_requests_do_not_kill_the_process():
    # Before: set_num_threads(100000) and then a cpp call segfaulted (OpenMP could not
    # create the threads). Each request now either fails cleanly or is clamped; the
    # most threads allowed really run (a subprocess: a crash must not take pytest down).
    _need("cpp")
    code = """
        import numpy as np, cnnfast
        x, w = np.ones((2, 3, 9, 9)), np.ones((4, 3, 3, 3))
        try:
            cnnfast.set_num_threads(100000)
        except ValueError as exc:
            print("refused:", exc)
        y = cnnfast.conv(x, w, backend="cpp")
        print("default ok", float(y.sum()))
        cnnfast.set_num_threads(cnnfast.threads.MAX_THREADS)
        y = cnnfast.conv(x, w, backend="cpp")
        print("max ok", float(y.sum()))
    """
    out = _run(code)
    assert out.returncode == 0, out.stderr
    assert "refused: set_num_threads(n=100000)" in out.stdout
    assert "default ok 10584.0" in out.stdout and "max ok 10584.0" in out.stdout
    # OMP_NUM_THREADS=100000 is clamped to MAX_THREADS, and the call runs.
    out = _run("""
        import numpy as np, cnnfast
        print(cnnfast.get_num_threads())
        print(float(cnnfast.conv(np.ones((1, 1, 5)), np.ones((1, 1, 2)), backend="cpp").sum()))
    """, env={"OMP_NUM_THREADS": "100000"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(threads.MAX_THREADS), "8.0"]
    # CNNFAST_NUM_THREADS=100000: a clean error at the call, no crash.
    out = _run("""
        import numpy as np, cnnfast
        try:
            cnnfast.conv(np.ones((1, 1, 5)), np.ones((1, 1, 2)), backend="cpp")
        except ValueError as exc:
            print("refused:", exc)
    """, env={"CNNFAST_NUM_THREADS": "100000"})
    assert out.returncode == 0, out.stderr
    assert "refused: CNNFAST_NUM_THREADS='100000'" in out.stdout


# ----------------------------------------------------------------------------- big ints


def test_huge_but_valid_output_fails_cleanly():
    # A legitimate request too big for memory (4 EiB of output from a 1-element input)
    # is a MemoryError (or the CUDA kernels' NotImplementedError for 2**31+ elements)
    # before any work; never an int overflow into a negative size or a crash. One
    # step further (2**60 elements or more) is a ValueError from validation.
    code = """
        import numpy as np, cnnfast
        x, w = np.ones((1, 1, 1, 1)), np.ones((1, 1, 1, 1))
        for be in cnnfast.available_backends():
            if be == "cupy":
                continue
            for pad, expected in (((2 ** 28, 2 ** 29), (MemoryError, NotImplementedError)),
                                  ((2 ** 30 - 1, 2 ** 30 - 1), ValueError)):
                try:
                    cnnfast.conv(x, w, padding=pad, backend=be)
                    print(be, "returned")
                except expected as exc:
                    print(be, "ok", type(exc).__name__, str(exc)[:200])
                except Exception as exc:
                    print(be, "wrong", type(exc).__name__, exc)
    """
    out = _run(code, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines and all(" ok " in line for line in lines), out.stdout
    assert any("2**60" in line for line in lines)


def test_index_limit_is_one_rule():
    # Every parameter below 2**31 is accepted by the per-parameter check; the derived
    # extents are what reject a combination.
    assert P.conv_params((1, 1, 5), (1, 1, 2), 2 ** 31 - 1, 0, 1, 1).out_shape == (1,)
    assert P.conv_params((1, 1, 1), (1, 1, 1), 1, ((2 ** 31 - 2, 0),), 1, 1).out_shape \
        == (2 ** 31 - 1,)
    with pytest.raises(ValueError, match=r"padding .* 2\*\*31"):
        P.conv_params((1, 1, 1), (1, 1, 1), 1, ((2 ** 31 - 1, 0),), 1, 1)
    assert P.conv_transpose_params((1, 1, 1), (1, 1, 2), 2 ** 31 - 1, 0, 0, 1, 1).out_shape \
        == (2,)
    with pytest.raises(ValueError, match="uncropped output"):
        P.conv_transpose_params((1, 1, 2), (1, 1, 2), 2 ** 31 - 1, 0, 0, 1, 1)
    # With ceil_mode the last window may overhang the padded input (here its second
    # tap would be at 2**30 + 2**31 - 1002): the span it covers is bounded too.
    x_shape = (1, 1, 2 ** 31 - 1000)
    assert P.pool_params(x_shape, 2, 2 ** 30, 0, 2 ** 31 - 1002, False).out_shape == (1,)
    with pytest.raises(ValueError, match="span the windows cover"):
        P.pool_params(x_shape, 2, 2 ** 30, 0, 2 ** 31 - 1002, True)


def test_cuda_launch_builds_no_unbounded_phase_tables():
    # The transposed convolution's GEMM has one phase per stride residue: a stride of
    # 2**31 - 1 (valid) meant 2**31 phases (a Python loop and GBs of table) and a
    # stride of (300, 300) 90000 (past the grid). Both now run on the direct kernel.
    _need("cuda-emu")
    from cnnfast.backends.cuda import conv_launch as cuda_launch

    rng = np.random.default_rng(0)
    # (x shape, weight shape, kwargs, compare with the numpy reference: it materialises
    # the uncropped output, 2**30 elements for the second case)
    cases = [((1, 2, 1), (2, 3, 2), dict(stride=2 ** 31 - 1), True),
             ((1, 2, 2), (2, 3, 2), dict(stride=2 ** 30, padding=((2 ** 30 - 1, 0),)), False),
             ((1, 2, 2, 2), (2, 3, 2, 2), dict(stride=300, padding=((290, 0), (0, 5))), True),
             ((1, 4, 2, 2, 2), (4, 3, 3, 3, 3), dict(stride=50), True)]
    for x_shape, w_shape, kw, compare in cases:
        x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
        p = P.conv_transpose_params(x.shape, w.shape, kw["stride"], kw.get("padding", 0),
                                    0, 1, 1)
        assert not cuda_launch._adj_gemm_fits(1, x_shape[1], p)
        y = _finishes(lambda: cnnfast.conv_transpose(x, w, **kw, backend="cuda-emu"), 60)
        gy = rng.standard_normal(y.shape)
        grads = _finishes(lambda: cnnfast.conv_transpose_backward(
            gy, x, w, **kw, backend="cuda-emu"), 60)
        if compare:
            np.testing.assert_allclose(y, cnnfast.conv_transpose(x, w, **kw, backend="numpy"),
                                       rtol=1e-12, atol=1e-12)
            ref = cnnfast.conv_transpose_backward(gy, x, w, **kw, backend="numpy")
            for g, r in zip(grads, ref):
                np.testing.assert_allclose(g, r, rtol=1e-12, atol=1e-12)
    # The input gradient of a strided convolution is the same adjoint.
    x, w = rng.standard_normal((1, 2, 302, 302)), rng.standard_normal((3, 2, 2, 2))
    gy = rng.standard_normal((1, 3, 2, 2))
    grads = _finishes(lambda: cnnfast.conv_backward(gy, x, w, stride=300, backend="cuda-emu"),
                      60)
    for g, r in zip(grads, cnnfast.conv_backward(gy, x, w, stride=300, backend="numpy")):
        np.testing.assert_allclose(g, r, rtol=1e-12, atol=1e-12)
    # Forcing the GEMM there is refused before any table is built.
    x, w = np.ones((1, 2, 1)), np.ones((2, 3, 2))
    with cuda_launch.override(path="gemm"):
        with pytest.raises(ValueError, match="stride phases"):
            _finishes(lambda: cnnfast.conv_transpose(x, w, stride=2 ** 31 - 1,
                                                     backend="cuda-emu"))
    # Ordinary strides keep the GEMM.
    p = P.conv_transpose_params((8, 64, 7, 7), (64, 32, 3, 3), 2, 1, 1, 1, 1)
    assert cuda_launch._adj_gemm_fits(1, 64, p)


def test_cuda_phase_table_bound_is_exact():
    # _adj_gemm_fits sizes the table before it exists: its rows per phase must be the
    # ones _host_tables builds.
    import math

    from cnnfast.backends.cuda import conv_launch as cuda_launch

    rnd = random.Random(3)
    checked = 0
    while checked < 300:
        rank = rnd.randint(1, 3)
        k = tuple(rnd.randint(1, 5) for _ in range(rank))
        s = tuple(rnd.randint(1, 6) for _ in range(rank))
        d = tuple(rnd.randint(1, 4) for _ in range(rank))
        ins = tuple(rnd.randint(1, 5) for _ in range(rank))
        cg = rnd.randint(1, 3)
        p = P.conv_transpose_params((1, cg) + ins, (cg, 1) + k, s, 0, 0, 1, d)
        tables = cuda_launch._host_tables(cuda_launch.MODE_ADJ, 1, 1, cg, 1, p.in_shape,
                                          p.out_shape, p)
        taps = math.prod(-(-kk // (ss // math.gcd(ss, dd))) for kk, ss, dd in zip(k, s, d))
        assert tables[3] == cg * taps
        checked += 1


# ----------------------------------------------------------------------------- pooling


def test_pool_validation_is_closed_form():
    # A kernel of 10**8 on a 1-element input took 10-34 s to validate (every tap of
    # every window was tried). Valid and invalid cases alike now take no time.
    x_shape = (1, 1, 1)
    p = _finishes(lambda: P.pool_params(x_shape, 10 ** 8, None, 5 * 10 ** 7, 1, False))
    assert p.out_shape == (1,)
    inside, padded = _finishes(lambda: P.pool_window_counts(p, 0))
    assert list(inside) == [1] and list(padded) == [10 ** 8]
    p = _finishes(lambda: P.pool_params((1, 1, 3), 10 ** 8, 1, 10 ** 8 - 1, 1, True))
    assert p.out_shape == (10 ** 8 + 2,)
    with pytest.raises(ValueError, match="wholly in the padding"):
        _finishes(lambda: P.pool_params(x_shape, 2 ** 30 - 5, 1, ((2 ** 30, 0),), 1, False))
    with pytest.raises(ValueError, match="window 1 of spatial dim 0"):
        _finishes(lambda: P.pool_params(x_shape, 2, 1, ((0, 2 ** 30 + 1),), 2 ** 30, False))
    # Through the public API, on the fastest backend (validation and the kernel).
    y = _finishes(lambda: cnnfast.max_pool(np.full((1, 1, 1), 7.0), 10 ** 8,
                                           padding=5 * 10 ** 7, backend="numba"
                                           if "numba" in cnnfast.available_backends()
                                           else "cuda-emu"), 60)
    assert y.tolist() == [[[7.0]]]


def _first_window_outside_bruteforce(size, k, s, lo, d, n):
    for o in range(n):
        if not any(0 <= o * s - lo + t * d < size for t in range(k)):
            return o
    return None


def test_pool_window_rules_match_their_definition():
    # The closed forms against the per-tap definitions they replace.
    rnd = random.Random(7)
    checked = 0
    while checked < 4000:
        size, k = rnd.randint(1, 12), rnd.randint(1, 6)
        s, d = rnd.randint(1, 6), rnd.randint(1, 8)
        lo, hi, ceil = rnd.randint(0, 25), rnd.randint(0, 25), rnd.random() < 0.5
        n = P.pool_out_size(size, k, s, lo, hi, d, ceil)
        if n < 1:
            continue
        checked += 1
        bad = _first_window_outside_bruteforce(size, k, s, lo, d, n)
        assert P._window_outside_input(size, k, s, lo, d, n) == bad
        if bad is None:
            p = P.PoolParams(1, (k,), (s,), ((lo, hi),), (d,), ceil, (size,), (n,))
            inside, padded = P.pool_window_counts(p, 0)
            for o in range(n):
                taps = [o * s - lo + t * d for t in range(k)]
                assert inside[o] == sum(0 <= c < size for c in taps)
                assert padded[o] == sum(-lo <= c < size + hi for c in taps)


def test_floor_sum():
    rnd = random.Random(11)
    for _ in range(3000):
        n, m = rnd.randint(0, 30), rnd.randint(1, 40)
        a, b = rnd.randint(0, 60), rnd.randint(-99, 99)
        assert P._floor_sum(n, m, a, b) == sum((a * i + b) // m for i in range(n))


# ----------------------------------------------------------------------------- empty conv


def _bias_map(bias, shape):
    y = np.zeros(shape)
    if bias is not None:
        y[...] = bias.reshape((-1,) + (1,) * (len(shape) - 2))
    return y


# (id, x shape, weight shape, kwargs): conv weight (C_out, C_in/g, *k)
EMPTY_CONV = [
    ("c_in-0", (2, 0, 5), (3, 0, 2), {}),
    ("c_out-0", (2, 3, 5), (0, 3, 2), {}),
    ("c_in-0-groups", (2, 0, 5, 4), (4, 0, 2, 2), dict(groups=2)),
    ("c_out-0-groups", (2, 4, 5), (0, 2, 2), dict(groups=2)),
    ("spatial-0-padded", (1, 2, 0, 3), (3, 2, 1, 1), dict(padding=1)),
    ("batch-0", (0, 2, 4, 4, 4), (3, 2, 2, 2, 2), dict(stride=2)),
]
# conv_transpose weight (C_in, C_out/g, *k)
EMPTY_CONVT = [
    ("c_in-0", (2, 0, 5), (0, 3, 2), {}),
    ("c_out-0", (2, 3, 5), (3, 0, 2), {}),
    ("c_in-0-groups", (2, 0, 5, 4), (0, 2, 2, 2), dict(groups=2, stride=2)),
    ("c_out-0-groups", (2, 4, 5), (4, 0, 2), dict(groups=2)),
    ("spatial-0", (1, 2, 0), (2, 3, 3), {}),
    ("batch-0", (0, 2, 3, 3), (2, 3, 2, 2), dict(stride=2)),
]


@pytest.mark.parametrize("case", EMPTY_CONV, ids=[c[0] for c in EMPTY_CONV])
def test_empty_conv_is_the_same_everywhere(backend, case):
    # Nothing to sum or nothing to write: y is the bias broadcast, grad_x and
    # grad_weight zeros, grad_bias grad_y summed (torch rejects some of these and
    # gets a wrong channel count for C_in = 0; these are the sums' values).
    _, x_shape, w_shape, kw = case
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    bias = rng.standard_normal(w_shape[0])
    before = [a.copy() for a in (x, w, bias)]
    y = backend.numpy(cnnfast.conv(backend.asarray(x), backend.asarray(w),
                                   backend.asarray(bias), **kw, backend=backend.name))
    p = P.conv_params(x_shape, w_shape, kw.get("stride", 1), kw.get("padding", 0), 1,
                      kw.get("groups", 1))
    out_shape = (x_shape[0], w_shape[0]) + p.out_shape
    assert y.shape == out_shape and y.dtype == x.dtype
    np.testing.assert_array_equal(y, _bias_map(bias, out_shape))
    gy = rng.standard_normal(out_shape)
    gx, gw, gb = (backend.numpy(g) for g in cnnfast.conv_backward(
        backend.asarray(gy), backend.asarray(x), backend.asarray(w), **kw,
        backend=backend.name))
    _check_empty_grads(gx, gw, gb, gy, x_shape, w_shape)
    for a, b in zip((x, w, bias), before):
        np.testing.assert_array_equal(a, b)


def _check_empty_grads(gx, gw, gb, gy, x_shape, w_shape):
    """The gradients of an empty convolution: zeros, and grad_y summed for the bias."""
    np.testing.assert_array_equal(gx, np.zeros(x_shape))
    np.testing.assert_array_equal(gw, np.zeros(w_shape))
    np.testing.assert_allclose(gb, gy.sum(axis=(0,) + tuple(range(2, gy.ndim))),
                               rtol=1e-12)


@pytest.mark.parametrize("case", EMPTY_CONVT, ids=[c[0] for c in EMPTY_CONVT])
def test_empty_conv_transpose_is_the_same_everywhere(backend, case):
    _, x_shape, w_shape, kw = case
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    groups = kw.get("groups", 1)
    bias = rng.standard_normal(w_shape[1] * groups)
    y = backend.numpy(cnnfast.conv_transpose(backend.asarray(x), backend.asarray(w),
                                             backend.asarray(bias), **kw,
                                             backend=backend.name))
    p = P.conv_transpose_params(x_shape, w_shape, kw.get("stride", 1), 0, 0, groups, 1)
    out_shape = (x_shape[0], w_shape[1] * groups) + p.out_shape
    assert y.shape == out_shape
    np.testing.assert_array_equal(y, _bias_map(bias, out_shape))
    gy = rng.standard_normal(out_shape)
    gx, gw, gb = (backend.numpy(g) for g in cnnfast.conv_transpose_backward(
        backend.asarray(gy), backend.asarray(x), backend.asarray(w), **kw,
        backend=backend.name))
    _check_empty_grads(gx, gw, gb, gy, x_shape, w_shape)


def test_empty_conv_still_checks_the_backend():
    # The shortcut comes after backend selection: a bad backend is still an error.
    x, w = np.ones((1, 0, 4)), np.ones((2, 0, 2))
    with pytest.raises(ValueError, match="unknown"):
        cnnfast.conv(x, w, backend="fortran")


# ----------------------------------------------------------------------------- registry


def test_backend_unavailable_is_a_value_error():
    assert issubclass(cnnfast.BackendUnavailable, ValueError)
    assert issubclass(cnnfast.BackendUnavailable, RuntimeError)  # as before
    registry.register_backend("hardening-missing", "cnnfast.backends.no_such_module")
    try:
        with pytest.raises(ValueError, match="hardening-missing.*unavailable"):
            cnnfast.conv(np.ones((1, 1, 3)), np.ones((1, 1, 2)), backend="hardening-missing")
        with pytest.raises(ValueError, match="unavailable"):
            cnnfast.set_backend("hardening-missing")
    finally:
        with registry._lock:
            registry._MODULES.pop("hardening-missing", None)
            registry._loaded.pop("hardening-missing", None)
