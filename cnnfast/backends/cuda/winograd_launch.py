"""The Winograd F(2x2, 3x3) path of the CUDA backends (``algorithm="winograd"``): the
host side of ``cnnfast/backends/cuda/kernels/winograd.cu``.

A convolution kernel of ``conv_launch`` -- forward (MODE_CORR), the adjoint (MODE_ADJ:
input gradient, transposed-convolution forward) or the weight gradient -- with a 3x3
kernel, stride 1 and dilation 1 in 2-d runs as three steps: the transforms of its
operands into 16 slices (winograd.cu), one GEMM over the slices, and the inverse
transform. The GEMM is conv.cu's, launched by ``conv_launch`` as a 1x1 convolution
with ``16 * groups`` groups (slice e of group g is group ``e * groups + g``), so the
tiles, split-K and deterministic slice sums are those of the implicit-GEMM path.

It does 16 multiply-adds per 2x2 output tile and input channel where the direct
product does 36 (2.25x fewer), at the cost of transformed copies of the operands:
4x the input and 4x the output (the weight gradient: of the input and grad_y) per
image. Images are processed in chunks whose copies stay within
``WORKSPACE_BYTES``; the weight gradient adds the chunks' slices in chunk order
(deterministic).

float32 and float64 (float16 storage would round the transformed copies); the
accuracy contract is the CPU backends' (tests/test_cuda_winograd.py).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from .common import ctype, kernel_constants, launch_1d
from ...geometry import pads_before_3d
from ...params import ConvParams, conv_params

# The templates of winograd.cu (NVRTC name expressions: each for float and double;
# wino_weight also per weight layout).
_K = kernel_constants("winograd.cu")
WINO_CORR, WINO_ADJ = _K["WINO_CORR"], _K["WINO_ADJ"]
CTYPES = ("float", "double")
KERNELS = ("wino_input", "wino_output", "wino_grad_output", "wino_weight_grad")
# The transformed copies of one chunk of images (both operands together) stay within
# this many bytes; a single image may exceed it (it is then a chunk of its own).
WORKSPACE_BYTES = 256 << 20
_INT32_MAX = 2 ** 31 - 1


def name_expressions(ct=None) -> tuple:
    """winograd.cu's instantiations (those of C type ``ct`` only, when given)."""
    names = []
    for c in CTYPES if ct is None else (ct,) if ct in CTYPES else ():
        names += [f"{k}<{c}>" for k in KERNELS]
        names += [f"wino_weight<{c},{WINO_CORR}>", f"wino_weight<{c},{WINO_ADJ}>"]
    return tuple(names)


def refusal(p: ConvParams, groups_limit: int):
    """Why the Winograd path cannot run a convolution kernel of ``p``, or None. The
    dtype is checked at launch (``unsupported_dtype``)."""
    if p.rank != 2 or p.kernel != (3, 3):
        return f"Winograd F(2x2, 3x3) needs a 2-d 3x3 kernel (this is {p.rank}-d {p.kernel})"
    if p.stride != (1, 1) or p.dilation != (1, 1):
        return (f"Winograd needs stride 1 and dilation 1 (stride {p.stride}, dilation "
                f"{p.dilation})")
    if 16 * p.groups > groups_limit:
        return f"groups={p.groups}: its 16 * groups GEMM slices exceed one launch grid"
    return None


def unsupported_dtype(dtype):
    """Why Winograd cannot compute in ``dtype``, or None."""
    if ctype(dtype) not in CTYPES:
        return (f"the Winograd path computes in float32 and float64 only (a {dtype} copy "
                f"of the transformed tiles would lose the accuracy the contract asks for)")
    return None


@lru_cache(maxsize=256)
def _slice_params(c_total, co_total, cg, groups, tiles) -> ConvParams:
    """The 1x1 convolution of the slice GEMM: (1, 16*C, tiles) data, (16*CO, cg, 1)
    weight, 16 * groups groups."""
    return conv_params((1, 16 * c_total, tiles), (16 * co_total, cg, 1), 1, 0, 1,
                       16 * groups)


def _chunks(n, elements, nbytes):
    """(start, stop) image ranges whose transformed copies (``elements`` in the larger
    copy and ``nbytes`` in both, per image) fit ``WORKSPACE_BYTES`` and int32 indexing."""
    if elements > _INT32_MAX:
        raise NotImplementedError("the Winograd path: one image's transformed tiles exceed "
                                  "the int32 indexing of the CUDA kernels; use "
                                  "algorithm='gemm'")
    step = max(1, min(WORKSPACE_BYTES // max(1, nbytes), _INT32_MAX // max(1, elements)))
    return [(i, min(n, i + step)) for i in range(0, n, step)]


def _tiles(shape):
    return -(-shape[0] // 2), -(-shape[1] // 2)


def _launch(rt, name, total, args):
    grid, block = launch_1d(total)
    rt.function("winograd.cu", name)(grid, block, args)


def _input_transform(rt, x, ci, ishape, pad, th, tw):
    """V (16, ci, tiles) of the images ``x``: wino_input."""
    k = x.shape[0]
    tiles = k * th * tw
    v = rt.xp.empty((16 * ci * tiles,), x.dtype)
    _launch(rt, f"wino_input<{ctype(x.dtype)}>", ci * tiles, (
        x, v, np.int32(k), np.int32(ci), np.int32(ishape[0]), np.int32(ishape[1]),
        np.int32(pad[0]), np.int32(pad[1]), np.int32(th), np.int32(tw)))
    return v


def forward_like(rt, gemm, mode_adj, a, x, bias, out, n, groups, ci, co, ishape, oshape,
                 p: ConvParams, act):
    """out = the 3x3 stride-1 correlation (``mode_adj`` false: weight ``a`` laid out
    (co, ci/G, 3, 3)) or its adjoint (true: ``a`` (ci, co/G, 3, 3), taps reversed) of
    x (n, ci, *ishape), plus the bias and the activation ``act``; ``gemm`` is
    conv_launch's forward GEMM launcher."""
    if out.size == 0:
        return
    dt = out.dtype
    ct = ctype(dt)
    m, cg = co // groups, ci // groups
    pad = pads_before_3d(p.padding)[1:]
    if mode_adj:  # the adjoint of a stride-1 correlation is one with padding 2 - pad
        pad = tuple(2 - v for v in pad)
    th, tw = _tiles(oshape)
    u = rt.xp.empty((16 * co * cg,), dt)
    _launch(rt, f"wino_weight<{ct},{WINO_ADJ if mode_adj else WINO_CORR}>", co * cg,
            (a, u, np.int32(co), np.int32(m), np.int32(cg)))
    b = bias if bias is not None else out  # never read when has_bias is 0
    for lo, hi in _chunks(n, 16 * max(ci, co) * th * tw, 16 * (ci + co) * th * tw * dt.itemsize):
        k = hi - lo
        tiles = k * th * tw
        v = _input_transform(rt, x[lo:hi], ci, ishape, pad, th, tw)
        prod = rt.xp.empty((16 * co * tiles,), dt)
        q = _slice_params(ci, co, cg, groups, tiles)
        gemm(u, v, prod, 16 * groups, 16 * ci, 16 * co, q)
        _launch(rt, f"wino_output<{ct}>", co * tiles, (
            prod, b, out[lo:hi], np.int32(k), np.int32(co), np.int32(oshape[0]),
            np.int32(oshape[1]), np.int32(th), np.int32(tw), np.int32(bias is not None))
            + act)


def weight_grad(rt, gemm_wgrad, add_slices, a, x, out, n, groups, ci, co, ishape, oshape,
                p: ConvParams):
    """out (co, ci/G, 3, 3) = the weight gradient of a 3x3 stride-1 correlation from
    grad_y-like ``a`` (n, co, *oshape) and data ``x`` (n, ci, *ishape); ``gemm_wgrad``
    is conv_launch's weight-gradient GEMM launcher, ``add_slices`` its in-order sum."""
    if out.size == 0:
        return
    dt = out.dtype
    ct = ctype(dt)
    cg = ci // groups
    pad = pads_before_3d(p.padding)[1:]
    th, tw = _tiles(oshape)
    chunks = _chunks(n, 16 * max(ci, co) * th * tw, 16 * (ci + co) * th * tw * dt.itemsize)
    count = 16 * co * cg
    sums = rt.xp.empty((len(chunks), count), dt)
    for i, (lo, hi) in enumerate(chunks):
        k = hi - lo
        tiles = k * th * tw
        v = _input_transform(rt, x[lo:hi], ci, ishape, pad, th, tw)
        gt = rt.xp.empty((16 * co * tiles,), dt)
        _launch(rt, f"wino_grad_output<{ct}>", co * tiles, (
            a[lo:hi], gt, np.int32(k), np.int32(co), np.int32(oshape[0]), np.int32(oshape[1]),
            np.int32(th), np.int32(tw)))
        q = _slice_params(ci, co, cg, groups, tiles)
        gemm_wgrad(gt, v, sums[i], 16 * groups, 16 * ci, 16 * co, q)
    total = sums[0] if len(chunks) == 1 else rt.xp.empty((count,), dt)
    add_slices(rt, sums, total, len(chunks))
    _launch(rt, f"wino_weight_grad<{ct}>", co * cg, (total, out, np.int32(co), np.int32(cg)))

