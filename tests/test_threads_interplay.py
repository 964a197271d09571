"""Our OpenMP kernels next to numpy's BLAS: the dense layers run their products on one
BLAS thread and restore the count after (cnnfast.threads.serial_blas), importing
cnnfast shortens the OpenMP spin unless the user chose a wait policy
(cnnfast.threads.short_openmp_spin), and the results do not change. The speed this
buys is measured in benchmarks/train_vs_torch.py, never asserted here."""

from __future__ import annotations

import numpy as np
import pytest

import cnnfast
from cnnfast import nn
from cnnfast.threads import serial_blas, single_threaded_blas

threadpoolctl = pytest.importorskip("threadpoolctl")


def blas_threads():
    return [i["num_threads"] for i in threadpoolctl.threadpool_info()
            if i["user_api"] == "blas"]


@pytest.fixture
def two_blas_threads():
    """numpy's BLAS on two threads for the test (one would hide the limit), put back
    after."""
    if not blas_threads():
        pytest.skip("numpy's BLAS is not visible to threadpoolctl here")
    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        if blas_threads() != [2] * len(blas_threads()):
            pytest.skip("numpy's BLAS cannot run two threads here")
        yield


class Recording(np.ndarray):
    """An array that records numpy's BLAS thread counts at each matrix product it
    takes part in (``x @ w.T`` and ``grad.T @ x`` alike)."""

    seen: list = []

    def __matmul__(self, other):
        Recording.seen.append(blas_threads())
        return np.matmul(np.asarray(self), np.asarray(other))

    def __rmatmul__(self, other):
        Recording.seen.append(blas_threads())
        return np.matmul(np.asarray(other), np.asarray(self))


def _dense(seed=0, features=40, out=24):
    layer = nn.Dense(out)
    layer.build((features,), np.random.default_rng(seed), np.float32)
    layer.params["bias"][:] = np.random.default_rng(seed + 1).standard_normal(out)
    return layer


def _data(n=16, features=40, out=24, seed=2):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, features)).astype(np.float32),
            rng.standard_normal((n, out)).astype(np.float32))


def test_serial_blas_limits_inside_and_restores(two_blas_threads):
    before = blas_threads()
    with serial_blas():
        assert all(n == 1 for n in blas_threads())
    assert blas_threads() == before


def test_serial_blas_restores_after_an_error(two_blas_threads):
    before = blas_threads()
    with pytest.raises(KeyError):
        with serial_blas():
            raise KeyError("inside")
    assert blas_threads() == before


def test_serial_blas_inside_single_threaded_blas_keeps_the_outer_limit(two_blas_threads):
    before = blas_threads()
    with single_threaded_blas():
        with serial_blas():
            assert all(n == 1 for n in blas_threads())
        assert all(n == 1 for n in blas_threads())  # not reset to the default by the inner
    assert blas_threads() == before


def test_dense_products_run_on_one_blas_thread_and_restore(two_blas_threads):
    layer = _dense()
    x, g = _data()
    before = blas_threads()
    Recording.seen = []
    layer.forward(x.view(Recording), training=True)
    layer.backward(g.view(Recording))
    # forward: x @ w.T; backward: grad.T @ x and grad @ w
    assert len(Recording.seen) == 3
    assert all(all(n == 1 for n in seen) for seen in Recording.seen), Recording.seen
    assert blas_threads() == before


def test_dense_results_match_plain_numpy_products(two_blas_threads):
    layer = _dense()
    x, g = _data()
    w, b = layer.params["weight"], layer.params["bias"]
    want_y = x @ w.T + b  # numpy's default BLAS threads, outside any cnnfast code
    want_gw, want_gx, want_gb = g.T @ x, g @ w, g.sum(axis=0)
    y = layer.forward(x, training=True)
    gx = layer.backward(g)
    np.testing.assert_allclose(y, want_y, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(layer.grads["weight"], want_gw, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(gx, want_gx, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(layer.grads["bias"], want_gb)


def test_dense_backward_without_input_grad_or_training_still_restores(two_blas_threads):
    layer = _dense()
    x, g = _data()
    before = blas_threads()
    layer.trainable = False
    layer.forward(x, training=True)
    assert layer.backward(g, need_input_grad=False) is None
    assert layer.grads == {}
    assert blas_threads() == before


def _python(code, **env):
    """Run ``code`` in a fresh interpreter whose environment has none of the wait
    policy variables but those given; returns its stdout and stderr."""
    import os
    import subprocess
    import sys

    from cnnfast.threads import WAIT_POLICY_VARS

    full = {k: v for k, v in os.environ.items() if k not in WAIT_POLICY_VARS}
    full.update(env)
    out = subprocess.run([sys.executable, "-c", code], env=full, capture_output=True,
                         text=True, check=True)
    return out.stdout.strip(), out.stderr


_SPIN = "import os, cnnfast; print(os.environ.get('GOMP_SPINCOUNT'))"


def test_importing_cnnfast_sets_a_short_openmp_spin():
    from cnnfast.threads import SPIN_COUNT

    assert _python(_SPIN)[0] == str(SPIN_COUNT)


@pytest.mark.parametrize("var, value", [("OMP_WAIT_POLICY", "ACTIVE"),
                                        ("OMP_WAIT_POLICY", "PASSIVE"),
                                        ("GOMP_SPINCOUNT", "123"),
                                        ("KMP_BLOCKTIME", "0")])
def test_a_wait_policy_the_user_chose_is_kept(var, value):
    code = _SPIN + f"; print(os.environ[{var!r}])"
    want = [value if var == "GOMP_SPINCOUNT" else "None", value]
    assert _python(code, **{var: value})[0].split() == want


def test_an_openmp_runtime_loaded_before_cnnfast_is_left_alone():
    import ctypes.util

    if ctypes.util.find_library("gomp") is None:
        pytest.skip("no libgomp to load here")
    code = "import ctypes; ctypes.CDLL('libgomp.so.1'); " + _SPIN
    assert _python(code)[0] == "None"


def test_the_cpp_kernels_openmp_runtime_reads_the_spin_count():
    """libgomp prints the settings it read at load (OMP_DISPLAY_ENV=VERBOSE): the
    spin count set at import reaches the runtime the kernels use."""
    from cnnfast.registry import available_backends
    from cnnfast.threads import SPIN_COUNT

    if "cpp" not in available_backends():
        pytest.skip("the cpp backend is not available")
    code = ("import numpy as np, cnnfast; cnnfast.conv2d(np.ones((1, 1, 4, 4), "
            "np.float32), np.ones((1, 1, 3, 3), np.float32), backend='cpp')")
    _, err = _python(code, OMP_DISPLAY_ENV="VERBOSE")
    if "GOMP_SPINCOUNT" not in err:
        pytest.skip("the kernels' OpenMP runtime is not libgomp")
    assert f"GOMP_SPINCOUNT = '{SPIN_COUNT}'" in err


def test_threadpoolctl_limits_the_cpp_kernels(monkeypatch):
    """Unless the user set a count, the cpp kernels follow their OpenMP runtime's
    setting, so threadpoolctl's limit (omp_set_num_threads) reaches them; a count set
    with set_num_threads wins."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from cnnfast import threads
    x = np.ones((1, 2, 6, 6), np.float32)
    w = np.ones((2, 2, 3, 3), np.float32)
    from cnnfast.backends.cpp import _cpp
    if not _cpp.openmp()[0]:
        pytest.skip("the cpp extension was built without OpenMP")
    monkeypatch.delenv("CNNFAST_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "_num_threads", None)
    with threadpoolctl.threadpool_limits(limits=3, user_api="openmp"):
        assert cnnfast.get_num_threads() == 3
        assert "3 thread(s)" in cnnfast.explain("conv2d", x, w, backend="cpp")
        monkeypatch.setattr(threads, "_num_threads", 2)
        assert cnnfast.get_num_threads() == 2
    monkeypatch.setattr(threads, "_num_threads", None)
    with threadpoolctl.threadpool_limits(limits=1, user_api="openmp"):
        assert cnnfast.get_num_threads() == 1
        np.testing.assert_array_equal(cnnfast.conv2d(x, w, backend="cpp"),
                                      cnnfast.conv2d(x, w, backend="numpy"))
