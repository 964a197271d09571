"""Autotuning of the convolution algorithm (``cnnfast.set_autotune``) and the algorithm
pin (``cnnfast.set_algorithm`` / ``use_algorithm``).

The timer is replaced by a fake (``FakeTimer``) that runs the candidate, counts the
call and returns a time from a table, so that the tests choose the winner and count
the timings without measuring anything: no assertion depends on wall time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

import cnnfast as cf
from cnnfast import autotune, threads
from cnnfast.autotune import AutotuneCacheWarning
from cnnfast.registry import get_backend

ALL_OPS = ("conv", "conv_backward", "conv_transpose", "conv_transpose_backward")
# The CPU backends with several algorithms, and one of them that runs every case.
TUNABLE = {"cpp": "gemm", "numba": "direct"}


def _module(name):
    b = get_backend(name)
    if not b.available:
        pytest.skip(f"backend {name!r} unavailable: {b.reason}")
    return b.module


class FakeTimer:
    """``autotune._measure``: runs the candidate and returns ``times[algorithm]``
    (default 1.0); ``calls`` lists the algorithms it timed."""

    def __init__(self):
        self.times = {}
        self.calls = []

    def __call__(self, run, algorithm):
        run()
        self.calls.append(algorithm)
        return self.times.get(algorithm, 1.0)


@pytest.fixture
def tuning(tmp_path, monkeypatch):
    """Autotuning on, the cache in ``tmp_path``, a fresh process's memory, the fake
    timer (returned)."""
    monkeypatch.setenv("CNNFAST_CACHE_DIR", str(tmp_path))
    autotune._reset()
    timer = FakeTimer()
    monkeypatch.setattr(autotune, "_measure", timer)
    monkeypatch.setattr(threads, "_num_threads", threads._num_threads)  # restored after
    cf.set_autotune(True)
    yield timer
    cf.set_autotune(False)
    cf.set_algorithm(None)
    autotune._reset()


@pytest.fixture(params=list(TUNABLE))
def tb(request):
    """A tunable backend's name (skipped when unavailable)."""
    _module(request.param)
    return request.param


@pytest.fixture
def no_pin():
    yield
    cf.set_algorithm(None)


def _cache(tmp_path):
    return json.loads((tmp_path / autotune.FILE_NAME).read_text())


def _case(x_shape, w_shape, seed=3):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(x_shape), rng.standard_normal(w_shape)


X2, W2 = _case((2, 8, 9, 9), (8, 8, 3, 3))  # dense, 2-d
SHAPES = {1: ((2, 4, 11), (4, 4, 3)), 2: ((2, 4, 7, 7), (4, 4, 3, 3)),
          3: ((1, 2, 5, 5, 5), (2, 2, 2, 2, 2))}


def _args(op, x, w, **kw):
    """The arguments of ``op`` on the conv geometry ``x``, ``w`` (the transposed ops
    read ``w`` as (C_in, C_out/G, *k))."""
    y = cf.conv(x, w, backend="numpy", **kw)
    if op == "conv":
        return (x, w)
    if op == "conv_backward":
        return (np.ones_like(y), x, w)
    if op == "conv_transpose":
        return (y, w)
    yt = cf.conv_transpose(y, w, backend="numpy", **kw)
    return (np.ones_like(yt), y, w)


def _equal(got, want):
    got = got if isinstance(got, tuple) else (got,)
    want = want if isinstance(want, tuple) else (want,)
    for g, r in zip(got, want):
        assert (g is None) == (r is None)
        if g is not None:
            np.testing.assert_array_equal(g, r)


# ----------------------------------------------------------------------------- cache


def test_cache_is_created_versioned_and_reused(tuning, tmp_path, tb):
    module, winner = _module(tb), TUNABLE[tb]
    tuning.times = {winner: 0.5}
    y = cf.conv2d(X2, W2, padding=1, backend=tb)
    assert winner in tuning.calls and "auto" in tuning.calls
    assert module.last_paths() == {"y": winner}  # the winner ran last, for the result
    np.testing.assert_allclose(y, cf.conv2d(X2, W2, padding=1, backend="numpy"),
                               rtol=1e-12, atol=1e-12)

    data = _cache(tmp_path)
    assert data["format"] == "cnnfast-autotune"
    assert data["version"] == autotune.FORMAT_VERSION
    [(key, entry)] = data["entries"].items()
    assert entry["algorithm"] == winner
    assert set(entry["seconds"]) == set(tuning.calls)
    fields = json.loads(key)
    assert fields["op"] == "conv" and fields["backend"] == tb
    assert fields["x"] == list(X2.shape) and fields["w"] == list(W2.shape)
    assert fields["padding"] == [[1, 1], [1, 1]] and fields["dtype"] == "float64"
    assert fields["threads"] == cf.get_num_threads()
    assert fields["isa"] == (module._cpp.kernel_path() if tb == "cpp" else None)
    assert fields["device"] == autotune.cpu_model()
    assert fields["version"] == cf.__version__

    timed = len(tuning.calls)
    cf.conv2d(X2, W2, padding=1, backend=tb)  # cached in memory
    assert len(tuning.calls) == timed and module.last_paths() == {"y": winner}
    autotune._reset()  # a new process: read from the file
    cf.conv2d(X2, W2, padding=1, backend=tb)
    assert len(tuning.calls) == timed and module.last_paths() == {"y": winner}


@pytest.mark.parametrize("backend,winner", list(TUNABLE.items()))
@pytest.mark.parametrize("op", ALL_OPS)
@pytest.mark.parametrize("rank", (1, 2, 3))
def test_result_is_the_forced_algorithms(tuning, backend, winner, op, rank):
    module = _module(backend)
    x, w = _case(*SHAPES[rank])
    args = _args(op, x, w, padding=1)
    copies = [a.copy() for a in args]
    tuning.times = {winner: 0.5}
    got = getattr(cf, op)(*args, padding=1, backend=backend)
    assert tuning.calls, "nothing was timed"
    assert set(module.last_paths().values()) == {winner}
    for a, c in zip(args, copies):  # inputs untouched
        np.testing.assert_array_equal(a, c)
    _equal(got, getattr(cf, op)(*args, padding=1, backend=backend, algorithm=winner))
    text = cf.explain(op, *args, padding=1, backend=backend)
    assert text.endswith(f"autotuned: {winner} (cached)")


def test_backend_choice_kept_on_ties(tuning, tmp_path, tb):
    module = _module(tb)
    y = cf.conv2d(X2, W2, stride=2, backend=tb)  # every candidate "takes" 1.0
    assert [e["algorithm"] for e in _cache(tmp_path)["entries"].values()] == ["auto"]
    auto_paths = module.last_paths()
    cf.set_autotune(False)
    _equal(y, cf.conv2d(X2, W2, stride=2, backend=tb))
    assert module.last_paths() == auto_paths
    cf.set_autotune(True)
    assert cf.explain("conv2d", X2, W2, stride=2, backend=tb).endswith(
        "autotuned: auto (cached)")


def test_automatic_backend_choice_is_tuned_too(tuning, tmp_path):
    chosen = cf.explain("conv2d", X2, W2, padding=1).split(":")[0]
    if chosen not in TUNABLE:
        pytest.skip(f"the automatic choice is {chosen!r}, which has one algorithm")
    cf.conv2d(X2, W2, padding=1)  # no backend named
    assert tuning.calls
    assert json.loads(next(iter(_cache(tmp_path)["entries"])))["backend"] == chosen


@pytest.mark.parametrize("content", [
    b"{not json", b"[]", b"\xff\xfe\x00garbage",
    json.dumps({"format": "cnnfast-autotune", "version": 999, "entries": {}}).encode(),
    json.dumps({"format": "something else", "version": 1, "entries": {}}).encode(),
    json.dumps({"format": "cnnfast-autotune", "version": 1, "entries": []}).encode(),
], ids=["bad-json", "list", "binary", "other-version", "other-format", "bad-entries"])
def test_corrupt_cache_warns_once_and_is_replaced(tuning, tmp_path, tb, content):
    (tmp_path / autotune.FILE_NAME).write_bytes(content)
    with pytest.warns(AutotuneCacheWarning) as record:
        y = cf.conv2d(X2, W2, padding=1, backend=tb)
    assert len([r for r in record if r.category is AutotuneCacheWarning]) == 1
    np.testing.assert_allclose(y, cf.conv2d(X2, W2, padding=1, backend="numpy"),
                               rtol=1e-12, atol=1e-12)
    data = _cache(tmp_path)  # replaced by a valid file
    assert data["version"] == autotune.FORMAT_VERSION and len(data["entries"]) == 1


def test_malformed_entries_are_dropped(tuning, tmp_path, tb):
    cf.conv2d(X2, W2, padding=1, backend=tb)
    data = _cache(tmp_path)
    data["entries"]["junk"] = {"algorithm": 3}
    (tmp_path / autotune.FILE_NAME).write_text(json.dumps(data))
    autotune._reset()
    timed = len(tuning.calls)
    with pytest.warns(AutotuneCacheWarning, match="malformed"):
        cf.conv2d(X2, W2, padding=1, backend=tb)
    assert len(tuning.calls) == timed  # the good entry was used


def test_entries_of_another_cpu_are_ignored_and_kept(tuning, tmp_path, tb):
    cf.conv2d(X2, W2, padding=1, backend=tb)
    data = _cache(tmp_path)
    [(key, entry)] = data["entries"].items()
    fields = json.loads(key)
    fields["device"] = "Another CPU (x86_64)"
    other = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    data["entries"] = {other: entry}
    (tmp_path / autotune.FILE_NAME).write_text(json.dumps(data))
    autotune._reset()
    timed = len(tuning.calls)
    cf.conv2d(X2, W2, padding=1, backend=tb)
    assert len(tuning.calls) > timed  # timed again on this CPU
    assert set(_cache(tmp_path)["entries"]) == {key, other}


def test_write_merges_with_the_file(tuning, tmp_path, tb):
    cf.conv2d(X2, W2, padding=1, backend=tb)
    data = _cache(tmp_path)  # another process adds an entry meanwhile
    data["entries"]["from another process"] = {"algorithm": "gemm", "seconds": {},
                                               "time": 1.0}
    (tmp_path / autotune.FILE_NAME).write_text(json.dumps(data))
    cf.conv2d(X2, W2, padding=2, backend=tb)
    assert len(_cache(tmp_path)["entries"]) == 3
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_cache_is_bounded(tuning, tmp_path, monkeypatch, tb):
    monkeypatch.setattr(autotune, "MAX_ENTRIES", 2)
    for pad in (0, 1, 2):
        cf.conv2d(X2, W2, padding=pad, backend=tb)
    kept = [json.loads(k)["padding"][0][0] for k in _cache(tmp_path)["entries"]]
    assert sorted(kept) == [1, 2]  # the oldest dropped


def test_unwritable_cache_warns_once_and_keeps_choices(tuning, tmp_path, monkeypatch, tb):
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("CNNFAST_CACHE_DIR", str(tmp_path / "a-file" / "sub"))
    with pytest.warns(AutotuneCacheWarning, match="cannot write"):
        y = cf.conv2d(X2, W2, padding=1, backend=tb)
    np.testing.assert_allclose(y, cf.conv2d(X2, W2, padding=1, backend="numpy"),
                               rtol=1e-12, atol=1e-12)
    timed = len(tuning.calls)
    with warnings.catch_warnings():
        warnings.simplefilter("error", AutotuneCacheWarning)
        cf.conv2d(X2, W2, padding=1, backend=tb)  # kept in memory
        cf.conv2d(X2, W2, padding=2, backend=tb)  # cannot write again: no warning
    assert len(tuning.calls) > timed


# ----------------------------------------------------------------------------- the key


def test_thread_count_is_in_the_key(tuning, tmp_path, tb):
    cf.set_num_threads(1)
    cf.conv2d(X2, W2, padding=1, backend=tb)
    timed = len(tuning.calls)
    cf.set_num_threads(2)
    cf.conv2d(X2, W2, padding=1, backend=tb)
    assert len(tuning.calls) > timed
    assert sorted(json.loads(k)["threads"] for k in _cache(tmp_path)["entries"]) == [1, 2]


def test_backward_needs_and_dtype_are_in_the_key(tuning, tmp_path, tb):
    gy = np.ones((2, 8, 9, 9))
    cf.conv_backward(gy, X2, W2, padding=1, backend=tb)
    cf.conv_backward(gy, X2, W2, padding=1, needs=("weight",), backend=tb)
    cf.conv_backward(gy.astype(np.float32), X2.astype(np.float32), W2.astype(np.float32),
                     padding=1, needs=("weight",), backend=tb)
    keys = [json.loads(k) for k in _cache(tmp_path)["entries"]]
    assert sorted((k["dtype"], tuple(k["needs"])) for k in keys) == [
        ("float32", ("weight",)), ("float64", ("bias", "weight", "x")),
        ("float64", ("weight",))]


# ----------------------------------------------------------------------------- explain


def test_explain_says_what_autotuning_would_do(tuning, tmp_path, tb):
    module = _module(tb)
    text = cf.explain("conv2d", X2, W2, padding=1, backend=tb)
    assert text.startswith(f"{tb}: ")
    line = text.rsplit("; ", 1)[1]
    assert line.startswith("autotune: would time candidates auto, ")
    names = line.removeprefix("autotune: would time candidates ").split(", ")
    assert set(names[1:]) <= set(module.ALGORITHMS) and len(names) >= 2
    assert not tuning.calls and not (tmp_path / autotune.FILE_NAME).exists()
    tuning.times = {names[-1]: 0.5}
    cf.conv2d(X2, W2, padding=1, backend=tb)
    assert cf.explain("conv2d", X2, W2, padding=1, backend=tb).endswith(
        f"autotuned: {names[-1]} (cached)")


def test_explain_without_autotuning_is_unchanged(tb):
    assert not cf.get_autotune()
    assert "autotun" not in cf.explain("conv2d", X2, W2, padding=1, backend=tb)


def test_cases_not_timed(tuning, monkeypatch, tb):
    assert "autotune: not timed" in cf.explain("conv2d", X2, W2, backend="numpy")
    gy = np.ones((2, 8, 7, 7))
    text = cf.explain("conv_backward", gy, X2, W2, needs=("bias",), backend=tb)
    assert "not timed (no convolution kernel" in text
    cf.conv_backward(gy, X2, W2, needs=("bias",), backend=tb)
    y = cf.conv2d(X2[:0], W2, backend=tb)  # empty: no kernel at all
    assert y.shape == (0, 8, 7, 7)
    monkeypatch.setattr(autotune, "MAX_WORK", 10.0)
    assert "not timed (over" in cf.explain("conv2d", X2, W2, backend=tb)
    cf.conv2d(X2, W2, backend=tb)
    assert not tuning.calls


def test_explicit_algorithm_is_not_tuned(tuning, tb):
    module = _module(tb)
    cf.conv2d(X2, W2, padding=1, backend=tb, algorithm="gemm")
    assert not tuning.calls and module.last_paths() == {"y": "gemm"}


# ----------------------------------------------------------------------------- switches


@pytest.mark.parametrize("value,on", [("1", True), ("true", True), ("ON", True),
                                      (" yes ", True), ("0", False), ("", False),
                                      ("off", False)])
def test_env_values(monkeypatch, value, on):
    monkeypatch.setenv("CNNFAST_AUTOTUNE", value)
    assert autotune._env_flag() is on


def test_env_invalid_value_warns_and_stays_off(monkeypatch):
    monkeypatch.setenv("CNNFAST_AUTOTUNE", "maybe")
    with pytest.warns(RuntimeWarning, match="CNNFAST_AUTOTUNE='maybe'"):
        assert autotune._env_flag() is False


def test_env_turns_autotuning_on_at_import(tmp_path):
    env = dict(os.environ, CNNFAST_AUTOTUNE="1", CNNFAST_CACHE_DIR=str(tmp_path))
    code = "import cnnfast; print(cnnfast.get_autotune())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "True"


def test_set_autotune():
    assert cf.get_autotune() is False
    with pytest.raises(TypeError, match="bool"):
        cf.set_autotune(1)
    cf.set_autotune(np.bool_(True))
    try:
        assert cf.get_autotune() is True
    finally:
        cf.set_autotune(False)


# ----------------------------------------------------------------------------- the pin


def test_global_pin(no_pin):
    numba = _module("numba")
    cf.set_algorithm("direct")
    y = cf.conv2d(X2, W2, padding=1, backend="numba")
    assert numba.last_paths() == {"y": "direct"}
    _equal(y, cf.conv2d(X2, W2, padding=1, backend="numba", algorithm="direct"))
    assert "forced" in cf.explain("conv2d", X2, W2, padding=1, backend="numba")
    # No backend named: the pin picks the backend that knows it, as algorithm= does.
    assert cf.explain("conv2d", X2, W2, padding=1).startswith("numba: direct")
    cf.conv2d(X2, W2, padding=1, backend="numba", algorithm="gemm")  # the call wins
    assert numba.last_paths() == {"y": "gemm"}
    cf.max_pool2d(X2, 2)  # pooling has no algorithm
    cf.set_algorithm(None)
    cf.conv2d(X2, W2, padding=1, backend="numba")
    assert numba.last_paths() == {"y": "gemm-wide"}  # the backend's own choice again


def test_context_pin(no_pin):
    numba = _module("numba")
    cf.set_algorithm("direct")
    with cf.use_algorithm("gemm"):
        cf.conv2d(X2, W2, padding=1, backend="numba")
        assert numba.last_paths() == {"y": "gemm"}
        with cf.use_algorithm(None):  # no pin inside, whatever the global one says
            cf.conv2d(X2, W2, padding=1, backend="numba")
            assert numba.last_paths() == {"y": "gemm-wide"}
    cf.conv2d(X2, W2, padding=1, backend="numba")
    assert numba.last_paths() == {"y": "direct"}


def test_pin_errors(no_pin):
    _module("numba")
    with pytest.raises(ValueError, match="fft"):
        cf.set_algorithm("fft")
    with pytest.raises(TypeError):
        cf.set_algorithm(3)
    with pytest.raises(ValueError, match="fft"):
        with cf.use_algorithm("fft"):
            pass
    cf.set_algorithm("gemm-wide")
    with pytest.raises(ValueError, match="'tap-matmul'") as info:  # not numpy's
        cf.conv2d(X2, W2, backend="numpy")
    assert "pinned by cnnfast.set_algorithm" in " ".join(info.value.__notes__)
    with pytest.raises(NotImplementedError, match="gemm-wide") as info:  # stride 2
        cf.conv2d(X2, W2, stride=2, backend="numba")
    assert "pinned by cnnfast.set_algorithm" in " ".join(info.value.__notes__)
    with pytest.raises(NotImplementedError, match="gemm-wide"):
        cf.explain("conv2d", X2, W2, stride=2, backend="numba")


def test_pin_wins_over_autotuning(tuning):
    numba = _module("numba")
    cf.set_algorithm("direct")
    cf.conv2d(X2, W2, padding=1, backend="numba")
    assert not tuning.calls and numba.last_paths() == {"y": "direct"}
    assert "autotun" not in cf.explain("conv2d", X2, W2, padding=1, backend="numba")
