"""Path recording of the CUDA backends (``last_paths()``), on ``cuda-emu``: each
convolution path forced with ``algorithm=`` runs (and matches the numpy reference),
the automatic choice runs the paths ``cnnfast.explain`` names, a forced path that
cannot run is refused before any kernel (recording nothing), and the record is per
thread. The cupy backend records through the same launch code (conv_launch)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import cnnfast as cf

emu = pytest.importorskip("cnnfast.backends.cuda.emu_backend")
if emu.availability() is not None:  # pragma: no cover - depends on the machine
    pytest.skip(f"cuda-emu unavailable: {emu.availability()}", allow_module_level=True)

BACKEND = "cuda-emu"
ALL_OPS = ("conv", "conv_backward", "conv_transpose", "conv_transpose_backward")
RESULTS = {"conv": {"y"}, "conv_transpose": {"y"},
           "conv_backward": {"grad_x", "grad_weight"},
           "conv_transpose_backward": {"grad_x", "grad_weight"}}


def _case(x_shape, w_shape, **kw):
    rng = np.random.default_rng(5)
    return rng.standard_normal(x_shape), rng.standard_normal(w_shape), kw


# The automatic choice: direct for groups of few output channels, GEMM otherwise.
DEPTHWISE = _case((2, 4, 7, 6), (4, 1, 3, 3), groups=4, padding=1)
DENSE_S2 = _case((2, 6, 7, 6), (5, 6, 3, 2), stride=2, padding=(1, 0))
GROUPED_WIDE = _case((1, 4, 5, 5), (32, 2, 3, 3), groups=2)
# A stride of more phases than the adjoint GEMM's tables hold (300 x 300 > 65535): its
# MODE_ADJ kernels (conv_backward's grad_x, conv_transpose's y) fall back to direct.
HUGE_STRIDE = _case((1, 2, 302, 302), (3, 2, 2, 2), stride=300)


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


def _explained_paths(text):
    """{result: path} of a CUDA backend's explain text: "cuda-emu: <path>; why: ...;
    grad_weight <path>; why: ..."."""
    assert text.startswith(f"{BACKEND}: "), text
    parts = text[len(BACKEND) + 2:].split("; ")
    paths = {}
    for kernel, why in zip(parts[::2], parts[1::2]):
        assert why.startswith("why: "), text
        name, _, path = kernel.rpartition(" ")
        paths[name or "y"] = path
    return paths


def _close(got, want):
    got = got if isinstance(got, tuple) else (got,)
    want = want if isinstance(want, tuple) else (want,)
    for g, r in zip(got, want):
        np.testing.assert_allclose(g, r, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("algorithm,case", [("gemm", DEPTHWISE), ("direct", DENSE_S2)],
                         ids=["gemm", "direct"])
def test_forced_path_runs_and_is_recorded(algorithm, case):
    # Each case's automatic choice is the other path: forcing it is what changes it.
    assert algorithm in emu.ALGORITHMS
    for op in ALL_OPS:
        args, kw = _args(op, case)
        auto = _explained_paths(cf.explain(op, *args, backend=BACKEND, **kw))
        assert set(auto.values()) == {"gemm", "direct"} - {algorithm}, (op, auto)
        got = getattr(cf, op)(*args, backend=BACKEND, algorithm=algorithm, **kw)
        assert emu.last_paths() == dict.fromkeys(RESULTS[op], algorithm), op
        _close(got, getattr(cf, op)(*args, backend="numpy", **kw))
        text = cf.explain(op, *args, backend=BACKEND, algorithm=algorithm, **kw)
        assert _explained_paths(text) == emu.last_paths() and "why: forced" in text


@pytest.mark.parametrize("case", [DEPTHWISE, DENSE_S2, GROUPED_WIDE, HUGE_STRIDE],
                         ids=["depthwise", "dense_s2", "grouped_wide", "huge_stride"])
@pytest.mark.parametrize("op", ALL_OPS)
def test_automatic_choice_runs_what_explain_names(op, case):
    args, kw = _args(op, case)
    explained = _explained_paths(cf.explain(op, *args, backend=BACKEND, **kw))
    got = getattr(cf, op)(*args, backend=BACKEND, **kw)
    assert emu.last_paths() == explained
    assert set(explained) == RESULTS[op]
    _close(got, getattr(cf, op)(*args, backend="numpy", **kw))


def test_automatic_choice_covers_both_paths_and_the_stride_fallback():
    paths = {}
    for name, case in (("depthwise", DEPTHWISE), ("dense", DENSE_S2),
                       ("huge_stride", HUGE_STRIDE)):
        args, kw = _args("conv_transpose", case)
        paths[name] = cf.explain("conv_transpose", *args, backend=BACKEND, **kw)
    assert paths["depthwise"].startswith(f"{BACKEND}: direct; why: 4 groups of 1 (< 16)")
    assert paths["dense"] == f"{BACKEND}: gemm; why: one group"
    assert "stride phases" in paths["huge_stride"]
    assert _explained_paths(paths["huge_stride"]) == {"y": "direct"}


def test_backward_records_the_kernels_of_needs_only():
    args, kw = _args("conv_backward", DENSE_S2)
    cf.conv_backward(*args, needs=("weight",), backend=BACKEND, **kw)
    assert emu.last_paths() == {"grad_weight": "gemm"}
    cf.conv_backward(*args, needs=("x", "bias"), backend=BACKEND, **kw)
    assert emu.last_paths() == {"grad_x": "gemm"}
    cf.conv_backward(*args, needs=("bias",), backend=BACKEND, **kw)
    assert emu.last_paths() == {}  # the bias gradient has one path


def test_forced_path_that_cannot_run_is_refused_and_records_nothing():
    args, kw = _args("conv", DENSE_S2)
    cf.conv(*args, backend=BACKEND, **kw)
    assert emu.last_paths() == {"y": "gemm"}
    args, kw = _args("conv_transpose", HUGE_STRIDE)
    with pytest.raises(NotImplementedError, match="stride phases"):
        cf.conv_transpose(*args, backend=BACKEND, algorithm="gemm", **kw)
    assert emu.last_paths() == {}
    with pytest.raises(NotImplementedError, match="stride phases"):
        cf.explain("conv_transpose", *args, backend=BACKEND, algorithm="gemm", **kw)


def test_explain_and_pooling_leave_the_record():
    args, kw = _args("conv", DEPTHWISE)
    cf.conv(*args, backend=BACKEND, **kw)
    recorded = emu.last_paths()
    assert recorded == {"y": "direct"}
    bargs, bkw = _args("conv_backward", DENSE_S2)
    cf.explain("conv_backward", *bargs, backend=BACKEND, **bkw)
    cf.max_pool(args[0], 2, backend=BACKEND)
    cf.avg_pool(args[0], 2, backend=BACKEND)
    assert emu.last_paths() is recorded


def test_record_is_per_thread():
    args, kw = _args("conv", DENSE_S2)
    cf.conv(*args, backend=BACKEND, **kw)
    seen = {}

    def other():
        seen["before"] = dict(emu.last_paths())
        dargs, dkw = _args("conv", DEPTHWISE)
        cf.conv(*dargs, backend=BACKEND, **dkw)
        seen["after"] = dict(emu.last_paths())

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert seen == {"before": {}, "after": {"y": "direct"}}
    assert emu.last_paths() == {"y": "gemm"}
