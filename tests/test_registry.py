"""Backend registry and selection: explicit names, context, global, environment,
automatic choice, and the errors for missing ops or cases."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import cnnfast
from cnnfast import params as P
from cnnfast import registry
from cnnfast.threads import get_num_threads, set_num_threads


@pytest.fixture
def partial():
    registry.register_backend("partial", "helpers.partial_backend")
    from helpers import partial_backend

    partial_backend.CALLS.clear()
    yield partial_backend
    registry._MODULES.pop("partial", None)
    registry._loaded.pop("partial", None)
    cnnfast.set_backend(None)


X = np.ones((1, 2, 5, 5))
W = np.ones((2, 2, 3, 3))


def test_numpy_always_available():
    assert "numpy" in cnnfast.available_backends()
    reasons = cnnfast.available_backends(with_reasons=True)
    assert reasons["numpy"] is None
    for name, reason in reasons.items():
        assert reason is None or isinstance(reason, str) and reason


def test_unknown_backend_name():
    with pytest.raises(ValueError, match="unknown"):
        cnnfast.set_backend("fortran")
    with pytest.raises(TypeError):
        cnnfast.set_backend(3)


def test_explicit_backend_is_used(partial):
    cnnfast.conv(X, W, backend="partial")
    assert partial.CALLS == ["conv"]


def test_missing_op_names_backends_that_have_it(partial):
    with pytest.raises(NotImplementedError) as info:
        cnnfast.max_pool(X, 2, backend="partial")
    assert "does not implement max_pool" in str(info.value)
    assert "numpy" in str(info.value)


def test_missing_case_and_dtype(partial):
    with pytest.raises(NotImplementedError, match="grouped"):
        cnnfast.conv(X, np.ones((2, 1, 3, 3)), groups=2, backend="partial")
    with pytest.raises(NotImplementedError, match="float32"):
        cnnfast.conv(X.astype(np.float32), W.astype(np.float32), backend="partial")


def test_set_backend_and_context(partial):
    cnnfast.set_backend("partial")
    cnnfast.conv(X, W)
    assert partial.CALLS == ["conv"]
    with cnnfast.use_backend("numpy"):
        cnnfast.conv(X, W)
    assert partial.CALLS == ["conv"]
    cnnfast.conv(X, W)
    assert partial.CALLS == ["conv", "conv"]
    # The explicit argument beats the global choice.
    cnnfast.conv(X, W, backend="numpy")
    assert partial.CALLS == ["conv", "conv"]
    cnnfast.set_backend(None)
    with cnnfast.use_backend("partial"):
        with pytest.raises(NotImplementedError):
            cnnfast.avg_pool(X, 2)  # explicit choice: no silent fallback


def test_context_is_per_thread(partial):
    import threading

    seen = []
    with cnnfast.use_backend("partial"):
        t = threading.Thread(target=lambda: seen.append(registry.current_choice()))
        t.start()
        t.join()
        assert registry.current_choice() == "partial"
    assert seen == [None] or seen == [os.environ.get("CNNFAST_BACKEND")]


def test_auto_choice_falls_back_for_lacking_cases(partial, monkeypatch):
    # Automatic choice: the first backend of the order that runs the case. The
    # partial backend goes first; each case it lacks must fall through to numpy.
    monkeypatch.setattr(registry, "AUTO_CPU_ORDER", ("partial", "numpy"))
    plain = P.conv_params((1, 2, 5, 5), (2, 2, 3, 3), 1, 0, 1, 1)
    grouped = P.conv_params((1, 2, 5, 5), (2, 1, 3, 3), 1, 0, 1, 2)
    pool = P.pool_params((1, 2, 4, 4), 2, None, 0, 1, False)

    def auto(op, dtype, params):  # "auto": ignores any context or CNNFAST_BACKEND
        return registry.backend_for(op, "numpy", dtype, params, "auto")

    assert auto("conv", "float64", plain) == "partial"
    assert auto("conv", "float64", grouped) == "numpy"  # its unsupported() declines
    assert auto("conv", "float32", plain) == "numpy"  # not in its DTYPES
    assert auto("avg_pool", "float64", pool) == "numpy"  # not in its OPS
    with pytest.raises(ValueError):
        registry.backend_for("conv", "numpy", "float64", None, "nope")


def test_environment_variable_selects_backend():
    code = ("import numpy as np, cnnfast; from cnnfast import registry;"
            "print(registry.current_choice());"
            "cnnfast.conv(np.ones((1,1,3,3)), np.ones((1,1,2,2)))")
    env = dict(os.environ, CNNFAST_BACKEND="numpy")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "numpy"
    env["CNNFAST_BACKEND"] = "fortran"
    bad = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True)
    assert bad.returncode != 0 and "unknown" in bad.stderr


def test_unavailable_backend_says_why():
    reasons = cnnfast.available_backends(with_reasons=True)
    missing = [n for n, r in reasons.items() if r is not None]
    for name in missing:
        with pytest.raises(cnnfast.BackendUnavailable, match=name):
            cnnfast.set_backend(name)


def test_threads_setting():
    old = get_num_threads()
    try:
        set_num_threads(1)
        assert get_num_threads() == 1
        with pytest.raises(ValueError):
            set_num_threads(0)
        with pytest.raises(ValueError):
            set_num_threads(True)
    finally:
        set_num_threads(old)


def test_threads_environment():
    code = "import cnnfast; print(cnnfast.get_num_threads())"
    env = dict(os.environ, CNNFAST_NUM_THREADS="3")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "3"


def test_omp_num_threads_is_honoured_after_cnnfast_num_threads():
    code = "import cnnfast; print(cnnfast.get_num_threads())"
    env = {k: v for k, v in os.environ.items() if k != "CNNFAST_NUM_THREADS"}
    env["OMP_NUM_THREADS"] = "1"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "1"
    env["CNNFAST_NUM_THREADS"] = "2"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "2"


def test_single_threaded_blas_limits_numpy_blas():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from cnnfast.threads import single_threaded_blas

    def blas_threads():
        return [i["num_threads"] for i in threadpoolctl.threadpool_info()
                if i["user_api"] == "blas"]

    before = blas_threads()
    if not before:
        pytest.skip("numpy's BLAS is not visible to threadpoolctl here")
    with single_threaded_blas():
        assert all(n == 1 for n in blas_threads())
    assert blas_threads() == before
