"""``cnnfast.explain`` and ``algorithm=``: every algorithm of every CPU backend is
chosen automatically for some case (explain names it, and the call records that it
ran it), runs forced on a case it can run (matching the numpy reference), and is
refused with NotImplementedError where it cannot run; unknown names are a
ValueError; explain validates as the call would and runs no kernel."""

from __future__ import annotations

import numpy as np
import pytest

import cnnfast as cf
from cnnfast.registry import get_backend


def _backend_module(name):
    b = get_backend(name)
    if not b.available:
        pytest.skip(f"backend {name!r} unavailable: {b.reason}")
    return b.module


def _case(x_shape, w_shape, **kw):
    rng = np.random.default_rng(7)
    return rng.standard_normal(x_shape), rng.standard_normal(w_shape), kw


DEPTHWISE_2D = _case((2, 4, 9, 9), (4, 1, 3, 3), groups=4, padding=1)
DEPTHWISE_3D = _case((1, 2, 5, 5, 5), (2, 1, 2, 2, 2), groups=2)
DENSE_S1 = _case((2, 8, 9, 9), (8, 8, 3, 3), padding=1)
DENSE_S2 = _case((2, 8, 9, 9), (8, 8, 3, 3), stride=2)
DENSE16_S1 = _case((2, 16, 9, 9), (16, 16, 3, 3), padding=1)
DENSE_3D = _case((1, 4, 5, 5, 5), (4, 4, 2, 2, 2))

# (backend, algorithm) -> (op, case, result): a case the automatic choice sends there.
AUTO = {
    ("cpp", "direct-2d"): ("conv", DEPTHWISE_2D, "y"),
    ("cpp", "direct-rows"): ("conv", DEPTHWISE_3D, "y"),
    ("cpp", "gemm-s1"): ("conv", DENSE_S1, "y"),
    ("cpp", "winograd"): ("conv", DENSE16_S1, "y"),  # 16 channels, 18 tiles of 4x4
    ("cpp", "gemm"): ("conv", DENSE_3D, "y"),
    ("cpp", "gemm-phase"): ("conv", DENSE_S2, "y"),
    ("numba", "direct"): ("conv", DEPTHWISE_2D, "y"),
    ("numba", "gemm"): ("conv", DENSE_S2, "y"),
    ("numba", "gemm-wide"): ("conv", DENSE_S1, "y"),
    ("numba", "phases"): ("conv_backward", DENSE_S2, "grad_x"),
    ("numpy", "tap-matmul"): ("conv", DENSE_S1, None),
}

# (backend, algorithm) -> (case, ops) forced onto a case they can run.
ALL_OPS = ("conv", "conv_backward", "conv_transpose", "conv_transpose_backward")
FORCED = {
    ("cpp", "direct-2d"): (DEPTHWISE_2D, ALL_OPS),
    ("cpp", "direct-rows"): (DEPTHWISE_2D, ALL_OPS),
    ("cpp", "gemm-s1"): (DEPTHWISE_2D, ALL_OPS),
    ("cpp", "gemm"): (DEPTHWISE_3D, ALL_OPS),
    ("cpp", "winograd"): (DENSE_S1, ALL_OPS),
    ("cpp", "gemm-phase"): (DENSE_S2, ALL_OPS),
    ("numba", "direct"): (DENSE_S2, ALL_OPS),
    ("numba", "gemm"): (DEPTHWISE_2D, ALL_OPS),
    ("numba", "gemm-wide"): (DEPTHWISE_2D, ("conv", "conv_transpose")),
    ("numba", "phases"): (DENSE_S2, ("conv_transpose",)),
    ("numpy", "tap-matmul"): (DENSE_S2, ALL_OPS),
}

# (backend, algorithm, op, case): forced where a kernel of the op has no such path.
UNFIT = [
    ("cpp", "direct-2d", "conv", DENSE_S1),       # several channels per group
    ("cpp", "direct-2d", "conv", DEPTHWISE_3D),   # 3-d
    ("cpp", "direct-rows", "conv_backward", DENSE_S2),
    ("cpp", "gemm-s1", "conv_transpose", DENSE_S2),  # stride 2
    ("cpp", "winograd", "conv", DENSE_S2),  # stride 2
    ("cpp", "winograd", "conv_backward", DEPTHWISE_2D),  # groups
    ("cpp", "winograd", "conv", DEPTHWISE_3D),  # 3-d
    ("cpp", "gemm-phase", "conv", DEPTHWISE_3D),  # 3-d
    ("numba", "gemm-wide", "conv", DENSE_S2),
    ("numba", "gemm-wide", "conv_backward", DENSE_S1),  # no wide weight gradient
    ("numba", "phases", "conv", DENSE_S2),
    ("numba", "gemm", "conv_transpose", DENSE_S2),  # strided: phases
]


def _args(op, case):
    """Positional arguments and keywords of ``op`` on ``case`` (conv geometry; the
    transposed ops read the weight as (C_in, C_out/G, *k))."""
    x, w, kw = case
    y = cf.conv(x, w, backend="numpy", **kw)
    if op == "conv":
        return (x, w), kw
    if op == "conv_backward":
        return (np.ones_like(y), x, w), kw
    if op == "conv_transpose":
        return (y, w), kw
    yt = cf.conv_transpose(y, w, backend="numpy", **kw)
    return (np.ones_like(yt), y, w), kw


def _close(got, want):
    got = got if isinstance(got, tuple) else (got,)
    want = want if isinstance(want, tuple) else (want,)
    for g, r in zip(got, want):
        np.testing.assert_allclose(g, r, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend,algorithm", list(AUTO), ids=lambda v: str(v))
def test_auto_choice_is_explained_and_recorded(backend, algorithm):
    module = _backend_module(backend)
    assert algorithm in module.ALGORITHMS
    op, case, result = AUTO[(backend, algorithm)]
    args, kw = _args(op, case)
    text = cf.explain(op, *args, backend=backend, **kw)
    assert text.startswith(f"{backend}: ")
    assert f" {algorithm} (" in text or text.startswith(f"{backend}: {algorithm} (")
    getattr(cf, op)(*args, backend=backend, **kw)
    if result is not None:  # the reference has one algorithm and records nothing
        assert module.last_paths()[result] == algorithm


@pytest.mark.parametrize("backend,algorithm", list(FORCED), ids=lambda v: str(v))
def test_forced_algorithm_matches_reference(backend, algorithm):
    module = _backend_module(backend)
    case, ops = FORCED[(backend, algorithm)]
    for op in ops:
        args, kw = _args(op, case)
        got = getattr(cf, op)(*args, backend=backend, algorithm=algorithm, **kw)
        _close(got, getattr(cf, op)(*args, backend="numpy", **kw))
        if backend != "numpy":
            assert set(module.last_paths().values()) == {algorithm}, op
        assert "forced" in cf.explain(op, *args, backend=backend, algorithm=algorithm, **kw)


def test_forced_algorithm_picks_its_backend():
    _backend_module("numba")
    (x, w), kw = _args("conv", DENSE_S1)
    assert cf.explain("conv", x, w, algorithm="gemm-wide", **kw).startswith("numba: ")
    assert cf.explain("conv", x, w, algorithm="tap-matmul", **kw).startswith("numpy: ")


@pytest.mark.parametrize("backend,algorithm,op,case", UNFIT,
                         ids=lambda v: v if isinstance(v, str) else "")
def test_forced_algorithm_that_cannot_run_raises(backend, algorithm, op, case):
    _backend_module(backend)
    args, kw = _args(op, case)
    with pytest.raises(NotImplementedError, match=algorithm):
        getattr(cf, op)(*args, backend=backend, algorithm=algorithm, **kw)
    with pytest.raises(NotImplementedError):
        cf.explain(op, *args, backend=backend, algorithm=algorithm, **kw)


def test_unknown_algorithm_names():
    (x, w), kw = _args("conv", DENSE_S1)
    with pytest.raises(ValueError, match="tap-matmul"):  # lists the vocabularies
        cf.conv2d(x, w, algorithm="fft", **kw)
    with pytest.raises(ValueError, match="'tap-matmul'"):  # cpp's, not numpy's
        cf.conv2d(x, w, backend="numpy", algorithm="winograd", **kw)
    with pytest.raises(ValueError, match="'tap-matmul'"):  # not numpy's
        cf.conv2d(x, w, backend="numpy", algorithm="gemm", **kw)
    with pytest.raises(TypeError):
        cf.conv2d(x, w, algorithm=3, **kw)
    with pytest.raises(ValueError):
        cf.conv_transpose_backward(*_args("conv_transpose_backward", DENSE_S1)[0],
                                   algorithm="fft", **kw)


@pytest.mark.parametrize("backend", ["cpp", "numba"])
def test_explain_runs_no_kernel(backend):
    module = _backend_module(backend)
    (x, w), kw = _args("conv", DENSE_S1)
    cf.conv(x, w, backend=backend, **kw)
    recorded = module.last_paths()
    args, kw2 = _args("conv_backward", DEPTHWISE_2D)
    assert "grad_weight" in cf.explain("conv_backward", *args, backend=backend, **kw2)
    assert module.last_paths() is recorded


def test_explain_validates_like_the_call():
    (x, w), _ = _args("conv", DENSE_S1)
    for call in (cf.conv2d, lambda *a, **k: cf.explain("conv2d", *a, **k)):
        with pytest.raises(ValueError, match="stride"):
            call(x, w, stride=0)
        with pytest.raises(ValueError):
            call(x[0], w)  # conv2d needs 4-d x
    with pytest.raises(ValueError, match="op_name"):
        cf.explain("conv4d", x, w)


def test_explain_pooling_and_example_output():
    _backend_module("cpp")
    x = np.ones((1, 2, 8, 8))
    assert cf.explain("max_pool2d", x, 2, backend="cpp") == "cpp"
    assert cf.explain("avg_pool", x, 2, backend="numpy") == "numpy"
    xd, wd, kw = DEPTHWISE_2D
    text = cf.explain("conv2d", xd, wd, backend="cpp", **kw)
    assert text.startswith("cpp: direct-2d (register-blocked direct kernel); why: ")
    assert "thread" in text


@pytest.mark.parametrize("backend", ["cpp", "numba"])
def test_forced_algorithm_is_checked_before_any_kernel_runs(backend):
    # gemm-s1 / gemm-wide fit this input gradient (stride 1, 8 channels per group) but
    # not its weight gradient (cpp: output rows longer than 256; numba: no wide path):
    # the call is refused before grad_x is computed.
    module = _backend_module(backend)
    algorithm = {"cpp": "gemm-s1", "numba": "gemm-wide"}[backend]
    rng = np.random.default_rng(3)
    x, w = rng.standard_normal((1, 8, 400)), rng.standard_normal((8, 8, 3))
    gy = rng.standard_normal((1, 8, 398))
    cf.conv_backward(gy, x, w, needs=("x",), backend=backend, algorithm=algorithm)
    assert module.last_paths() == {"grad_x": algorithm}
    with pytest.raises(NotImplementedError, match="weight"):
        cf.conv_backward(gy, x, w, backend=backend, algorithm=algorithm)
    assert module.last_paths() == {}


def test_explain_empty_convolution_runs_no_backend_kernel():
    x, w = np.ones((2, 0, 5)), np.ones((3, 0, 2))
    assert "no kernel" in cf.explain("conv1d", x, w, backend="numpy")


def test_fuzzer_forces_every_algorithm_name():
    # tests/fuzz.py keeps its own copy of the names (a seed must make the same cases
    # everywhere): it must stay the backends' vocabulary.
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    import fuzz

    for name, names in fuzz._ALGORITHMS.items():
        assert set(names) == set(_backend_module(name).ALGORITHMS), name
