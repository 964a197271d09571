"""The numba backend: parallel ``@njit`` kernels for every op, rank and parameter.

Every array is viewed as 5-D ``(N, C, D, H, W)`` (size-1 leading spatial dims for
ranks 1 and 2, with kernel 1, stride 1, padding 0 and dilation 1 there), so one
compiled specialisation per kernel and dtype serves all ranks. The kernels live in
``cnnfast.numba_kernels``; this module only reshapes, picks a code path and
launches:

* convolution: a group with at least ``GEMM_MIN_OG`` output channels is an
  im2col + register-blocked product: ``correlate_wide`` for stride 1 (contiguous
  im2col copies over a padded input; a 1x1 convolution is a plain product of the
  packed input), ``correlate_gemm`` for other strides; narrower groups
  (depthwise) use ``correlate_direct``;
* input gradient of conv / conv_transpose forward: for stride 1 the same
  correlation with the flipped, per-group transposed weight (the algebra is in
  ``numpy_backend``), or ``correlate_t`` (a gather into output rows) when a
  group has few output channels; for other strides one such stride-1
  correlation per stride phase ("sub-pixel" decomposition, a sub-kernel each);
* weight gradient: ``weight_grad_gemm`` (products over pixel tiles), or
  ``weight_grad`` for depthwise; bias gradient: one task per channel;
* pooling: row-vectorised forward kernels, plane-owning backward kernels.

Results are deterministic: no atomics, every output element is summed by one task
in a fixed order, for any thread count. The thread count is
``min(cnnfast.get_num_threads(), numba.config.NUMBA_NUM_THREADS)``, set before
every launch (numba's setting is per calling thread).
"""

from __future__ import annotations

import itertools
import math
import threading

import numpy as np

from ..geometry import flipped_adjoint_weight, lift_to_3d, pads_before_3d
from ..params import ConvParams, PoolParams, pool_window_counts
from ..threads import get_num_threads

try:
    import numba
    from ..numba_kernels import conv as _conv
    from ..numba_kernels import pool as _pool
except ImportError as exc:  # pragma: no cover - depends on the environment
    numba = None
    _IMPORT_ERROR = f"numba is not importable ({exc}); pip install numba"
else:
    _IMPORT_ERROR = None

ARRAY = "numpy"
DTYPES = ("float32", "float64")

# A group needs this many output channels for the im2col product to pay
# (below, each loaded column would feed too few multiply-adds).
GEMM_MIN_OG = 4
# A weight gradient whose rows are this short (input channels per group x taps) is a
# few dot products per output channel: packing tiles for a product does not pay (the
# Fashion-MNIST first layer: 1 x 9).
WGRAD_GEMM_MIN_K = 16
# The same for the stride phases of a transposed correlation (see there).
PHASE_MIN_OG = 2


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


def _zeros_bias(b, channels, dtype):
    if b is None:
        return np.zeros(channels, dtype)
    return b if b.flags.writeable else b.copy()


# ----------------------------------------------------------------------------- primitives


def _correlate(x5, w5, b, y5, stride, pad, dil, groups, min_og=GEMM_MIN_OG):
    """``y5`` <- grouped correlation (see ``numba_kernels.conv``); ``pad`` = the
    leading pads (may be negative). Groups with at least ``min_og`` output
    channels take the product paths."""
    og = w5.shape[0] // groups
    if og >= min_og:
        k = int(np.prod(w5.shape[1:]))
        kshape = tuple(int(v) for v in w5.shape[2:])
        wp = _conv.pack_weight(w5, groups, x5.dtype)
        out = y5.shape[2:]
        # Stride 1: "wide" rows over a padded input (contiguous im2col copies),
        # unless the dropped columns would double the work (tiny outputs).
        padded = tuple(o + d * (kk - 1) for o, d, kk in zip(out, dil, kshape))
        wide = ((out[0] - 1) * padded[1] + out[1]) * padded[2]
        if all(s == 1 for s in stride) and wide <= 2 * int(np.prod(out)):
            tile = _conv.pick_tile(k, wide)
            if padded == x5.shape[2:] and not any(pad):
                xp = x5
            else:
                xp = np.empty(x5.shape[:2] + padded, x5.dtype)
                _launch(_conv.pad_input, x5, xp, pad)
            _launch(_conv.correlate_wide, xp, wp, b, y5, kshape, dil, groups, tile,
                    _threads(), _conv.NR)
        else:
            tile = _conv.pick_tile(k, int(np.prod(out)))
            _launch(_conv.correlate_gemm, x5, wp, b, y5, kshape, stride, pad, dil, groups,
                    tile, _threads())
    else:
        _launch(_conv.correlate_direct, x5, w5, b, y5, stride, pad, dil, groups)
    return y5


def _flipped_adjoint_weight(w5, groups):
    """``cnnfast.geometry.flipped_adjoint_weight``, contiguous for the kernels."""
    return np.ascontiguousarray(flipped_adjoint_weight(w5, groups))


def _correlate_t(x5, w5, b, y5, stride, pad, dil, groups):
    """``y5`` <- transposed correlation of ``x5`` with ``w5`` (Ci, OG, *k)."""
    if all(s == 1 for s in stride) and w5.shape[1] >= GEMM_MIN_OG:
        # Stride 1: a correlation with the flipped adjoint weight; the input is
        # padded by d*(k-1) - lo before (negative: cropped).
        adj_pad = tuple(d * (k - 1) - p for d, k, p in zip(dil, w5.shape[2:], pad))
        return _correlate(x5, _flipped_adjoint_weight(w5, groups), b, y5, (1, 1, 1),
                          adj_pad, dil, groups)
    if any(s > 1 for s in stride):
        return _correlate_t_phases(x5, w5, b, y5, stride, pad, dil, groups)
    _launch(_conv.correlate_t, x5, w5, b, y5, stride, pad, dil, groups)
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


def _correlate_t_phases(x5, w5, b, y5, stride, pad, dil, groups):
    """Strided transposed correlation by stride phases ("sub-pixel"): the outputs
    whose index is ``r`` modulo the stride in every dim receive only the taps with
    ``t*d == r + p`` (mod s), as a stride-1 correlation of ``x5`` with that
    sub-kernel (flipped, transposed per group). Each phase runs on the product
    paths into a contiguous buffer, then is copied into its strided view of
    ``y5``; every output element is one phase's fixed-order sum."""
    out = y5.shape[2:]
    kshape = w5.shape[2:]
    phases = [[(r, _phase_taps(r, s, p, d, k)) for r in range(min(s, o))]
              for s, p, d, k, o in zip(stride, pad, dil, kshape, out)]
    for (rd, td), (rh, th), (rw, tw) in itertools.product(*phases):
        view = y5[:, :, rd::stride[0], rh::stride[1], rw::stride[2]]
        if td is None or th is None or tw is None:  # no tap: bias only
            view[...] = b.reshape((1, -1, 1, 1, 1))
            continue
        wsub = _flipped_adjoint_weight(
            np.ascontiguousarray(w5[:, :, td[0], th[0], tw[0]]), groups)
        sub_dil = (td[1], th[1], tw[1])
        sub_pad = (-td[2], -th[2], -tw[2])
        buf = np.empty(view.shape, y5.dtype)
        # The sum over (input channel, taps) is long even for few output
        # channels per group (e.g. the input gradient of a stem conv), so the
        # product path pays from 2 output channels (the register tile is MR).
        _correlate(x5, wsub, b, buf, (1, 1, 1), sub_pad, sub_dil, groups,
                   min_og=PHASE_MIN_OG)
        view[...] = buf
    return y5


def _conv_geometry(p: ConvParams):
    return (lift_to_3d(p.stride, 1), pads_before_3d(p.padding), lift_to_3d(p.dilation, 1))


def _weight_grad(a5, b5, w_shape, stride, pad, dil, groups, dtype):
    """Weight gradient: tiled products when a group has enough output channels to
    fill the register tile and long enough rows, else (depthwise, one-channel first
    layers) one fixed-order sum per element."""
    og = w_shape[0] // groups
    k = int(np.prod(w_shape[1:]))
    if og >= GEMM_MIN_OG and k >= WGRAD_GEMM_MIN_K:
        mr, nr = _conv.MR, _conv.NR
        gwp = np.empty((groups, -(-og // mr) * mr, -(-k // nr) * nr), dtype)
        kshape = _shape5(w_shape)[2:]
        _launch(_conv.weight_grad_gemm, a5, b5, gwp, kshape, stride, pad, dil, groups,
                _conv.pick_tile(k, int(np.prod(b5.shape[2:]))), _threads())
        return np.ascontiguousarray(gwp[:, :og, :k]).reshape(w_shape)
    gw = np.empty(_shape5(w_shape), dtype)
    _launch(_conv.weight_grad, a5, b5, gw, stride, pad, dil, groups)
    return gw.reshape(w_shape)


def _bias_grad(gy5, channels, dtype):
    gb = np.empty(channels, dtype)
    _launch(_conv.bias_grad, gy5, gb)
    return gb


# ----------------------------------------------------------------------------- conv


def conv(x, w, b, p: ConvParams):
    stride, pad, dil = _conv_geometry(p)
    o = w.shape[0]
    y = np.empty((x.shape[0], o) + tuple(p.out_shape), x.dtype)
    _correlate(_as5(x), _as5(w), _zeros_bias(b, o, x.dtype), _as5(y), stride, pad, dil,
               p.groups)
    return y


def conv_backward(gy, x, w, p: ConvParams, needs):
    stride, pad, dil = _conv_geometry(p)
    gx = gw = gb = None
    if "x" in needs:
        # The conv weight (O, C/G, *k) is the transposed-conv weight of the adjoint.
        gx = np.empty(x.shape, x.dtype)
        _correlate_t(_as5(gy), _as5(w), np.zeros(x.shape[1], x.dtype), _as5(gx), stride,
                     pad, dil, p.groups)
    if "weight" in needs:
        gw = _weight_grad(_as5(x), _as5(gy), w.shape, stride, pad, dil, p.groups, x.dtype)
    if "bias" in needs:
        gb = _bias_grad(_as5(gy), w.shape[0], x.dtype)
    return gx, gw, gb


def conv_transpose(x, w, b, p: ConvParams):
    stride, pad, dil = _conv_geometry(p)
    c_out = w.shape[1] * p.groups
    y = np.empty((x.shape[0], c_out) + tuple(p.out_shape), x.dtype)
    _correlate_t(_as5(x), _as5(w), _zeros_bias(b, c_out, x.dtype), _as5(y), stride, pad,
                 dil, p.groups)
    return y


def conv_transpose_backward(gy, x, w, p: ConvParams, needs):
    stride, pad, dil = _conv_geometry(p)
    gx = gw = gb = None
    if "x" in needs:
        gx = np.empty(x.shape, x.dtype)
        _correlate(_as5(gy), _as5(w), np.zeros(x.shape[1], x.dtype), _as5(gx), stride, pad,
                   dil, p.groups)
    if "weight" in needs:
        gw = _weight_grad(_as5(gy), _as5(x), w.shape, stride, pad, dil, p.groups, x.dtype)
    if "bias" in needs:
        gb = _bias_grad(_as5(gy), gy.shape[1], x.dtype)
    return gx, gw, gb


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


def max_pool(x, p: PoolParams, return_indices):
    kernel, stride, pad, dil = _pool_geometry(p)
    y = np.empty(x.shape[:2] + tuple(p.out_shape), x.dtype)
    idx = (np.empty(y.shape, np.int64) if return_indices
           else np.empty((1, 1, 1, 1, 1), np.int64))
    _launch(_pool.max_pool, _as5(x), _as5(y), _as5(idx), bool(return_indices), kernel,
            stride, pad, dil)
    return y, (idx if return_indices else None)


def max_pool_backward(gy, indices, x_shape):
    gx = np.empty(tuple(x_shape), gy.dtype)
    _launch(_pool.max_pool_backward, _as5(gy), _as5(indices), _as5(gx))
    return gx


def avg_pool(x, p: PoolParams):
    kernel, stride, pad, dil = _pool_geometry(p)
    y = np.empty(x.shape[:2] + tuple(p.out_shape), x.dtype)
    dd, dh, dw, override = _divisors(p, x.dtype)
    _launch(_pool.avg_pool, _as5(x), _as5(y), kernel, stride, pad, dil, dd, dh, dw,
            override)
    return y


def avg_pool_backward(gy, p: PoolParams):
    kernel, stride, pad, dil = _pool_geometry(p)
    gx = np.empty(gy.shape[:2] + tuple(p.in_shape), gy.dtype)
    dd, dh, dw, override = _divisors(p, gy.dtype)
    _launch(_pool.avg_pool_backward, _as5(gy), _as5(gx), kernel, stride, pad, dil, dd, dh,
            dw, override)
    return gx


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
