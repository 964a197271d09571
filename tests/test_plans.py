"""Call plans (cnnfast.plans): a repeated call skips validation and backend selection,
and nothing a plan skips can change its outcome.

Each test starts from no plans. The oracle of every result is the same call made with
no plan kept (``out=``-free calls are planned, so the first call of a signature is the
unplanned one).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import cnnfast as cf
from cnnfast import environ, params as P, plans, registry

CPU_BACKENDS = [name for name in ("numpy", "numba", "cpp")
                if name in cf.available_backends()]


@pytest.fixture(autouse=True)
def no_plans():
    plans.clear()
    yield
    plans.clear()


def _rng():
    return np.random.default_rng(7)


def _arrays(dtype=np.float32):
    rng = _rng()
    x = rng.standard_normal((2, 3, 9, 9)).astype(dtype)
    w = rng.standard_normal((4, 3, 3, 3)).astype(dtype)
    b = rng.standard_normal(4).astype(dtype)
    return x, w, b


# Every op, as (name, call(backend) -> result) on fixed data.
def _calls():
    x, w, b = _arrays()
    gy = _rng().standard_normal((2, 4, 9, 9)).astype(np.float32)
    wt = _rng().standard_normal((3, 4, 3, 3)).astype(np.float32)
    y, idx = cf.max_pool(x, 2, return_indices=True, backend="numpy")
    gp = _rng().standard_normal(y.shape).astype(np.float32)
    gyt = cf.conv_transpose(x, wt, stride=1, padding=1, backend="numpy")
    plans.clear()  # the calls above made plans of their own
    return {
        "conv": lambda be: cf.conv(x, w, b, padding=1, activation="relu", backend=be),
        "conv_backward": lambda be: cf.conv_backward(gy, x, w, padding=1, backend=be),
        "conv_transpose": lambda be: cf.conv_transpose(x, wt, None, stride=2, padding=1,
                                                       backend=be),
        "conv_transpose_backward": lambda be: cf.conv_transpose_backward(
            gyt, x, wt, padding=1, needs=("x", "weight"), backend=be),
        "max_pool": lambda be: cf.max_pool(x, 2, return_indices=True, backend=be),
        "max_pool_backward": lambda be: cf.max_pool_backward(gp, idx, x.shape, backend=be),
        "avg_pool": lambda be: cf.avg_pool(x, 3, 2, 1, backend=be),
        "avg_pool_backward": lambda be: cf.avg_pool_backward(gp, x.shape, 2, backend=be),
    }


def _same(a, b):
    if isinstance(a, tuple):
        assert len(a) == len(b)
        for u, v in zip(a, b):
            _same(u, v)
    elif a is None:
        assert b is None
    else:
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("op", sorted(_calls()))
def test_planned_call_gives_the_unplanned_result(op, backend):
    call = _calls()[op]
    first = call(backend)  # validated, selected, planned
    assert len(plans._plans) == 1
    again = call(backend)  # from the plan
    assert len(plans._plans) == 1
    _same(first, again)
    plans.clear()
    _same(first, call(backend))


def test_repeated_call_skips_validation(monkeypatch):
    x, w, b = _arrays()
    cf.conv(x, w, b, backend="numpy")
    seen = []
    real = P.conv_params
    monkeypatch.setattr(P, "conv_params", lambda *a, **k: seen.append(a) or real(*a, **k))
    cf.conv(x, w, b, backend="numpy")
    assert seen == []
    cf.conv(x, w, b, stride=2, backend="numpy")  # another signature: validated
    assert len(seen) == 1


def test_errors_are_raised_every_time_and_never_planned():
    x, w, b = _arrays()
    for _ in range(2):
        with pytest.raises(ValueError, match="bias has shape"):
            cf.conv(x, w, b[:3], backend="numpy")
    assert plans._plans == {}


@pytest.mark.parametrize("bad, error", [
    (dict(stride=True), TypeError),       # True == 1 and hash(True) == hash(1)
    (dict(stride=1.0), TypeError),        # 1.0 == 1 as well
    (dict(padding=(True, 1)), TypeError),
    (dict(groups=True), ValueError),
])
def test_values_equal_to_a_planned_one_are_still_validated(bad, error):
    x, w, b = _arrays()
    cf.conv(x, w, b, stride=1, padding=(1, 1), groups=1, backend="numpy")
    args = dict(stride=1, padding=(1, 1), groups=1, backend="numpy")
    args.update(bad)
    with pytest.raises(error):
        cf.conv(x, w, b, **args)


def test_another_dtype_shape_or_array_type_is_another_plan():
    x, w, b = _arrays()
    cf.conv(x, w, b, backend="numpy")
    with pytest.raises(TypeError, match="mixed dtypes"):
        cf.conv(x, w.astype(np.float64), b, backend="numpy")
    with pytest.raises(ValueError, match="bias has shape"):
        cf.conv(x[:, :, :5], w[:2], b, backend="numpy")
    with pytest.raises(TypeError):
        cf.conv(x.tolist(), w, b, backend="numpy")  # not an array: never a plan's key
    y64 = cf.conv(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64),
                  backend="numpy")
    assert y64.dtype == np.float64
    assert len(plans._plans) == 2


def test_a_lookalike_array_gets_the_validation_error():
    class Lookalike:  # shape and dtype, unhashable: not an array
        shape = (2, 3, 9, 9)
        dtype: list = []

    _, w, b = _arrays()
    for _ in range(2):
        with pytest.raises(TypeError, match="x"):
            cf.conv(Lookalike(), w, b, backend="numpy")
    assert plans._plans == {}


def test_layout_is_handled_per_call():
    x, w, b = _arrays()
    expected = cf.conv(np.asfortranarray(x), w, b, backend="numpy")
    strided = np.zeros((2, 3, 9, 18), np.float32)[..., ::2]
    strided[...] = x
    cf.conv(x, w, b, backend="cpp" if "cpp" in CPU_BACKENDS else "numpy")
    got = cf.conv(strided, w, b, backend="cpp" if "cpp" in CPU_BACKENDS else "numpy")
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_inputs_are_not_modified_on_the_planned_path():
    x, w, b = _arrays()
    copies = [a.copy() for a in (x, w, b)]
    for _ in range(2):
        cf.conv(x, w, b, activation="relu", backend=CPU_BACKENDS[-1])
    for a, c in zip((x, w, b), copies):
        np.testing.assert_array_equal(a, c)


def test_the_kernel_is_looked_up_at_each_call(monkeypatch):
    x, w, b = _arrays()
    cf.conv(x, w, b, backend="numpy")
    seen = []
    ops = registry.get_backend("numpy").ops
    real = ops["conv"]
    monkeypatch.setitem(ops, "conv", lambda *a: seen.append(1) or real(*a))
    cf.conv(x, w, b, backend="numpy")
    assert seen == [1]


def test_backend_choice_changes_apply_at_once(monkeypatch):
    if "numba" not in CPU_BACKENDS:
        pytest.skip("needs two CPU backends")
    x, w, b = _arrays()
    spies = {}
    for name in ("numpy", "numba"):
        ops = registry.get_backend(name).ops
        real = ops["conv"]
        monkeypatch.setitem(ops, "conv", lambda *a, _n=name, _r=real: (
            spies.setdefault(_n, []).append(1), _r(*a))[1])
    with cf.use_backend("numpy"):
        cf.conv(x, w, b)
        cf.conv(x, w, b)
    with cf.use_backend("numba"):
        cf.conv(x, w, b)
    cf.set_backend("numpy")
    try:
        cf.conv(x, w, b)
    finally:
        cf.set_backend(None)
    monkeypatch.setenv("CNNFAST_BACKEND", "numba")
    cf.conv(x, w, b)
    assert spies == {"numpy": [1, 1, 1], "numba": [1, 1]}


def test_register_backend_replaces_a_planned_backend(monkeypatch):
    x, w, b = _arrays()
    monkeypatch.setitem(registry._MODULES, "plans-test", "cnnfast.backends.numpy.backend")
    monkeypatch.delitem(registry._loaded, "plans-test", raising=False)
    cf.conv(x, w, b, backend="plans-test")
    old = registry.get_backend("plans-test")
    cf.register_backend("plans-test", "cnnfast.backends.numpy.backend")
    (plan,) = plans._plans.values()
    assert plan.backend is old and plans.find(next(iter(plans._plans))) is None
    cf.conv(x, w, b, backend="plans-test")  # planned again, on the new backend object
    assert any(p.backend is registry.get_backend("plans-test")
               for p in plans._plans.values())
    monkeypatch.delitem(registry._loaded, "plans-test", raising=False)


def test_indices_are_checked_on_every_call():
    x, _, _ = _arrays()
    y, idx = cf.max_pool(x, 2, return_indices=True, backend="numpy")
    gy = np.ones_like(y)
    cf.max_pool_backward(gy, idx, x.shape, backend="numpy")
    bad = idx.copy()
    bad[0, 0, 0, 0] = 81
    with pytest.raises(ValueError, match="indices must lie in"):
        cf.max_pool_backward(gy, bad, x.shape, backend="numpy")
    assert len(plans._plans) == 2  # max_pool's and max_pool_backward's


def test_calls_that_are_not_planned():
    x, w, b = _arrays()
    out = np.empty((2, 4, 7, 7), np.float32)
    cf.conv(x, w, b, backend="numpy", out=out)
    cf.explain("conv", x, w, b, backend="numpy")
    with cf.use_algorithm("gemm"):
        cf.conv(x, w, b)
    cf.conv(np.zeros((0, 3, 9, 9), np.float32), w, b, backend="numpy")  # empty: dispatcher
    cf.max_pool_backward(np.zeros((0, 3, 4, 4), np.float32),
                         np.zeros((0, 3, 4, 4), np.int64), (0, 3, 9, 9), backend="numpy")
    assert plans._plans == {}


def test_explain_validates_as_the_call_does_after_a_plan():
    x, w, b = _arrays()
    cf.conv(x, w, b, backend="numpy")
    assert cf.explain("conv", x, w, b, backend="numpy").startswith("numpy")
    with pytest.raises(ValueError, match="bias has shape"):
        cf.explain("conv", x, w, b[:2], backend="numpy")


def test_autotune_calls_are_not_planned(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNFAST_CACHE_DIR", str(tmp_path))
    x, w, b = _arrays()
    cf.set_autotune(True)
    try:
        cf.conv(x, w, b, backend=CPU_BACKENDS[-1])
    finally:
        cf.set_autotune(False)
    assert plans._plans == {}


def test_the_plans_are_bounded(monkeypatch):
    monkeypatch.setattr(plans, "MAX_PLANS", 3)
    x, w, b = _arrays()
    for stride in range(1, 8):
        cf.conv(x, w, b, stride=stride, backend="numpy")
        assert len(plans._plans) <= 3


# ----------------------------------------------------------------------------- environ


def test_getenv_follows_the_environment(monkeypatch):
    monkeypatch.delenv("CNNFAST_PLANS_TEST", raising=False)
    assert environ.getenv("CNNFAST_PLANS_TEST") == ""
    monkeypatch.setenv("CNNFAST_PLANS_TEST", "caf\u00e9 1")
    assert environ.getenv("CNNFAST_PLANS_TEST") == "caf\u00e9 1"
    os.environ["CNNFAST_PLANS_TEST"] = "2"
    assert environ.getenv("CNNFAST_PLANS_TEST") == "2"
    del os.environ["CNNFAST_PLANS_TEST"]
    assert environ.getenv("CNNFAST_PLANS_TEST") == ""


def test_getenv_falls_back_to_a_replaced_environ(monkeypatch):
    monkeypatch.setattr(os, "environ", {"CNNFAST_PLANS_TEST": "3"})
    assert environ.getenv("CNNFAST_PLANS_TEST") == "3"
    assert environ.getenv("CNNFAST_PLANS_TEST_UNSET") == ""
