"""The numpy reference backend: plain, vectorised, the oracle for every other backend.

Every kernel receives contiguous arrays of one dtype and the normalised parameters of
``cnnfast.params`` (validated by the dispatcher), and trusts them.

Two primitives carry all four convolution ops:

* ``correlate(x, w, stride, pads, dilation, groups, out_shape)`` -- a grouped
  cross-correlation, ``y[n, o, p] = sum_{c, t} w[o, c, t] * xpad[n, c, p*stride + t*dilation]``,
  where ``pads`` may be negative (a negative pad crops);
* ``weight_grad(x, gy, stride, pads, dilation, groups, kernel)`` -- its gradient with
  respect to ``w``: ``gw[o, c, t] = sum_{n, p} gy[n, o, p] * xpad[n, c, p*stride + t*dilation]``.

The algebra that relates them (as in JAX's ``lax.conv_general_dilated`` transpose
rules and Chainer's ``Deconvolution``), per spatial dim, for a kernel of size k,
stride s, dilation d and padding (lo, hi):

* The input gradient of a convolution is a transposed convolution of ``gy``: dilate
  ``gy`` by the stride (insert s-1 zeros between elements: stride becomes input
  dilation), pad it with ``d*(k-1) - lo`` before (padding becomes cropping: a pad of
  lo on the way in is a crop of lo on the way back) and with whatever after gives
  the input's length, then correlate with stride 1, dilation d and the kernel
  flipped in space and transposed per group (``(G, O/G, C/G)`` -> ``(G, C/G, O/G)``;
  ``cnnfast.geometry.flipped_adjoint_weight``, shared with the numba backend).
* A transposed convolution *is* that operation with ``x`` in the role of ``gy``
  (``conv_transpose`` below calls the same function).
* The input gradient of a transposed convolution is therefore a plain convolution of
  ``gy`` with the same weight, stride, padding, dilation and groups: the
  transposed-conv weight layout ``(C_in, C_out/G, *k)`` is exactly a convolution
  weight from ``C_out`` to ``C_in`` channels.
* Weight gradients are ``weight_grad`` with the roles of input and output swapped
  for the transposed convolution.

The kernels' signatures are every backend's (``OPS``): ``conv(x, w, b, p)``,
``conv_backward(gy, x, w, p, needs, y)``, ``max_pool(x, p, return_indices)``, ... and,
when the call has an ``out=``, the destination last (``cnnfast.registry.KERNEL_ARITY``):
``out`` for one result, ``outs`` for ``conv_backward``'s ``(gx, gw, gb)`` and
``max_pool``'s ``(y, indices)`` (``None`` entries for those not given). The reference
computes in arrays of its own (no ``WRITES_OUT``: the dispatcher copies them into
``out``); the cpp and numba kernels write into it directly.
"""

from __future__ import annotations

import itertools

import numpy as np

from ... import activation
from ...geometry import flipped_adjoint_weight
from ...params import ConvParams, PoolParams, pool_window_counts

ARRAY = "numpy"
DTYPES = ("float32", "float64")
# One algorithm for every convolution op (cnnfast.explain's vocabulary).
ALGORITHMS = ("tap-matmul",)


def explain(op, p, dtype, **shapes):
    if not isinstance(p, ConvParams):
        return None  # pooling: one path per op
    why = ("forced by algorithm=" if p.algorithm != "auto"
           else "the reference backend has one algorithm")
    return f"tap-matmul (one matrix product per kernel tap); why: {why}"


# ----------------------------------------------------------------------------- helpers


def pad_or_crop(x, pads, value=0.0):
    """Pad the spatial dims of ``x`` (N, C, *spatial) by ``(before, after)`` pairs;
    negative entries crop.

    Padding comes first: a crop may be wider than the input and reach into the other
    side's padding (the adjoint of a transposed convolution whose crop exceeds the
    input, e.g. input 1, stride 5, padding (2, 0), output_padding 2)."""
    grow = [(0, 0), (0, 0)] + [(max(lo, 0), max(hi, 0)) for lo, hi in pads]
    if any(g != (0, 0) for g in grow):
        x = np.pad(x, grow, constant_values=value)
    crop = tuple(slice(max(-lo, 0), x.shape[2 + i] - max(-hi, 0))
                 for i, (lo, hi) in enumerate(pads))
    return x[(slice(None), slice(None)) + crop]


def dilate(x, stride):
    """Insert ``stride - 1`` zeros between neighbouring spatial elements."""
    if all(s == 1 for s in stride):
        return x
    shape = x.shape[:2] + tuple((n - 1) * s + 1 for n, s in zip(x.shape[2:], stride))
    out = np.zeros(shape, x.dtype)
    out[(slice(None), slice(None)) + tuple(slice(None, None, s) for s in stride)] = x
    return out


def _tap_slices(tap, stride, dilation, out_shape):
    """Spatial slices of a padded input that tap ``tap`` reads for every output."""
    return tuple(slice(t * d, t * d + s * (o - 1) + 1, s)
                 for t, s, d, o in zip(tap, stride, dilation, out_shape))


def correlate(x, w, stride, pads, dilation, groups, out_shape):
    """Grouped cross-correlation, one matrix product per kernel tap."""
    n, c = x.shape[:2]
    o = w.shape[0]
    xg = pad_or_crop(x, pads).reshape((n, groups, c // groups) + tuple(
        x.shape[2 + i] + pads[i][0] + pads[i][1] for i in range(len(pads))))
    wg = w.reshape((groups, o // groups, c // groups) + w.shape[2:])
    positions = int(np.prod(out_shape))
    y = np.zeros((n, groups, o // groups, positions), x.dtype)
    for tap in itertools.product(*map(range, w.shape[2:])):
        xs = xg[(Ellipsis,) + _tap_slices(tap, stride, dilation, out_shape)]
        y += np.matmul(wg[(Ellipsis,) + tap], xs.reshape(n, groups, c // groups, positions))
    return y.reshape((n, o) + tuple(out_shape))


def weight_grad(x, gy, stride, pads, dilation, groups, kernel):
    """Gradient of ``correlate`` with respect to its weight."""
    n, c = x.shape[:2]
    o = gy.shape[1]
    out_shape = gy.shape[2:]
    xg = pad_or_crop(x, pads).reshape((n, groups, c // groups) + tuple(
        x.shape[2 + i] + pads[i][0] + pads[i][1] for i in range(len(pads))))
    positions = int(np.prod(out_shape))
    gg = gy.reshape(n, groups, o // groups, positions)
    gw = np.empty((groups, o // groups, c // groups) + tuple(kernel), x.dtype)
    for tap in itertools.product(*map(range, kernel)):
        xs = xg[(Ellipsis,) + _tap_slices(tap, stride, dilation, out_shape)]
        xs = xs.reshape(n, groups, c // groups, positions)
        gw[(Ellipsis,) + tap] = np.matmul(gg, xs.transpose(0, 1, 3, 2)).sum(axis=0)
    return gw.reshape((o, c // groups) + tuple(kernel))


def transposed_correlate(x, w, stride, pads, dilation, groups, out_shape):
    """The adjoint of ``correlate`` with respect to its input (see the module
    docstring): ``w`` in transposed-conv layout, output spatial shape given."""
    xd = dilate(x, stride)
    adjoint_pads = []
    for i, (lo, _hi) in enumerate(pads):
        span = dilation[i] * (w.shape[2 + i] - 1)
        before = span - lo
        after = out_shape[i] + span - xd.shape[2 + i] - before
        adjoint_pads.append((before, after))
    return correlate(xd, flipped_adjoint_weight(w, groups), (1,) * len(pads), adjoint_pads,
                     dilation, groups, out_shape)


def _bias_shape(b, rank):
    return b.reshape((1, -1) + (1,) * rank)


def _sum_bias(gy):
    return gy.sum(axis=(0,) + tuple(range(2, gy.ndim)))


# ----------------------------------------------------------------------------- conv


def conv(x, w, b, p: ConvParams):
    y = correlate(x, w, p.stride, p.padding, p.dilation, p.groups, p.out_shape)
    if b is not None:
        y += _bias_shape(b, p.rank)
    return activation.apply(y, p.activation, p.negative_slope)


def conv_backward(gy, x, w, p: ConvParams, needs, y=None):
    gy = activation.grad(gy, y, p.activation, p.negative_slope)
    gx = gw = gb = None
    if "x" in needs:
        # Output padding is implicit: out_shape is x's own shape, so rows the forward
        # stride skipped at the end get zero gradient.
        gx = transposed_correlate(gy, _as_transposed(w, p.groups), p.stride, p.padding,
                                  p.dilation, p.groups, p.in_shape)
    if "weight" in needs:
        gw = weight_grad(x, gy, p.stride, p.padding, p.dilation, p.groups, p.kernel)
    if "bias" in needs:
        gb = _sum_bias(gy)
    return gx, gw, gb


def _as_transposed(w, groups):
    """Convolution weight ``(O, C/G, *k)`` viewed as the transposed-conv weight
    ``(O, C/G, *k)`` of its adjoint: the layouts coincide (``C_in`` of the adjoint is
    ``O``), so this is the identity -- kept as a name for the algebra."""
    return w


def conv_transpose(x, w, b, p: ConvParams):
    y = transposed_correlate(x, w, p.stride, p.padding, p.dilation, p.groups, p.out_shape)
    if b is not None:
        y += _bias_shape(b, p.rank)
    return activation.apply(y, p.activation, p.negative_slope)


def conv_transpose_backward(gy, x, w, p: ConvParams, needs, y=None):
    gy = activation.grad(gy, y, p.activation, p.negative_slope)
    gx = gw = gb = None
    if "x" in needs:
        gx = correlate(gy, w, p.stride, p.padding, p.dilation, p.groups, p.in_shape)
    if "weight" in needs:
        gw = weight_grad(gy, x, p.stride, p.padding, p.dilation, p.groups, p.kernel)
    if "bias" in needs:
        gb = _sum_bias(gy)
    return gx, gw, gb


# ----------------------------------------------------------------------------- pooling


def _ceil_pads(p: PoolParams):
    """Padding pairs widened at the end so that every (ceil_mode) window fits."""
    pads = []
    for i in range(p.rank):
        lo, hi = p.padding[i]
        need = (p.out_shape[i] - 1) * p.stride[i] + p.dilation[i] * (p.kernel[i] - 1) + 1
        pads.append((lo, max(hi, need - p.in_shape[i] - lo)))
    return pads


def _windows(x, p: PoolParams, fill):
    """All pooling windows: (N, C, *out, prod(kernel)) (a copy)."""
    xp = pad_or_crop(x, _ceil_pads(p), fill)
    taps = [xp[(Ellipsis,) + _tap_slices(t, p.stride, p.dilation, p.out_shape)]
            for t in itertools.product(*map(range, p.kernel))]
    return np.stack(taps, axis=-1)


def _tap_coords(p: PoolParams):
    """Per output position and tap: the flat input offset and whether it is inside
    the input. Shapes (*out, prod(kernel))."""
    flat = np.zeros(p.out_shape + (int(np.prod(p.kernel)),), np.int64)
    inside = np.ones(flat.shape, bool)
    plane_strides = np.cumprod((1,) + p.in_shape[::-1])[::-1][1:]
    grids = np.meshgrid(*[np.arange(n) for n in p.out_shape], indexing="ij")
    for j, tap in enumerate(itertools.product(*map(range, p.kernel))):
        for i in range(p.rank):
            coord = grids[i] * p.stride[i] - p.padding[i][0] + tap[i] * p.dilation[i]
            inside[..., j] &= (coord >= 0) & (coord < p.in_shape[i])
            flat[..., j] += coord * plane_strides[i]
    return flat, inside


def max_pool(x, p: PoolParams, return_indices):
    v = _windows(x, p, -np.inf)
    flat, inside = _tap_coords(p)
    nan = np.isnan(v)
    any_nan = nan.any(axis=-1)
    masked = np.where(inside, v, -np.inf)
    best = masked.max(axis=-1)  # NaN when the window holds one
    # The winner: the first NaN if any, else the first in-bounds cell equal to the
    # max (for a window of -inf only, its first in-bounds cell).
    winner = np.where(any_nan[..., None], nan, inside & (masked == best[..., None]))
    choice = winner.argmax(axis=-1)
    # y is the winner's value, not ``best``: they differ in the sign of a zero (max
    # may return either of 0.0 and -0.0) and in a NaN's payload; torch and the other
    # backends return the winning cell itself.
    y = np.take_along_axis(v, choice[..., None], axis=-1)[..., 0].astype(x.dtype, copy=False)
    if not return_indices:
        return y, None
    idx = np.take_along_axis(np.broadcast_to(flat, v.shape), choice[..., None], axis=-1)
    return y, idx[..., 0].astype(np.int64)


def max_pool_backward(gy, indices, x_shape):
    n, c = x_shape[:2]
    plane = int(np.prod(x_shape[2:]))
    gx = np.zeros((n * c, plane), gy.dtype)
    rows = np.arange(n * c)[:, None]
    np.add.at(gx, (rows, indices.reshape(n * c, -1)), gy.reshape(n * c, -1))
    return gx.reshape(x_shape)


def _divisor(p: PoolParams, dtype):
    """Average-pool divisor per output position, shape (*out)."""
    if p.divisor_override is not None:
        return np.full(p.out_shape, p.divisor_override, dtype)
    div = np.ones(p.out_shape, dtype)
    for i in range(p.rank):
        inside, padded = pool_window_counts(p, i)
        counts = np.asarray(padded if p.count_include_pad else inside, dtype)
        div = div * counts.reshape((-1,) + (1,) * (p.rank - 1 - i))
    return div


def avg_pool(x, p: PoolParams):
    total = _windows(x, p, 0.0).sum(axis=-1)
    return (total / _divisor(p, x.dtype)).astype(x.dtype, copy=False)


def avg_pool_backward(gy, p: PoolParams):
    g = gy / _divisor(p, gy.dtype)
    pads = _ceil_pads(p)
    padded_shape = gy.shape[:2] + tuple(
        p.in_shape[i] + pads[i][0] + pads[i][1] for i in range(p.rank))
    gxp = np.zeros(padded_shape, gy.dtype)
    # Scatter each tap's share; one tap's slice never overlaps itself (stride >= 1),
    # so the in-place add is exact.
    for tap in itertools.product(*map(range, p.kernel)):
        gxp[(Ellipsis,) + _tap_slices(tap, p.stride, p.dilation, p.out_shape)] += g
    return np.ascontiguousarray(pad_or_crop(gxp, [(-lo, -hi) for lo, hi in pads]))


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
