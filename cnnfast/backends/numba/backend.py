"""The numba backend: parallel ``@njit`` kernels for every op, rank and parameter.

Every array is viewed as 5-D ``(N, C, D, H, W)`` (size-1 leading spatial dims for
ranks 1 and 2, with kernel 1, stride 1, padding 0 and dilation 1 there), so one
compiled specialisation per kernel and dtype serves all ranks. The kernels live in
``cnnfast.backends.numba.kernels`` (modules ``gemm``, ``wgrad``, ``direct``,
``pool``); this module only reshapes, picks a code path and launches:

* convolution: a group with at least ``GEMM_MIN_OG`` output channels is a
  register-blocked product: ``correlate_wide`` over the padded input for stride 1
  (an implicit im2col: panel rows read in place; a 1x1 convolution is a plain
  product of the input) and over the input's stride phases for other strides
  (``_phases_pay``), else ``correlate_gemm`` (im2col); narrower groups
  (depthwise) use ``correlate_direct``, or ``correlate_dw3x3`` for 2-d depthwise
  3x3 stride-1 layers;
* input gradient of conv / conv_transpose forward: for stride 1 the same
  correlation with the flipped, per-group transposed weight (the algebra is in
  ``cnnfast.backends.numpy.backend``), or ``correlate_t`` (a gather into output
  rows) when a group has few output channels (a 2-d depthwise 3x3 layer: the
  flipped-weight correlation by ``correlate_dw3x3``); for other strides one such stride-1
  correlation per stride phase ("sub-pixel" decomposition, a sub-kernel each);
* weight gradient: ``weight_grad_rows`` (register-blocked dot products of
  padded, stride-phase-split input rows with "wide" output-gradient rows: no
  im2col), or for depthwise ``weight_grad_planes`` (stride 1: dot products
  of whole padded planes) or ``weight_grad`` (per-row sums; also to recompute a
  non-finite result exactly); bias gradient: one task per channel;
* fused activation (``activation=``, ``kernels.epilogue``): the correlation kernels
  apply it where they write each output (after the bias); a backward makes
  ``g = grad_y * act'(y)`` and the bias gradient in one parallel pass over
  (grad_y, y), into a per-thread reused buffer, then runs the gradient kernels on g;
* pooling: row-vectorised forward kernels, plane-owning backward kernels.

Algorithms (``ALGORITHMS``, ``cnnfast.explain``; the ``_path_*`` functions are the
one place each choice is made, for the kernels and for ``explain``): ``direct`` (the
fixed-order direct sums: ``correlate_direct``, ``correlate_dw3x3``, ``correlate_t``,
``weight_grad``, ``weight_grad_planes``),
``gemm`` (``correlate_gemm`` or, strided, ``correlate_wide`` over stride phases;
``weight_grad_rows``; a stride-1 input gradient as the flipped-weight
correlation), ``gemm-wide`` (``correlate_wide``, stride 1 only),
``phases`` (strided input gradients / transposed convolutions) and ``winograd``
(``kernels.winograd``: F(4x4,3x3) for 2-d 3x3 and 3-d KDx3x3 stride-1 layers,
forward, input and weight gradient; chosen by ``_path_winograd``). ``algorithm=`` pins
one for every kernel of the call (``NotImplementedError`` where a kernel has no such
path); ``last_paths()`` records the paths of this thread's last convolution call.

Results are deterministic: no atomics, every output element is summed by one task
in a fixed order, for any thread count. The thread count is
``min(cnnfast.get_num_threads(), numba.config.NUMBA_NUM_THREADS)``, set before
every launch (numba's setting is per calling thread).
"""

from __future__ import annotations

import functools
import itertools
import math
import threading

import numpy as np

from ...geometry import flipped_adjoint_weight, lift_to_3d, pads_before_3d
from ...params import ConvParams, PoolParams, pool_window_counts
from ...threads import get_num_threads

try:
    import numba
    from .kernels import direct as _direct
    from .kernels import epilogue as _epilogue
    from .kernels import gemm as _gemm
    from .kernels import pool as _pool
    from .kernels import wgrad as _wgrad
    from .kernels import winograd as _winograd
except ImportError as exc:  # pragma: no cover - depends on the environment
    numba = None
    _IMPORT_ERROR = f"numba is not importable ({exc}); pip install numba"
else:
    _IMPORT_ERROR = None

ARRAY = "numpy"
DTYPES = ("float32", "float64")

# Path plans and lifted geometries kept (per params and weight shape; a network has a few).
_PLAN_CACHE = 512
# A group needs this many output channels for the im2col product to pay
# (below, each loaded column would feed too few multiply-adds).
GEMM_MIN_OG = 4
# The same for the stride phases of a transposed correlation (see there).
PHASE_MIN_OG = 2
# A strided correlation with fewer outputs per image than this keeps the im2col
# product (the phase copy would not pay); see ``_phases_pay``.
PHASE_WIDE_MIN_OUT = 64

ALGORITHMS = ("direct", "gemm", "gemm-wide", "phases", "winograd")
_FORCED = "forced by algorithm="
_DESCRIPTION = {
    "direct": "fixed-order direct sums",
    "gemm": "im2col + register-blocked product",
    "gemm-wide": "stride-1 product over wide padded rows",
    "phases": "one stride-1 correlation per stride phase",
    "winograd": "Winograd F(4x4,3x3) transforms + register-blocked products",
}
# A weight gradient's "gemm" multiplies padded rows in place (no im2col matrix).
_WEIGHT_GRAD_DESCRIPTION = {**_DESCRIPTION,
                            "gemm": "register-blocked dot products of padded rows",
                            "direct": "fixed-order sums (stride 1: dot products of "
                                      "whole padded planes)"}

_record = threading.local()


def last_paths() -> dict:
    """The paths of this thread's last convolution call, by result (``"y"``,
    ``"grad_x"``, ``"grad_weight"``)."""
    return getattr(_record, "paths", {})


def availability():
    return _IMPORT_ERROR


def unsupported(op, params, dtype):
    """Every op, rank and parameter combination is implemented (float32/float64)."""
    return None


# ----------------------------------------------------------------------------- launching

_lock = threading.Lock()
_concurrent_ok = None  # unknown until the first parallel launch


def _threads() -> int:
    return max(1, min(get_num_threads(), numba.config.NUMBA_NUM_THREADS))


def _launch(kernel, *args):
    """Run ``kernel`` with this call's thread count. Launches from several Python
    threads at once are serialised only under numba's ``workqueue`` layer, which
    does not support concurrent launches (omp and tbb do)."""
    global _concurrent_ok
    n = _threads()
    if _concurrent_ok:
        numba.set_num_threads(n)
        return kernel(*args)
    with _lock:
        numba.set_num_threads(n)
        out = kernel(*args)
        if _concurrent_ok is None:
            _concurrent_ok = numba.threading_layer() in ("omp", "tbb")
        return out


# ----------------------------------------------------------------------------- shapes


def _as5(a):
    """(N, C, *spatial) -> (N, C, D, H, W), a view. A read-only input is copied:
    numba would compile a separate specialisation for it."""
    if not a.flags.writeable:
        a = a.copy()
    return a.reshape(_shape5(a.shape))


def _shape5(shape):
    """(N, C, *spatial) -> (N, C, D, H, W), the spatial dims lifted to 3-D."""
    shape = tuple(shape)
    return shape[:2] + lift_to_3d(shape[2:], 1)


def _dest(out, shape, dtype):
    """A kernel's destination: the caller's ``out=`` array (checked by the dispatcher:
    shape, dtype, C-contiguous, writable, no overlap with an input) or a fresh array."""
    return np.empty(shape, dtype) if out is None else out


def _zeros_bias(b, channels, dtype):
    if b is None:
        return np.zeros(channels, dtype)
    return b if b.flags.writeable else b.copy()


# ----------------------------------------------------------------------------- activation

# The fused activation as the kernels take it (``kernels.epilogue``): (int code, float
# slope), the same two argument types for every activation, so it adds no compiled
# specialisation. Forward: applied by the correlation kernels where they write each
# output. Backward: ``_activation_grad``.
_NO_ACT = (0, 0.0)


def _act(p: ConvParams):
    return (_epilogue.CODES[p.activation], float(p.negative_slope))


# Scratch buffers per Python thread, one per named slot and dtype, grown to the
# largest size seen and reused: the backward's g = grad_y * act'(y) ("g"), the
# padded or phase-split input of the wide products and of the weight gradient
# ("padded"), a stride phase's output ("phase") and the weight gradient's partial
# sums ("part"). Each lives only during one call (the kernels read it, nothing
# returned points into it), and the slots that one call uses at the same time are
# distinct; a fresh large allocation every call would instead pay its page faults
# (several MB per call, measured 10-20% of a transposed convolution right after
# torch freed its own buffers).
_scratch = threading.local()


def _buffer(slot, shape, dtype):
    """A writeable array of ``shape`` and ``dtype`` from this thread's buffer ``slot``."""
    bufs = getattr(_scratch, "bufs", None)
    if bufs is None:
        bufs = _scratch.bufs = {}
    size = math.prod(shape)
    key = (slot, np.dtype(dtype))
    buf = bufs.get(key)
    if buf is None or buf.size < size:
        buf = bufs[key] = np.empty(max(size, 1), dtype)
    return buf[:size].reshape(shape)


def _activation_grad(gy, y, p: ConvParams, channels, gb_out=None):
    """(g, grad_bias): ``g = gy * act'(y)`` (``gy`` itself without an activation) and
    the bias gradient (the sum of ``g`` per channel, ``channels`` of them, into
    ``gb_out`` when given), from one parallel pass over (gy, y) when an activation is
    fused."""
    if p.activation is None:
        return gy, None
    g = _buffer("g", gy.shape, gy.dtype)
    gb = _dest(gb_out, channels, gy.dtype)
    _launch(_epilogue.grad_act, _as5(gy), _as5(y), _as5(g), gb, *_act(p))
    return g, gb


# ----------------------------------------------------------------------------- primitives


def _unfit(kernel, algorithm, need):
    return NotImplementedError(f"numba: algorithm={algorithm!r} cannot run the {kernel} "
                               f"here ({need})")


def _wide_rows(out, dil, kshape):
    """(padded input extents, columns computed) of the "wide" stride-1 product: every
    output row is computed over the padded input's full width (the extra columns are
    dropped)."""
    padded = tuple(o + d * (k - 1) for o, d, k in zip(out, dil, kshape))
    return padded, ((out[0] - 1) * padded[1] + out[1]) * padded[2]


def _path_correlate(og, stride, out, kshape, dil, algorithm="auto", min_og=GEMM_MIN_OG):
    """(path, why) of a grouped correlation with ``og`` output channels per group."""
    s1 = all(s == 1 for s in stride)
    if algorithm == "auto":
        if og < min_og:
            return "direct", f"{og} output channel(s) per group (< {min_og})"
        if not s1:
            return "gemm", f"{og} output channels per group, stride > 1"
        # "Wide" rows over a padded input (contiguous im2col copies), unless the
        # dropped columns would double the work (tiny outputs).
        _, wide = _wide_rows(out, dil, kshape)
        if wide <= 2 * int(np.prod(out)):
            return "gemm-wide", f"{og} output channels per group, stride 1"
        return "gemm", "stride 1 but the wide rows would double the work"
    if algorithm in ("direct", "gemm") or (algorithm == "gemm-wide" and s1):
        return algorithm, _FORCED
    raise _unfit("correlation", algorithm,
                 "gemm-wide needs stride 1" if algorithm == "gemm-wide"
                 else "phases is for strided transposed correlations")


def _dw3x3_fits(x5, w5, y5, stride, pad, dil, groups):
    """Whether the direct correlation is ``correlate_dw3x3``'s case: 2-d depthwise
    3x3 (one input channel per group), stride 1, no dilation, depth 1 in and out."""
    return (groups == x5.shape[1] and w5.shape[1:] == (1, 1, 3, 3) and x5.shape[2] == 1
            and y5.shape[2] == 1 and pad[0] == 0 and all(s == 1 for s in stride)
            and all(d == 1 for d in dil))


def _correlate(x5, w5, b, y5, stride, pad, dil, groups, path, act=_NO_ACT, phase=None):
    """``y5`` <- grouped correlation (see ``cnnfast.backends.numba.kernels``) by
    ``path`` (of ``_path_correlate`` or ``_path_winograd``); ``pad`` = the leading pads
    (may be negative); ``act`` = (code, slope) of the activation the kernels fuse
    (``_act``). ``phase`` = (offsets, steps) writes the result into that stride phase
    of ``y5`` instead (``y5[..., r0::s0, r1::s1, r2::s2]``; "gemm-wide" only)."""
    if path == "winograd":
        return _winograd_correlate(x5, w5, b, y5, pad, act)
    if path == "direct":
        if _dw3x3_fits(x5, w5, y5, stride, pad, dil, groups):
            _launch(_direct.correlate_dw3x3, x5, w5, b, y5, pad, *act)
        else:
            _launch(_direct.correlate_direct, x5, w5, b, y5, stride, pad, dil, groups, *act)
        return y5
    k = int(np.prod(w5.shape[1:]))
    kshape = tuple(int(v) for v in w5.shape[2:])
    wp = _gemm.pack_weight(w5, groups, x5.dtype)
    ylay = _gemm.contiguous(y5)
    if phase is not None:
        if path != "gemm-wide":  # an internal misuse, not a user error
            raise RuntimeError(f"numba: a stride phase is written by gemm-wide, not {path}")
        ylay = _phase_layout(y5, *phase)
    out = ylay[6:]
    if path == "gemm-wide":
        padded, wide = _wide_rows(out, dil, kshape)
        if padded == x5.shape[2:] and not any(pad):
            xp = x5
        else:
            xp = _buffer("padded", x5.shape[:2] + padded, x5.dtype)
            _launch(_gemm.pad_input, x5, xp, pad)
        kbase, koff = _wide_taps(x5.shape[1] // groups, kshape, dil, (1, 1, 1), padded)
    elif any(s > 1 for s in stride) and _phases_pay(out, kshape, stride, dil):
        # The input split into its stride phases: a stride-1 wide product over them.
        ext, moff, tphase, _ = _rows_geometry(x5.shape[2:], out, kshape, stride, pad, dil)
        S, plane, (N, C) = int(np.prod(stride)), int(np.prod(ext)), x5.shape[:2]
        xp = _buffer("padded", (N, C * S) + ext, x5.dtype)
        _launch(_wgrad.pack_phases, x5, xp.reshape(xp.size), ext,
                (S * plane, plane, ext[2], C * S * plane), stride, pad)
        kbase, koff = _wide_taps(C // groups, kshape, dil, stride, ext)
        wide = ((out[0] - 1) * ext[1] + out[1]) * ext[2]
    else:
        tile = _gemm.pick_tile(k, int(np.prod(out)))
        _launch(_gemm.correlate_gemm, x5, wp, b, y5, kshape, stride, pad, dil, groups,
                tile, _threads(), *act)
        return y5
    tile = _gemm.pick_wide_tile(k, wide, wp.shape[1] * _gemm.MR, x5.dtype.itemsize,
                                x5.shape[0] * groups, _threads())
    _launch(_gemm.correlate_wide, xp, wp, b, y5, ylay, kbase, koff, groups, tile,
            _threads(), _gemm.NR, *act)
    return y5


def _phase_layout(y5, offsets, steps):
    """The ``ylay`` of ``correlate_wide`` (see there) for the stride phase
    ``y5[:, :, r0::s0, r1::s1, r2::s2]`` (``offsets`` r, ``steps`` s)."""
    N, O, D, H, W = y5.shape
    ext = tuple(-(-(e - r) // s) for e, r, s in zip((D, H, W), offsets, steps))
    y0 = (offsets[0] * H + offsets[1]) * W + offsets[2]
    return (y0, O * D * H * W, D * H * W, steps[0] * H * W, steps[1] * W, steps[2]) + ext


def _wide_taps(cg, kshape, dil, stride, ext):
    """(kbase, koff) of ``correlate_wide``: im2col row ``k = c*T + t`` reads plane
    ``c*S + phase(t)`` of the group from ``offset(t)`` in planes of extents
    ``ext`` (the phases of a stride: ``S`` planes per channel). Memoised (a call's
    python-side time; the kernels only read the arrays, which stay writeable: a
    read-only array would be another compiled specialisation)."""
    return _wide_taps_of(int(cg), *(tuple(int(v) for v in a)
                                    for a in (kshape, dil, stride, ext)))


@functools.lru_cache(maxsize=256)
def _wide_taps_of(cg, kshape, dil, stride, ext):
    S = int(np.prod(stride))
    taps = np.array(list(itertools.product(*(range(v) for v in kshape))), np.int64)
    td = taps * np.array(dil, np.int64)
    m, r = td // np.array(stride, np.int64), td % np.array(stride, np.int64)
    koff = (m[:, 0] * ext[1] + m[:, 1]) * ext[2] + m[:, 2]
    phase = (r[:, 0] * stride[1] + r[:, 1]) * stride[2] + r[:, 2]
    c = np.arange(cg, dtype=np.int64)[:, None]
    return ((c * S + phase[None, :]).ravel(), np.broadcast_to(koff, (cg, len(koff))).ravel()
            .copy())


def _phases_pay(out, kshape, stride, dil):
    """A strided correlation runs as a wide product over the input's stride phases
    (no im2col copy) when each image has enough outputs (a panel or more) and the
    wide rows do not double the work; else the im2col product."""
    ext = [-(-((o - 1) * s + (k - 1) * d + 1) // s)
           for o, s, k, d in zip(out, stride, kshape, dil)]
    wide = ((out[0] - 1) * ext[1] + out[1]) * ext[2]
    n = int(np.prod(out))
    return n >= PHASE_WIDE_MIN_OUT and wide <= 2 * n


def _flipped_adjoint_weight(w5, groups):
    """``cnnfast.geometry.flipped_adjoint_weight``, contiguous for the kernels."""
    return np.ascontiguousarray(flipped_adjoint_weight(w5, groups))


def _path_correlate_t(og, stride, out, kshape, dil, algorithm="auto"):
    """(path, why) of a transposed correlation with ``og`` output channels per group."""
    s1 = all(s == 1 for s in stride)
    if algorithm == "auto":
        if not s1:
            return "phases", "stride > 1: one stride-1 correlation per stride phase"
        if og < GEMM_MIN_OG:
            return "direct", f"stride 1, {og} output channel(s) per group (< {GEMM_MIN_OG})"
        path, why = _path_correlate(og, stride, out, kshape, dil)
        return path, "stride 1, a correlation with the flipped weight: " + why
    if algorithm == "direct" or (algorithm == "phases" and not s1):
        return algorithm, _FORCED
    if algorithm in ("gemm", "gemm-wide") and s1:
        return _path_correlate(og, stride, out, kshape, dil, algorithm)
    raise _unfit("transposed correlation", algorithm,
                 "phases needs a stride > 1" if algorithm == "phases"
                 else f"{algorithm} needs stride 1 (strided: phases)")


def _correlate_t(x5, w5, b, y5, stride, pad, dil, groups, path, act=_NO_ACT):
    """``y5`` <- transposed correlation of ``x5`` with ``w5`` (Ci, OG, *k) by ``path``
    (of ``_path_correlate_t``), through the activation ``act`` (see ``_correlate``)."""
    s1 = all(s == 1 for s in stride)
    if path in ("gemm", "gemm-wide", "winograd") or (
            path == "direct" and s1 and w5.shape[1] == 1
            and _dw3x3_fits(x5, w5, y5, stride, pad, dil, groups)):
        # Stride 1: a correlation with the flipped adjoint weight; the input is
        # padded by d*(k-1) - lo before (negative: cropped). For "direct", where that
        # correlation is correlate_dw3x3's case (depthwise 3x3, one output channel per
        # group: the input gradient of a depthwise layer).
        adj_pad = tuple(d * (k - 1) - p for d, k, p in zip(dil, w5.shape[2:], pad))
        return _correlate(x5, _flipped_adjoint_weight(w5, groups), b, y5, (1, 1, 1),
                          adj_pad, dil, groups, path, act)
    if path == "phases":
        return _correlate_t_phases(x5, w5, b, y5, stride, pad, dil, groups, act)
    _launch(_direct.correlate_t, x5, w5, b, y5, stride, pad, dil, groups, *act)
    return y5


def _phase_taps(r, s, p, d, k):
    """For the outputs ``j = r + s*m`` of one dim of a transposed correlation
    (``j = i*s - p + t*d``): the contributing taps ``t`` (a slice), the tap
    spacing seen by the input (``d / gcd(d, s)``) and the input offset of the
    last tap (``i = m + off`` for it). ``None`` when no tap lands on the phase."""
    step = s // math.gcd(d, s)
    t0 = next((t for t in range(min(step, k)) if (t * d - r - p) % s == 0), None)
    if t0 is None:
        return None
    t_last = t0 + (k - 1 - t0) // step * step
    return slice(t0, t_last + 1, step), d // math.gcd(d, s), (r + p - t_last * d) // s


def _correlate_t_phases(x5, w5, b, y5, stride, pad, dil, groups, act):
    """Strided transposed correlation by stride phases ("sub-pixel"): the outputs
    whose index is ``r`` modulo the stride in every dim receive only the taps with
    ``t*d == r + p`` (mod s), as a stride-1 correlation of ``x5`` with that
    sub-kernel (flipped, transposed per group). Each phase runs on the product
    paths (activated by its kernel): the wide product writes its strided view of
    ``y5`` in place, the others a contiguous buffer that is then copied there;
    every output element is one phase's fixed-order sum. Outputs no tap reaches
    are the activated bias."""
    out = y5.shape[2:]
    kshape = w5.shape[2:]
    phases = [[(r, _phase_taps(r, s, p, d, k)) for r in range(min(s, o))]
              for s, p, d, k, o in zip(stride, pad, dil, kshape, out)]
    for (rd, td), (rh, th), (rw, tw) in itertools.product(*phases):
        view = y5[:, :, rd::stride[0], rh::stride[1], rw::stride[2]]
        if td is None or th is None or tw is None:  # no tap: bias only
            ab = b.copy()
            _launch(_epilogue.activate_all, ab, *act)
            view[...] = ab.reshape((1, -1, 1, 1, 1))
            continue
        wsub = _phase_weight(w5, groups, (td[0], th[0], tw[0]))
        sub_dil = (td[1], th[1], tw[1])
        sub_pad = (-td[2], -th[2], -tw[2])
        # The sum over (input channel, taps) is long even for few output
        # channels per group (e.g. the input gradient of a stem conv), so the
        # product path pays from 2 output channels (the register tile is MR).
        path, _ = _path_correlate(wsub.shape[0] // groups, (1, 1, 1), view.shape[2:],
                                  wsub.shape[2:], sub_dil, min_og=PHASE_MIN_OG)
        # written in place (copying a phase buffer into its strided view: ~15% of
        # the decoder layer's call, measured)
        if path == "gemm-wide":
            _correlate(x5, wsub, b, y5, (1, 1, 1), sub_pad, sub_dil, groups, path, act,
                       ((rd, rh, rw), stride))
            continue
        buf = _buffer("phase", view.shape, y5.dtype)
        _correlate(x5, wsub, b, buf, (1, 1, 1), sub_pad, sub_dil, groups, path, act)
        view[...] = buf
    return y5


def _phase_weight(w5, groups, taps):
    """``_flipped_adjoint_weight(w5[:, :, td, th, tw], groups)`` (``taps`` the three
    slices), in one compiled pass: the flipped taps as flat indices, reversed."""
    Ci, OG, KD, KH, KW = w5.shape
    sub = [range(KD)[taps[0]], range(KH)[taps[1]], range(KW)[taps[2]]]
    flat = np.array([(d * KH + h) * KW + v for d in sub[0][::-1] for h in sub[1][::-1]
                     for v in sub[2][::-1]], np.int64)
    out = np.empty((groups * OG, Ci // groups) + tuple(len(s) for s in sub), w5.dtype)
    _gemm.adjoint_taps(w5.reshape(Ci, OG, KD * KH * KW), groups, flat,
                       out.reshape(groups * OG, Ci // groups, flat.size))
    return out


@functools.lru_cache(maxsize=_PLAN_CACHE)
def _conv_geometry(p: ConvParams):
    return (lift_to_3d(p.stride, 1), pads_before_3d(p.padding), lift_to_3d(p.dilation, 1))


def _path_weight_grad(og, k, algorithm="auto"):
    """(path, why) of a weight gradient, ``og`` output channels per group, rows of
    ``k`` (input channels per group x taps): register-blocked dot products of
    padded rows when a group has enough output channels to fill the register
    block, else (depthwise) one fixed-order sum per element."""
    if algorithm == "auto":
        if og >= GEMM_MIN_OG:
            return "gemm", (f"{og} output channels per group (>= {GEMM_MIN_OG} fill the "
                            f"register block), rows of {k}")
        return "direct", (f"{og} output channel(s) per group (a product needs "
                          f">= {GEMM_MIN_OG})")
    if algorithm in ("direct", "gemm"):
        return algorithm, _FORCED
    raise _unfit("weight gradient", algorithm, "it has direct and gemm")


def _rows_geometry(in3, out3, kshape, stride, pad, dil):
    """The layout of ``weight_grad_rows``: the phase extents ``(Dq, Hq, Wq)`` (per
    dim, the outputs read the padded positions ``[0, (out-1)*s + (k-1)*d]``,
    ``ceil(that extent / s)`` of them per phase), the per-dim phase offsets and
    the phase of every tap, and whether the input must be copied into phases."""
    ext = tuple(-(-((o - 1) * s + (k - 1) * d + 1) // s)
                for o, s, k, d in zip(out3, stride, kshape, dil))
    copy = any(s != 1 or p != 0 or e != i for s, p, e, i in zip(stride, pad, ext, in3))
    moff, tphase = [], []
    for taps in itertools.product(*(range(k) for k in kshape)):
        moff.append([t * d // s for t, d, s in zip(taps, dil, stride)])
        r = [t * d % s for t, d, s in zip(taps, dil, stride)]
        tphase.append((r[0] * stride[1] + r[1]) * stride[2] + r[2])
    return ext, np.array(moff, np.int64), np.array(tphase, np.int64), copy


# Images with fewer wide positions than this are stacked (the input copied with
# the rows of the images side by side, see ``kernels.wgrad.pack_phases``): the
# dot products run over several images instead of short rows, and the padding
# rows of an image are not computed (their gradient rows are gathered from the
# images, though: slower above this).
ROWS_STACK_BELOW = 512


def _weight_grad_rows(a5, b5, w_shape, stride, pad, dil, groups, dtype, out=None):
    """``weight_grad_rows`` (see ``kernels.wgrad``), into ``out`` when given: None
    where the result is not finite (a padding zero may have met an inf or NaN input:
    the caller recomputes it exactly)."""
    w5 = _shape5(w_shape)
    N, C = a5.shape[:2]
    O, (OD, OH, OW) = b5.shape[1], b5.shape[2:]
    (Dq, Hq, Wq), moff, tphase, copy = _rows_geometry(a5.shape[2:], b5.shape[2:], w5[2:],
                                                      stride, pad, dil)
    S = int(np.prod(stride))
    qn = ((OD - 1) * Hq + OH - 1) * Wq + OW  # wide positions of one image
    plane = Dq * Hq * Wq
    if qn < ROWS_STACK_BELOW:  # (C, S, Dq, Hq, N, Wq)
        nst, nimg, xsn, xsc = N, 1, 0, N * plane
        vlen = (((OD - 1) * Hq + OH - 1) * N + N - 1) * Wq + OW
        strides = (S * N * plane, N * plane, N * Wq, Wq)
    else:  # image by image: (N, C, S, Dq, Hq, Wq)
        nst, nimg, xsn, xsc, vlen = 1, N, C * S * plane, plane, qn
        strides = (S * plane, plane, Wq, C * S * plane)
    if copy or nst > 1:
        xq = _buffer("padded", (N * C * S * plane,), dtype)
        _launch(_wgrad.pack_phases, a5, xq, (Dq, Hq, Wq), strides, stride, pad)
    else:  # the input as it is
        xq = a5.reshape(a5.size)
    pitch = nst * Wq  # between the rows of the row space
    toff = (moff[:, 0] * Hq + moff[:, 1]) * pitch + moff[:, 2]
    og, k = O // groups, int(np.prod(w5[1:]))
    qc, nunit, nchunk, nks, nwork = _wgrad.plan(vlen, nimg, og, k, O,
                                                np.dtype(dtype).itemsize, _threads())
    part = _buffer("part", (nchunk, O * k), dtype)
    # 2-D for every rank: one specialisation (``out`` is C-contiguous: a view)
    gw = np.empty((O, k), dtype) if out is None else out.reshape(O, k)
    geo = tuple(int(v) for v in (S, Hq, Wq, nst, nimg, xsn, xsc, vlen, nunit, nchunk, nks,
                                 qc, nwork))
    _launch(_wgrad.weight_grad_rows, xq, b5, gw, part, toff, tphase, geo, groups)
    return gw.reshape(w_shape) if np.isfinite(gw).all() else None


def _weight_grad(a5, b5, w_shape, stride, pad, dil, groups, dtype, path, out=None):
    """Weight gradient by ``path`` (of ``_path_weight_grad`` or ``_path_winograd``),
    into ``out`` when given (and then ``out`` itself is returned)."""
    if path == "winograd":
        gw = _dest(out, w_shape, dtype)
        _winograd_weight_grad(a5, b5, gw, pad)
        return gw
    if path == "gemm":
        gw = _weight_grad_rows(a5, b5, w_shape, stride, pad, dil, groups, dtype, out)
        if gw is not None:
            return gw if out is None else out
    gw = _dest(out, w_shape, dtype)
    if path == "direct" and all(s == 1 for s in stride):
        # Stride 1: whole-plane dot products (``weight_grad_planes``; about 2x
        # faster than the per-row sums on the suite's depthwise layer, measured
        # single-threaded), exact unless an inf or NaN met a padding zero: then
        # the per-row sums below.
        kshape = _shape5(w_shape)[2:]
        ext = tuple(o + (k - 1) * d for o, k, d in zip(b5.shape[2:], kshape, dil))
        _launch(_direct.weight_grad_planes, a5, b5, _as5(gw), pad, dil, groups, ext)
        if np.isfinite(gw).all():
            return gw
    _launch(_direct.weight_grad, a5, b5, _as5(gw), stride, pad, dil, groups)
    return gw


def _bias_grad(gy5, channels, dtype, out=None):
    gb = _dest(out, channels, dtype)
    _launch(_direct.bias_grad, gy5, gb)
    return gb


# ----------------------------------------------------------------------------- winograd

# Winograd F(4x4, 3x3) (``kernels.winograd``): 2-d 3x3 and 3-d KDx3x3 correlations
# (the depth taps summed in the products' reduction), stride 1, dilation 1, one group,
# any padding; forward, input gradient (the flipped-weight correlation) and weight
# gradient. Accuracy: an output's error follows the largest sum of |terms| of the
# call, not its own (the cpp backend's contract, tests/test_numba_winograd.py and
# tests/test_numba_winograd3d.py).
# The automatic choice takes it with at least WINO_MIN_CHANNELS channels in the
# products' reduction (forward: the input channels; input gradient: the output
# channels) and WINO_MIN_OUT on the other side (the correlation's outputs: fewer
# leave rows of the register tile empty and the transforms unpaid), or, for the
# weight gradient (a reduction over tiles), WINO_MIN_WG_CHANNELS on each side; and
# WINO_MIN_TILES tiles of 4x4 outputs per image. Below, the transforms cost more
# than the 4x fewer multiply-adds save. Measured (float32, 2 threads, AMD EPYC Zen 4
# on a loaded machine, medians of 9-15 interleaved runs; time of winograd / the
# previous numba path, forward and weight gradient; N, C, K, HxW, padding 1):
#   8,8,64,28: 1.18 / 0.63     8,16,64,28: 0.86 / 0.73    8,64,8,28: 0.80 / 0.40
#   8,3,64,56: 1.65 / 1.47     32,16,16,16: 0.47 / 0.33   8,64,64,8: 0.86 / 0.49
#   1,64,64,8 (4 tiles): 1.00 / 0.57                      2,64,64,4 (1 tile): 1.12 / 0.84
#   resnet conv3x3 8x{64,128,256}x{56,28,14}^2: 0.59, 0.50, 0.93 / 0.48, 0.37, 0.48
#   seed conv2 64x64x13x13 (no padding): 0.73 / 0.71
#   seed conv1's input gradient (64x64x26x26 -> 1 channel): 1.9 (vs direct)
WINO_MIN_CHANNELS = 16
WINO_MIN_OUT = 8
WINO_MIN_WG_CHANNELS = 8
WINO_MIN_TILES = 4
# 3-d (KDx3x3): the correlations follow the 2-d rule; the weight gradient transforms
# every input slice once per depth tap, so its products must be wider to pay: its
# channels must multiply to WINO3_MIN_WG_CHANNELS2. Measured (float32, 2 threads, AMD
# EPYC Zen 3, medians of 9 interleaved runs, benchmarks/numba_winograd3d_ab.py; time of
# winograd / gemm-wide (forward, input gradient) and / gemm (weight gradient); N, C,
# K, DxHxW, 3x3x3, padding 1):
#   2,16,16,16x56x56: 0.73-0.93, 0.75-0.86, 1.05-1.16   4,16,16,8x32x32: 0.78, 0.80, 1.15
#   2,32,32,8x40x40:  0.59, 0.56, 0.75                  2,16,64,8x28x28: 0.68, 0.85, 0.75
#   2,64,64,8x28x28:  0.51, 0.45, 0.54
WINO3_MIN_WG_CHANNELS2 = 1024


def _wino_unfit(p: ConvParams):
    """Why the Winograd path cannot run a case of ``p`` (None when it can)."""
    if (p.rank not in (2, 3) or tuple(p.kernel[-2:]) != (3, 3) or p.groups != 1
            or any(s != 1 for s in p.stride) or any(d != 1 for d in p.dilation)):
        return ("winograd needs a 2-d 3x3 or 3-d KDx3x3 kernel, stride 1, dilation 1 "
                "and one group")
    return None


def _path_winograd(p: ConvParams, kernel, extent, red, out, weight_grad=False):
    """(path, why) of the Winograd path for one kernel of a call (``kernel``: its name
    for errors), or None to leave the choice to the other rules. ``extent``: the
    spatial extent tiled; ``red``, ``out``: the channels of the products' reduction
    and of their results (see WINO_MIN_CHANNELS); ``weight_grad``: the kernel is a
    weight gradient."""
    if p.algorithm == "winograd":
        why = _wino_unfit(p)
        if why is not None:
            raise _unfit(kernel, "winograd", why)
        return "winograd", _FORCED
    if p.algorithm != "auto" or _wino_unfit(p) is not None:
        return None
    tiles = -(-extent[-2] // 4) * -(-extent[-1] // 4)
    mins = (WINO_MIN_WG_CHANNELS,) * 2 if weight_grad else (WINO_MIN_CHANNELS, WINO_MIN_OUT)
    if weight_grad and p.rank == 3 and red * out < WINO3_MIN_WG_CHANNELS2:
        return None
    if red >= mins[0] and out >= mins[1] and tiles >= WINO_MIN_TILES:
        shape = "2-d 3x3" if p.rank == 2 else f"3-d {p.kernel[0]}x3x3"
        wide = (f", {red * out} >= {WINO3_MIN_WG_CHANNELS2} channel pairs"
                if weight_grad and p.rank == 3 else "")
        return "winograd", (f"{shape}, stride 1, one group; {red} x {out} channels "
                            f"(>= {mins[0]} x {mins[1]}{wide}), {tiles} tiles of 4x4 per "
                            f"image (>= {WINO_MIN_TILES})")
    return None


def _winograd_correlate(x5, w5, b, y5, pad, act):
    """``y5`` <- the stride-1 KDx3x3 correlation of ``x5`` with ``w5`` (2-d: KD = 1) by
    Winograd, the weight transformed once per call (its reduction rows kd * C + c)."""
    (K, C, KD), dtype = w5.shape[:3], x5.dtype
    rows = np.ascontiguousarray(w5.transpose(0, 2, 1, 3, 4)).reshape(K, KD * C, 3, 3)
    up = np.zeros((36, -(-K // _gemm.MR), KD * C, _gemm.MR), dtype)
    _launch(_winograd.transform_weight, rows, up)
    if x5.shape[2] == y5.shape[2] == KD == 1:  # 2-d (depth padding would give Do > 1)
        N, H, W = x5.shape[0], *x5.shape[3:]
        _launch(_winograd.correlate, x5.reshape(N, C, H, W), up, b,
                y5.reshape(y5.shape[:2] + y5.shape[3:]), pad[1], pad[2],
                _winograd.block_tiles(C, dtype.itemsize), _threads(), *act)
    else:
        lb = _winograd.slots3(KD)
        _launch(_winograd.correlate3, x5, up, b, y5, *pad,
                _winograd.block_tiles(lb * C, dtype.itemsize), lb, _threads(), *act)
    return y5


def _winograd_weight_grad(a5, b5, gw, pad):
    """``gw`` (O, C, [KD,] 3, 3) <- the weight gradient of the stride-1 KDx3x3
    correlation of ``a5`` (C channels) giving ``b5`` (O channels), by Winograd."""
    gw5 = _as5(gw)
    (O, C, KD) = gw5.shape[:3]
    cc, mk = _winograd.weight_grad_split(KD * C, O, _threads())
    _launch(_winograd.weight_grad, a5, b5, gw5, *pad, cc, mk)


# ----------------------------------------------------------------------------- conv


@functools.lru_cache(maxsize=_PLAN_CACHE)
def _plan(op, p: ConvParams, w_shape, needs=("x", "weight")):
    """((result name, path, why), ...) of the kernels of ``op`` (see the ``_path_*``
    functions): the one place the ops and ``explain`` take their paths from. Memoised:
    a function of its arguments only, worked out in 20-70 us of Python (a tenth to a
    half of a small call)."""
    stride, _, dil = _conv_geometry(p)
    kshape = lift_to_3d(p.kernel, 1)
    in_s, out_s = lift_to_3d(p.in_shape, 1), lift_to_3d(p.out_shape, 1)
    g, a = p.groups, p.algorithm
    k = int(np.prod(w_shape[1:]))
    plan = []
    # Winograd first where it applies (forced, or chosen: _path_winograd), with the
    # channels its rule reads (groups == 1): (reduction, results) = w_shape (O, C) for
    # the flipped-weight correlations, (C, O) for the others.
    wino = _path_winograd
    o_c, c_o = w_shape[:2], w_shape[1::-1]
    if op == "conv":
        plan.append(("y", *(wino(p, "correlation", out_s, *c_o)
                            or _path_correlate(w_shape[0] // g, stride, out_s, kshape, dil,
                                               a))))
    elif op == "conv_transpose":
        plan.append(("y", *(wino(p, "transposed correlation", out_s, *o_c)
                            or _path_correlate_t(w_shape[1], stride, out_s, kshape, dil,
                                                 a))))
    else:  # a backward op
        if "x" in needs and op == "conv_backward":
            plan.append(("grad_x", *(wino(p, "transposed correlation", in_s, *o_c)
                                     or _path_correlate_t(w_shape[1], stride, in_s, kshape,
                                                          dil, a))))
        elif "x" in needs:
            plan.append(("grad_x", *(wino(p, "correlation", in_s, *c_o)
                                     or _path_correlate(w_shape[0] // g, stride, in_s,
                                                        kshape, dil, a))))
        if "weight" in needs:
            tiled = out_s if op == "conv_backward" else in_s  # the extent of b5
            plan.append(("grad_weight", *(wino(p, "weight gradient", tiled, *c_o,
                                               weight_grad=True)
                                          or _path_weight_grad(w_shape[0] // g, k, a))))
    return tuple(plan)


def explain(op, p, dtype, x_shape=None, w_shape=None, needs=("x", "weight")):
    """Which path each kernel of ``op`` would run, and why (``cnnfast.explain``)."""
    if not isinstance(p, ConvParams):
        return None  # pooling: one path per op
    parts = [f"{'' if name == 'y' else name + ' '}{path} "
             f"({(_WEIGHT_GRAD_DESCRIPTION if name == 'grad_weight' else _DESCRIPTION)[path]})"
             f"; why: {why}" for name, path, why in _plan(op, p, w_shape, needs)]
    if p.activation is not None:
        parts.append(_explain_activation(op, p))
    return f"{'; '.join(parts)}; {_threads()} thread(s)"


def _explain_activation(op, p):
    """The fused epilogue's part of ``explain``."""
    act = p.activation + (f" (slope {p.negative_slope:g})" if p.activation == "leaky_relu"
                          else "")
    if op in ("conv", "conv_transpose"):
        return f"fused epilogue: {act} applied by the kernel where it writes each output"
    return (f"fused epilogue: one pass over (grad_y, y) for grad_y * {p.activation}'(y), "
            f"summing grad_bias in the same pass")


def _paths(op, p, w_shape, needs=("x", "weight")):
    """The paths of ``op`` by result name, recorded for ``last_paths()``."""
    _record.paths = {}  # a refused call records nothing
    _record.paths = {name: path for name, path, _ in _plan(op, p, w_shape, needs)}
    return _record.paths


def conv(x, w, b, p: ConvParams, out=None):
    path = _paths("conv", p, w.shape)["y"]
    stride, pad, dil = _conv_geometry(p)
    o = w.shape[0]
    y = _dest(out, (x.shape[0], o) + tuple(p.out_shape), x.dtype)
    _correlate(_as5(x), _as5(w), _zeros_bias(b, o, x.dtype), _as5(y), stride, pad, dil,
               p.groups, path, _act(p))
    return y


def conv_backward(gy, x, w, p: ConvParams, needs, y=None, outs=None):
    paths = _paths("conv_backward", p, w.shape, needs)
    gx_out, gw_out, gb_out = outs or (None, None, None)
    gy, gb = _activation_grad(gy, y, p, w.shape[0], gb_out)
    stride, pad, dil = _conv_geometry(p)
    gx = gw = None
    if "x" in needs:
        # The conv weight (O, C/G, *k) is the transposed-conv weight of the adjoint.
        gx = _dest(gx_out, x.shape, x.dtype)
        _correlate_t(_as5(gy), _as5(w), np.zeros(x.shape[1], x.dtype), _as5(gx), stride,
                     pad, dil, p.groups, paths["grad_x"])
    if "weight" in needs:
        gw = _weight_grad(_as5(x), _as5(gy), w.shape, stride, pad, dil, p.groups, x.dtype,
                          paths["grad_weight"], gw_out)
    if "bias" in needs and gb is None:
        gb = _bias_grad(_as5(gy), w.shape[0], x.dtype, gb_out)
    return gx, gw, gb if "bias" in needs else None


def conv_transpose(x, w, b, p: ConvParams, out=None):
    path = _paths("conv_transpose", p, w.shape)["y"]
    stride, pad, dil = _conv_geometry(p)
    c_out = w.shape[1] * p.groups
    y = _dest(out, (x.shape[0], c_out) + tuple(p.out_shape), x.dtype)
    _correlate_t(_as5(x), _as5(w), _zeros_bias(b, c_out, x.dtype), _as5(y), stride, pad,
                 dil, p.groups, path, _act(p))
    return y


def conv_transpose_backward(gy, x, w, p: ConvParams, needs, y=None, outs=None):
    paths = _paths("conv_transpose_backward", p, w.shape, needs)
    gx_out, gw_out, gb_out = outs or (None, None, None)
    gy, gb = _activation_grad(gy, y, p, gy.shape[1], gb_out)
    stride, pad, dil = _conv_geometry(p)
    gx = gw = None
    if "x" in needs:
        gx = _dest(gx_out, x.shape, x.dtype)
        _correlate(_as5(gy), _as5(w), np.zeros(x.shape[1], x.dtype), _as5(gx), stride, pad,
                   dil, p.groups, paths["grad_x"])
    if "weight" in needs:
        gw = _weight_grad(_as5(gy), _as5(x), w.shape, stride, pad, dil, p.groups, x.dtype,
                          paths["grad_weight"], gw_out)
    if "bias" in needs and gb is None:
        gb = _bias_grad(_as5(gy), gy.shape[1], x.dtype, gb_out)
    return gx, gw, gb if "bias" in needs else None


# ----------------------------------------------------------------------------- pooling


def _pool_geometry(p: PoolParams):
    return (lift_to_3d(p.kernel, 1), lift_to_3d(p.stride, 1), pads_before_3d(p.padding),
            lift_to_3d(p.dilation, 1))


def _divisors(p: PoolParams, dtype):
    """Per-dim window cell counts (their product is the divisor) and the override
    (0 when none)."""
    if p.divisor_override is not None:
        one = np.ones(1, dtype)
        return one, one, one, int(p.divisor_override)
    counts = []
    for i in range(p.rank):
        inside, padded = pool_window_counts(p, i)
        counts.append(np.asarray(padded if p.count_include_pad else inside, dtype))
    while len(counts) < 3:
        counts.insert(0, np.ones(1, dtype))
    return counts[0], counts[1], counts[2], 0


def max_pool(x, p: PoolParams, return_indices, outs=None):
    kernel, stride, pad, dil = _pool_geometry(p)
    y_out, idx_out = outs or (None, None)
    y = _dest(y_out, x.shape[:2] + tuple(p.out_shape), x.dtype)
    idx = (_dest(idx_out, y.shape, np.int64) if return_indices
           else np.empty((1, 1, 1, 1, 1), np.int64))
    _launch(_pool.max_pool, _as5(x), _as5(y), _as5(idx), bool(return_indices), kernel,
            stride, pad, dil)
    return y, (idx if return_indices else None)


def max_pool_backward(gy, indices, x_shape, out=None):
    gx = _dest(out, tuple(x_shape), gy.dtype)
    _launch(_pool.max_pool_backward, _as5(gy), _as5(indices), _as5(gx))
    return gx


def avg_pool(x, p: PoolParams, out=None):
    kernel, stride, pad, dil = _pool_geometry(p)
    y = _dest(out, x.shape[:2] + tuple(p.out_shape), x.dtype)
    dd, dh, dw, override = _divisors(p, x.dtype)
    _launch(_pool.avg_pool, _as5(x), _as5(y), kernel, stride, pad, dil, dd, dh, dw,
            override)
    return y


def avg_pool_backward(gy, p: PoolParams, out=None):
    kernel, stride, pad, dil = _pool_geometry(p)
    gx = _dest(out, gy.shape[:2] + tuple(p.in_shape), gy.dtype)
    dd, dh, dw, override = _divisors(p, gy.dtype)
    _launch(_pool.avg_pool_backward, _as5(gy), _as5(gx), kernel, stride, pad, dil, dd, dh,
            dw, override)
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
