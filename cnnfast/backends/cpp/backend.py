"""The C++ backend: the kernels of ``csrc/`` through the pybind11 module ``cnnfast.backends.cpp._cpp``.

Every convolution op is one of three C++ kernels on a "forward" geometry ``x (N, C,
*in) -> y (N, O, *out)`` with weight ``(O, C/G, *k)``, passed as a ``_cpp.ConvGeometry``
made by field name (see ``csrc/kernels.h`` and ``csrc/geometry.cpp``):

* ``conv_forward``: ``y = conv(x, w) + b``;
* ``conv_backward_data``: the adjoint of the above in ``x`` (``gx`` from ``gy``);
* ``conv_backward_weight``: the gradient in ``w``.

A transposed convolution ``x (N, C_in, *in) -> y (N, C_out, *out)`` with weight
``(C_in, C_out/G, *k)`` is the adjoint of the convolution ``y-space -> x-space`` whose
weight is that same array (see ``numpy_backend``'s docstring): its forward pass is
``conv_backward_data``, its input gradient ``conv_forward`` and its weight gradient
``conv_backward_weight`` with the roles of ``x`` and ``gy`` swapped.

Rank 1 and 2 are run as rank 3 with leading extent-1 dims (pooling likewise, through a
``_cpp.PoolGeometry``). The inputs (C-contiguous from the dispatcher) are read without
copies. Each kernel writes its result into the caller's ``out=`` array when the call has
one (the last arguments: ``out``, ``outs`` for the tuples; the dispatcher has checked its
shape, dtype, C-contiguity, writability and that it overlaps no input), else into an
array allocated here. The GIL is released inside every kernel. Thread count:
``cnnfast.get_num_threads()`` per call (``set_num_threads``, else
``CNNFAST_NUM_THREADS``, else ``OMP_NUM_THREADS``, else the cores available).

Algorithms (``ALGORITHMS``, ``cnnfast.explain``): each of the three kernels runs one of
the paths named by ``_cpp.conv_paths()`` -- ``direct-2d`` (register-blocked direct
kernels: one input channel per group, 1-d/2-d, kernel 1x3, 1x5, 3x3, 5x5 or 7x7),
``direct-rows`` (direct kernels for any other one-channel-per-group case),
``gemm-s1`` (stride-1 im2col GEMM over zero-padded rows, 1-d/2-d), ``gemm``
(im2col GEMM, any case), ``winograd`` (Winograd F(4x4, 3x3): 2-d 3x3 and 3-d KDx3x3
kernels of stride 1, no dilation, one group, the depth taps summed directly;
``csrc/conv/winograd.h``, ``winograd3d.h``, whose error is bounded by
the largest sum of |terms| of the call rather than each output's own, see
tests/test_winograd.py), and ``wgrad-short`` (weight gradient only: 1-d/2-d, at most 256
input channels x taps per group, vectorised over the output channels;
``csrc/conv/wgrad_short.h``), ``gemm-phase`` (im2col GEMM of any stride, 1-d/2-d,
reading the input through its stride phases; the input gradient one product per phase;
``csrc/conv/gemm_phase.h``). ``choose_path`` in ``csrc/kernels.h`` is the automatic
choice; ``algorithm=`` forces one path on every kernel of the call (a path that cannot
run a kernel's geometry raises ``_cpp.PathUnfit``, a ``NotImplementedError``). Each
call records the paths that ran in ``last_paths()``.

Activations (``activation=``) are fused: the kernel that writes ``y`` applies it to the
final values after the bias (``csrc/common/activation.h``), on every path; the backward
pass first makes ``g = grad_y * act'(y)`` and the bias gradient in one C++ pass
(``_cpp.act_grad``, into a reused per-thread workspace), then runs the gradient kernels
on ``g``.
"""

from __future__ import annotations

import functools
import os
import threading
import warnings

import numpy as np

from ... import threads as _threads
from ...geometry import lift_to_3d, pads_before_3d
from ...params import ConvParams, PoolParams, pool_window_counts

try:
    from . import _cpp
    _IMPORT_ERROR = None
except ImportError as exc:  # not built
    _cpp = None
    _IMPORT_ERROR = str(exc)

if _cpp is not None and _cpp.openmp()[0]:
    # Unless the user set a count, use what our OpenMP runtime would: threadpoolctl's
    # threadpool_limits sets it with omp_set_num_threads, which our explicit
    # num_threads clause would otherwise override.
    _threads.follow_openmp(lambda: _cpp.openmp()[2])

_FORCED_SIMD = os.environ.get("CNNFAST_SIMD")
if _cpp is not None and _FORCED_SIMD and _FORCED_SIMD != _cpp.simd_path():
    # The C++ side takes a path only where this CPU can run it: say why it did not.
    warnings.warn(f"CNNFAST_SIMD={_FORCED_SIMD!r} ignored: this build and CPU run "
                  f"{', '.join(_cpp.simd_paths())}; the cpp kernels use "
                  f"{_cpp.simd_path()!r}", RuntimeWarning, stacklevel=1)

ARRAY = "numpy"
DTYPES = ("float32", "float64")
ALGORITHMS = tuple(_cpp.conv_paths()) if hasattr(_cpp, "conv_paths") else ()

_record = threading.local()


def last_paths() -> dict:
    """The paths of this thread's last convolution call, by result (``"y"``,
    ``"grad_x"``, ``"grad_weight"``): what tests of a fast path assert."""
    return getattr(_record, "paths", {})


def availability():
    if _cpp is None:
        return (f"the C++ extension cnnfast.backends.cpp._cpp is not built ({_IMPORT_ERROR}); build it "
                f"with `pip install --no-build-isolation -e .`")
    if not hasattr(_cpp, "conv_forward"):
        return ("cnnfast.backends.cpp._cpp was built without kernels (csrc/kernels.cpp or "
                "csrc/isa/ missing from the build); rebuild with "
                "`pip install --no-build-isolation -e .`")
    return None


def num_threads() -> int:
    """Threads for the next kernel call (``cnnfast.get_num_threads()``)."""
    return _threads.get_num_threads()


# ----------------------------------------------------------------------------- geometry


def _conv_geo(n, c, o, groups, p: ConvParams, in_shape, out_shape):
    """The kernels' ``_cpp.ConvGeometry`` (checked in C++ when made), rank lifted to 3."""
    return _cpp.ConvGeometry(
        batch=n, in_channels=c, out_channels=o, groups=groups,
        in_size=lift_to_3d(in_shape, 1), out_size=lift_to_3d(out_shape, 1),
        kernel=lift_to_3d(p.kernel, 1), stride=lift_to_3d(p.stride, 1),
        dilation=lift_to_3d(p.dilation, 1), pad_before=pads_before_3d(p.padding))


# The geometry objects (read-only, checked in C++ when made) and the pooling divisors
# are cached per call signature: making them costs 7-10 us of Python per call, a fifth
# of a small pooling call (the global average pooling of the bench suite).
_GEOMETRY_CACHE = 512


@functools.lru_cache(maxsize=_GEOMETRY_CACHE)
def _pool_geo(planes, p: PoolParams):
    """The kernels' ``_cpp.PoolGeometry`` over ``planes`` = N*C planes."""
    return _cpp.PoolGeometry(
        planes=planes, in_size=lift_to_3d(p.in_shape, 1), out_size=lift_to_3d(p.out_shape, 1),
        kernel=lift_to_3d(p.kernel, 1), stride=lift_to_3d(p.stride, 1),
        dilation=lift_to_3d(p.dilation, 1), pad_before=pads_before_3d(p.padding))


# ----------------------------------------------------------------------------- conv


# Each op as its C++ kernels, (result name, kernel) -- see the docstring.
# The transposed ops run on the geometry of the convolution they are the adjoint of.
_KERNELS = {
    "conv": (("y", "forward"),),
    "conv_backward": (("grad_x", "backward_data"), ("grad_weight", "backward_weight")),
    "conv_transpose": (("y", "backward_data"),),
    "conv_transpose_backward": (("grad_x", "forward"), ("grad_weight", "backward_weight")),
}
_NEEDS = {"grad_x": "x", "grad_weight": "weight"}


@functools.lru_cache(maxsize=_GEOMETRY_CACHE)
def _geometry(x_shape, w_shape, p: ConvParams):
    n, c = x_shape[:2]
    if p.transposed:
        # The convolution from y-space (c_out channels, p.out_shape) to x-space
        # (c_in channels, p.in_shape) whose adjoint is this transposed convolution.
        c_out = w_shape[1] * p.groups
        return _conv_geo(n, c_out, c, p.groups, p, p.out_shape, p.in_shape)
    return _conv_geo(n, c, w_shape[0], p.groups, p, p.in_shape, p.out_shape)


def _check_forced(op, geo, p: ConvParams, needs=None):
    """A forced algorithm must fit every kernel the call runs, checked before any runs
    (so a backward pass never computes grad_x and then refuses grad_weight)."""
    if p.algorithm == "auto":
        return
    for name, kernel in _KERNELS[op]:
        if needs is None or _NEEDS.get(name) in needs:
            try:
                _cpp.conv_path(kernel, geo, p.algorithm)
            except _cpp.PathUnfit as exc:
                raise _cpp.PathUnfit(f"cpp: algorithm={p.algorithm!r} cannot run the "
                                     f"{name} kernel here: {exc}") from None


def _run(name, kernel, *args, act=False):
    """Run one C++ kernel with the call's algorithm (checked by ``_check_forced``) and
    record the path it took; ``act``: with the call's activation fused where the
    kernel writes its output (the forward kernel of the op)."""
    *arrays, p = args
    extra = (p.activation or "none", p.negative_slope) if act else ()
    _record.paths[name] = getattr(_cpp, "conv_" + kernel)(*arrays, num_threads(),
                                                            p.algorithm, *extra)


# The per-thread buffer of g = grad_y * act'(y), kept between calls: a fresh array of
# that size per backward pass would be returned to the OS by glibc (large blocks are
# mmapped) and page-fault on every call. It never leaves the call that fills it.
_work = threading.local()


def _workspace(shape, dtype):
    size = int(np.prod(shape))
    buf = getattr(_work, dtype.name, None)
    if buf is None or buf.size < size:
        buf = np.empty(size, dtype)
        setattr(_work, dtype.name, buf)
    return buf[:size].reshape(shape)


def _dest(out, shape, dtype):
    """A kernel's destination: the caller's ``out`` (checked by the dispatcher) or a
    fresh array."""
    return np.empty(shape, dtype) if out is None else out


_NO_OUTS = (None, None, None)


def _grad_y_and_bias(gy, y, p: ConvParams, needs, channels, gb_out=None):
    """The gradient at the pre-activation values (``gy`` itself without an activation,
    else ``gy * act'(y)`` in the per-thread workspace) and the bias gradient (None unless
    ``"bias"`` is in ``needs``; into ``gb_out`` when given), in one C++ pass over ``gy``
    and ``y``."""
    gb = _dest(gb_out, (channels,), gy.dtype) if "bias" in needs else None
    if p.activation is None:
        if gb is not None:
            _cpp.bias_grad(gy, gb, num_threads())
        return gy, gb
    g = _workspace(gy.shape, gy.dtype)
    _cpp.act_grad(gy, y, p.activation, p.negative_slope, g, gb, num_threads())
    return g, gb


_DESCRIPTION = {
    "direct-2d": "register-blocked direct kernel",
    "direct-rows": "direct kernel, row by row",
    "gemm-s1": "stride-1 im2col GEMM",
    "gemm": "im2col GEMM",
    "winograd": "winograd F(4x4,3x3): 36 products of transformed 6x6 tiles",
    "wgrad-short": "short-reduction weight gradient, vectorised over output channels",
    "gemm-phase": "im2col GEMM over the input's stride phases",
}


def explain(op, p, dtype, x_shape=None, w_shape=None, needs=None):
    """Which path each kernel of ``op`` would run, and why (``cnnfast.explain``)."""
    if op not in _KERNELS:
        return None  # pooling: one path per op
    geo = _geometry(tuple(x_shape), tuple(w_shape), p)
    parts = []
    for name, kernel in _KERNELS[op]:
        if needs is not None and _NEEDS.get(name) not in needs:
            continue
        path, why = _cpp.conv_path(kernel, geo, p.algorithm)
        label = "" if name == "y" else f"{name} "
        parts.append(f"{label}{path} ({_DESCRIPTION[path]}); why: {why}")
    if p.activation is not None and op in ("conv", "conv_transpose"):
        parts.append(f"epilogue: bias + {p.activation} fused")
    elif p.activation is not None:
        parts.append(f"epilogue: {p.activation} derivative and bias gradient fused in one pass")
    return (f"{'; '.join(parts)}; {_cpp.kernel_path()} kernels, "
            f"{num_threads()} thread(s)")


def conv(x, w, b, p: ConvParams, out=None):
    _record.paths = {}
    n, o = x.shape[0], w.shape[0]
    geo = _geometry(x.shape, w.shape, p)
    _check_forced("conv", geo, p)
    y = _dest(out, (n, o) + tuple(p.out_shape), x.dtype)
    _run("y", "forward", x, w, b, y, geo, p, act=True)
    return y


def conv_backward(gy, x, w, p: ConvParams, needs, y=None, outs=None):
    _record.paths = {}
    gx_out, gw_out, gb_out = outs or _NO_OUTS
    geo = _geometry(x.shape, w.shape, p)
    _check_forced("conv_backward", geo, p, needs)
    gy, gb = _grad_y_and_bias(gy, y, p, needs, w.shape[0], gb_out)
    gx = gw = None
    if "x" in needs:
        gx = _dest(gx_out, x.shape, x.dtype)
        _run("grad_x", "backward_data", gy, w, None, gx, geo, p)
    if "weight" in needs:
        gw = _dest(gw_out, w.shape, x.dtype)
        _run("grad_weight", "backward_weight", x, gy, gw, geo, p)
    return gx, gw, gb


def conv_transpose(x, w, b, p: ConvParams, out=None):
    _record.paths = {}
    c_out = w.shape[1] * p.groups
    geo = _geometry(x.shape, w.shape, p)
    _check_forced("conv_transpose", geo, p)
    y = _dest(out, (x.shape[0], c_out) + tuple(p.out_shape), x.dtype)
    _run("y", "backward_data", x, w, b, y, geo, p, act=True)
    return y


def conv_transpose_backward(gy, x, w, p: ConvParams, needs, y=None, outs=None):
    _record.paths = {}
    gx_out, gw_out, gb_out = outs or _NO_OUTS
    c_out = w.shape[1] * p.groups
    geo = _geometry(x.shape, w.shape, p)
    _check_forced("conv_transpose_backward", geo, p, needs)
    gy, gb = _grad_y_and_bias(gy, y, p, needs, c_out, gb_out)
    gx = gw = None
    if "x" in needs:
        gx = _dest(gx_out, x.shape, x.dtype)
        _run("grad_x", "forward", gy, w, None, gx, geo, p)
    if "weight" in needs:
        gw = _dest(gw_out, w.shape, x.dtype)
        _run("grad_weight", "backward_weight", gy, x, gw, geo, p)
    return gx, gw, gb


# ----------------------------------------------------------------------------- pooling


def max_pool(x, p: PoolParams, return_indices, outs=None):
    n, c = x.shape[:2]
    y_out, idx_out = outs or (None, None)
    y = _dest(y_out, (n, c) + tuple(p.out_shape), x.dtype)
    idx = _dest(idx_out, y.shape, np.int64) if return_indices else None
    _cpp.max_pool(x, y, idx, _pool_geo(n * c, p), num_threads())
    return y, idx


def max_pool_backward(gy, indices, x_shape, out=None):
    gx = _dest(out, tuple(x_shape), gy.dtype)
    _cpp.max_pool_backward(gy, np.ascontiguousarray(indices, np.int64), gx, num_threads())
    return gx


@functools.lru_cache(maxsize=_GEOMETRY_CACHE)
def _divisor_args(p: PoolParams):
    """Per-dim window counts (padded to 3 dims) and the override (0: none)."""
    if p.divisor_override is not None:
        return (), (), (), float(p.divisor_override)
    counts = []
    for i in range(p.rank):
        inside, padded = pool_window_counts(p, i)
        counts.append(tuple(float(v) for v in (padded if p.count_include_pad else inside)))
    counts = [(1.0,)] * (3 - p.rank) + counts
    return counts[0], counts[1], counts[2], 0.0


def avg_pool(x, p: PoolParams, out=None):
    n, c = x.shape[:2]
    y = _dest(out, (n, c) + tuple(p.out_shape), x.dtype)
    cz, cy, cx, ov = _divisor_args(p)
    _cpp.avg_pool(x, y, cz, cy, cx, ov, _pool_geo(n * c, p), num_threads())
    return y


def avg_pool_backward(gy, p: PoolParams, out=None):
    n, c = gy.shape[:2]
    gx = _dest(out, (n, c) + tuple(p.in_shape), gy.dtype)
    cz, cy, cx, ov = _divisor_args(p)
    _cpp.avg_pool_backward(gy, gx, cz, cy, cx, ov, _pool_geo(n * c, p), num_threads())
    return gx


# The kernels write into the caller's out= (the registry's WRITES_OUT).
WRITES_OUT = True
OPS = {
    "conv": conv,
    "conv_backward": conv_backward,
    "conv_transpose": conv_transpose,
    "conv_transpose_backward": conv_transpose_backward,
    "max_pool": max_pool,
    "max_pool_backward": max_pool_backward,
    "avg_pool": avg_pool,
    "avg_pool_backward": avg_pool_backward,
}
