"""Winograd F(4x4, 3x3) (the "winograd" path): 2-d 3x3 and 3-d KDx3x3 correlations,
stride 1, dilation 1, one group, any padding (negative: cropped); the forward correlation
(``correlate``: conv forward, and with the flipped adjoint weight the input
gradient) and the weight gradient (``weight_grad``). The algorithm, its transforms
and its accuracy are those of the cpp backend's ``csrc/conv/winograd.h`` (read
there): points 0, 1, -1, 1/2, -2 and infinity; the 4x4 output tile of output
channel k is ``A^T [sum_c (G g_kc G^T) (.) (B^T d_c B)] A`` from the 6x6 input
windows ``d_c`` (stride 4), i.e. 36 products ``M_xi (K x tiles) = U_xi (K x C) .
V_xi (C x tiles)``: 36 multiply-adds per (tile, k, c) instead of 16 * 9.

Accuracy (the same contract as cpp, tests/test_numba_winograd.py): an output's
error follows the largest sum of |terms| of the call, S, not its own: float32
within 1e-5 S + 1e-4 |exact|, float64 within 1e-12 S. An infinity or NaN in a
window spreads to the whole tile's outputs.

3-d (``correlate3``, and ``weight_grad`` on 5-D arrays): Winograd on (H, W) and the KD
depth taps in the products' reduction, as the cpp path (``csrc/conv/winograd3d.h``):
the rows of U and V are (kd, c) pairs, kd * C + c (the weight reordered so by the
caller), and a window for depth tap kd of output slice od is in input slice od + kd -
loz (zeros when outside). The forward keeps a window of transformed slices per work
item (see ``correlate3``), so each slice is transformed about once; the weight
gradient's tiles run over the (image, output slice) planes and transform a slice once
per depth tap that reads it (simpler; paid for only by deep layers: the backend's
automatic choice, WINO3_MIN_WG_CHANNELS2).

Forward schedule: the tiles (n, ty, tx) of the batch, in that order, are cut into
blocks of ``Tb`` (a multiple of NR; ``block_tiles``); a task (chunk of blocks) owns
one block at a time and per block
  * transforms the input windows of every channel, panel of NR tiles by panel,
    into ``V`` (36 x panels x C x NR: the products' packed B operands, ~256 KiB),
  * per MR output channels and panel: the 36 products (``_micro``, the register
    tile of ``gemm._micro``: MR x NR accumulators, the weights ``U`` packed once per
    call by ``transform_weight`` as (36, K/MR, C, MR)) into a stack buffer, the
    output transform ``A^T M A``, the bias and the activation (``epilogue``) where
    the outputs are written, clipped at the image edges.
Workspace: V and the tile geometry per task; nothing of the size of the batch.

Weight gradient: ``dL/dU_xi = sum over tiles of (A gy A^T)_xi (x) (B^T d B)_xi``, then
``gw = G^T dL/dU G``. The tiles are cut into fixed chunks of ``WG_CHUNK``; a task owns
a range of output channels x a range of input channels and runs through every chunk
in order: it transforms the chunk's gy and input windows of its channels (a range
of channels transforms the other's data again: the price of a fixed summation
order) into rows over tiles, adds the 36 products (``wgrad._dot43``: dot products
along the tiles, 4 x 3 rows at a time) into its own dL/dU, and writes its part of
gw at the end.

Vectorisation: the transforms run over the NR tiles of a panel, between two
fixed-size stack buffers (``_stack36``): the window values are gathered into one
(scalar loads, zeros outside the plane), the transform reads it and writes the
other in a loop LLVM vectorises (stack buffers cannot alias: no run-time overlap
checks, which 36 distinct rows of a heap array would exceed), then 36 short
copies place the rows.

Determinism: every output element is made by one task in an order fixed by the
shape (the forward products sum over C in order; the weight gradient's chunks are
fixed, each dot product's order depends on the chunk's length only, and the chunks
are added in order); blocks and channel ranges only decide who computes what, so
the bits do not depend on the thread count.

numba's disk cache checks this file only: after an edit of ``gemm``, ``wgrad``,
``epilogue`` or ``common`` (whose helpers this module compiles in), clear
``kernels/__pycache__``.
"""

from __future__ import annotations

import numpy as np
from numba import carray, njit, prange, types, uint64
from numba.core import cgutils
from numba.extending import intrinsic

from . import JIT
from .common import ROW
from .epilogue import ACT_NONE, act_value
from .gemm import MR, NR, _stack_tile
from .wgrad import _dot43

# A block's V (36 x C x Tb values) within this many bytes: it stays in L2 while
# every MR output channels sweep it.
V_BYTES = 256 << 10
# Tiles per chunk of the weight gradient's reduction (fixed: the summation order).
WG_CHUNK = 128
# The weight gradient's channel ranges: at most this many channels each way.
WG_RANGE = 128

KW = NR  # the panel width of the transforms (tiles)


@intrinsic
def _stack36(typingctx, dtype):
    """A pointer to 36 * NR elements on the stack (see the module docstring)."""
    def codegen(context, builder, signature, args):
        ty = context.get_value_type(dtype.dtype)
        return cgutils.alloca_once(builder, ty,
                                   size=context.get_constant(types.intp, 36 * KW))
    return types.CPointer(dtype.dtype)(dtype), codegen


@intrinsic
def _stack_m(typingctx, dtype):
    """A pointer to 36 * MR * NR elements on the stack (the 36 products' tiles)."""
    def codegen(context, builder, signature, args):
        ty = context.get_value_type(dtype.dtype)
        return cgutils.alloca_once(builder, ty,
                                   size=context.get_constant(types.intp, 36 * MR * NR))
    return types.CPointer(dtype.dtype)(dtype), codegen


# ------------------------------------------------------------------------- 1-d transforms
# Of 6 (B^T), 6 -> 4 (A^T) and 4 -> 6 (A, the weight gradient's gy) values; k holds
# the constants in the values' dtype (a float literal would promote float32 to float64):
# (1/2, 3/2, 2, 5/2, 1/4, 4, 1/8, 8).


@njit(**ROW)
def _bt(d0, d1, d2, d3, d4, d5, k):
    h, h3, two, h5 = k[0], k[1], k[2], k[3]
    t = d3 - d1
    e = d4 - d2
    return ((d0 - d2) + e + h3 * t, (d4 - d1) + h * d2 + h5 * d3,
            (d4 + d1) - h5 * d2 + h * d3, e + two * t, e - h * t,
            (d5 + d1) - two * d3 + h3 * e)


@njit(**ROW)
def _at(m0, m1, m2, m3, m4, m5, k):
    h, two, q, four, e8, eight = k[0], k[2], k[4], k[5], k[6], k[7]
    a = m1 + m2
    b = m1 - m2
    return (m0 + a + (m3 + m4), b + h * m3 - two * m4, a + q * m3 + four * m4,
            (b + m5) + e8 * m3 - eight * m4)


@njit(**ROW)
def _a6(g0, g1, g2, g3, k):
    h, two, q, four, e8, eight = k[0], k[2], k[4], k[5], k[6], k[7]
    a = g0 + g2
    b = g1 + g3
    return (g0, a + b, a - b, g0 + h * g1 + q * g2 + e8 * g3,
            g0 - two * g1 + four * g2 - eight * g3, g3)


@njit(**ROW)
def _consts(a):
    dt = a.dtype.type
    return (dt(0.5), dt(1.5), dt(2.0), dt(2.5), dt(0.25), dt(4.0), dt(0.125), dt(8.0))


# The weight side, in float64 (a small part of the work): G (3 -> 6) and G^T (6 -> 3).
@njit(**ROW)
def _g(g0, g1, g2):
    s = g0 + g2
    return (g0, (s + g1) / 3.0, (g1 - s) / 3.0,
            (-16.0 * g0 - 8.0 * g1 - 4.0 * g2) / 15.0, (g0 - 2.0 * g1 + 4.0 * g2) / 15.0,
            g2)


@njit(**ROW)
def _gt(u0, u1, u2, u3, u4, u5):
    s = u1 + u2
    d = u1 - u2
    return (u0 + d / 3.0 + (u4 - 16.0 * u3) / 15.0, s / 3.0 - (8.0 * u3 + 2.0 * u4) / 15.0,
            d / 3.0 + u5 + (4.0 * u4 - 4.0 * u3) / 15.0)


@njit(**ROW)
def _gt6(f, q, z):
    """G^T of the 6 values at f[q + s*z], in float64."""
    f64 = np.float64
    return _gt(f64(f[q]), f64(f[q + z]), f64(f[q + 2 * z]), f64(f[q + 3 * z]),
               f64(f[q + 4 * z]), f64(f[q + 5 * z]))


# ----------------------------------------------------------------------------- tiles


@njit(**ROW)
def _tile_geometry(t0, nb, tX, tpi, Do, img, sl, W, loz, loy, lox, off, iz, iy, ix):
    """Tiles t0 .. t0+nb-1 (n, od, ty, tx) over ``Do`` output slices of ``tpi`` tiles
    each: their windows' first slice, row and column in the input (``iz``, ``iy``,
    ``ix``: (od, 4 ty, 4 tx) - lo) and offset (``off``, with the image's; ``img`` and
    ``sl`` the image and slice strides). 2-d: Do = 1, loz = 0."""
    for j in range(nb):
        t = t0 + j
        q = t // tpi
        r = t - q * tpi
        n = q // Do
        z0 = q - n * Do - loz
        ty = r // tX
        y0 = 4 * ty - loy
        x0 = 4 * (r - ty * tX) - lox
        iz[j] = z0
        iy[j] = y0
        ix[j] = x0
        off[j] = n * img + z0 * sl + y0 * W + x0


@njit(**ROW)
def _tile_outputs(t0, nb, tX, tpi, Ho, Wo, img, ni, nj, pos):
    """Where the outputs of tiles t0 .. t0+nb-1 (n, ty, tx) of one output slice go:
    rows ``ni`` and columns ``nj`` of the 4x4 tile inside the output, and the offset of
    its first output (``pos``, with the image's; ``img`` the image stride)."""
    for j in range(nb):
        t = t0 + j
        n = t // tpi
        r = t - n * tpi
        oy = (r // tX) * 4
        ox = (r - (r // tX) * tX) * 4
        ni[j] = min(4, Ho - oy)
        nj[j] = min(4, Wo - ox)
        pos[j] = n * img + oy * Wo + ox


@njit(cache=True, fastmath=JIT["fastmath"], error_model="numpy")
def _in_panel(src, cbase, D, H, W, R, off, iz, kz, iy, ix, j0, nbp, dst, dbase, xs):
    """The transforms of one channel (its plane at ``cbase`` of the flat ``src``; 3-d:
    depth tap ``kz`` of D slices, ``cbase`` including its offset) for the tiles j0 ..
    j0+nbp-1 of a block (geometry ``off``/``iz``/``iy``/``ix``): R = 6, input windows,
    ``B^T d B``; R = 4, gy windows, ``A gy A^T``. Position xi of tile j0 + j goes to
    ``dst[dbase + xi * xs + j]`` (j < NR; the tiles past nbp, and windows in a slice
    outside the input, get zeros)."""
    dt = src.dtype.type
    k = _consts(src)
    zero = dt(0)
    d = carray(_stack36(src.dtype), 36 * KW)
    e = carray(_stack36(src.dtype), 36 * KW)
    # gather the windows: d[(r*6 + s)*KW + j]
    for j in range(nbp):
        y0 = iy[j0 + j]
        x0 = ix[j0 + j]
        b = cbase + off[j0 + j]
        z = iz[j0 + j] + kz
        if z < 0 or z >= D:
            for r in range(R):
                for s in range(R):
                    d[(r * 6 + s) * KW + j] = zero
        elif y0 >= 0 and y0 + R <= H and x0 >= 0 and x0 + R <= W:
            for r in range(R):
                br = uint64(b + r * W)
                for s in range(R):
                    d[(r * 6 + s) * KW + j] = src[br + uint64(s)]
        else:
            for r in range(R):
                inside = 0 <= y0 + r < H
                for s in range(R):
                    d[(r * 6 + s) * KW + j] = (src[b + r * W + s]
                                               if inside and 0 <= x0 + s < W else zero)
    for j in range(nbp, KW):
        for r in range(R):
            for s in range(R):
                d[(r * 6 + s) * KW + j] = zero
    # transform along x then y, vectorised over the panel's tiles
    if R == 6:
        for j in range(KW):
            u0 = _bt(d[j], d[KW + j], d[2 * KW + j], d[3 * KW + j], d[4 * KW + j],
                     d[5 * KW + j], k)
            u1 = _bt(d[6 * KW + j], d[7 * KW + j], d[8 * KW + j], d[9 * KW + j],
                     d[10 * KW + j], d[11 * KW + j], k)
            u2 = _bt(d[12 * KW + j], d[13 * KW + j], d[14 * KW + j], d[15 * KW + j],
                     d[16 * KW + j], d[17 * KW + j], k)
            u3 = _bt(d[18 * KW + j], d[19 * KW + j], d[20 * KW + j], d[21 * KW + j],
                     d[22 * KW + j], d[23 * KW + j], k)
            u4 = _bt(d[24 * KW + j], d[25 * KW + j], d[26 * KW + j], d[27 * KW + j],
                     d[28 * KW + j], d[29 * KW + j], k)
            u5 = _bt(d[30 * KW + j], d[31 * KW + j], d[32 * KW + j], d[33 * KW + j],
                     d[34 * KW + j], d[35 * KW + j], k)
            for c in range(6):  # unrolled by LLVM (constant trip count)
                o = _bt(u0[c], u1[c], u2[c], u3[c], u4[c], u5[c], k)
                e[c * KW + j] = o[0]
                e[(6 + c) * KW + j] = o[1]
                e[(12 + c) * KW + j] = o[2]
                e[(18 + c) * KW + j] = o[3]
                e[(24 + c) * KW + j] = o[4]
                e[(30 + c) * KW + j] = o[5]
    else:
        for j in range(KW):
            u0 = _a6(d[j], d[KW + j], d[2 * KW + j], d[3 * KW + j], k)
            u1 = _a6(d[6 * KW + j], d[7 * KW + j], d[8 * KW + j], d[9 * KW + j], k)
            u2 = _a6(d[12 * KW + j], d[13 * KW + j], d[14 * KW + j], d[15 * KW + j], k)
            u3 = _a6(d[18 * KW + j], d[19 * KW + j], d[20 * KW + j], d[21 * KW + j], k)
            for c in range(6):
                o = _a6(u0[c], u1[c], u2[c], u3[c], k)
                e[c * KW + j] = o[0]
                e[(6 + c) * KW + j] = o[1]
                e[(12 + c) * KW + j] = o[2]
                e[(18 + c) * KW + j] = o[3]
                e[(24 + c) * KW + j] = o[4]
                e[(30 + c) * KW + j] = o[5]
    for xi in range(36):
        d0 = uint64(dbase + xi * xs)
        e0 = uint64(xi * KW)
        for j in range(uint64(KW)):
            dst[d0 + j] = e[e0 + j]


# ----------------------------------------------------------------------------- forward


@njit(cache=True, fastmath=JIT["fastmath"], error_model="numpy")
def _micro(vf, v0, uf, u0, C, m, m0):
    """``m[m0 + i*NR + j] = sum_c uf[u0 + c*MR + i] * vf[v0 + c*NR + j]``: one MR x NR
    tile of one of the 36 products (``gemm._micro``'s register tile: the
    accumulators on the stack, indexed with constants only, stay in registers)."""
    acc = carray(_stack_tile(vf.dtype), (MR, NR))
    for i in range(MR):
        for j in range(NR):
            acc[i, j] = 0
    for c in range(C):
        cu = uint64(u0 + c * MR)
        a0 = uf[cu]
        a1 = uf[cu + uint64(1)]
        a2 = uf[cu + uint64(2)]
        a3 = uf[cu + uint64(3)]
        cv = uint64(v0 + c * NR)
        for j in range(uint64(NR)):
            v = vf[cv + j]
            acc[0, j] += a0 * v
            acc[1, j] += a1 * v
            acc[2, j] += a2 * v
            acc[3, j] += a3 * v
    for i in range(MR):
        for j in range(NR):
            m[m0 + i * NR + j] = acc[i, j]


@njit(cache=True, fastmath=JIT["fastmath"], error_model="numpy")
def _out_panel(vf, v0, vxs, uf, u0, uxs, C, k0, rows, yf, ky, Ho, Wo, yoff, ni, nj, j0,
               nbp, b, act, slope):
    """Output channels k0 .. k0+rows-1 (rows <= MR) of the tiles j0 .. j0+nbp-1: the
    36 products (operands at ``v0 + xi*vxs``, ``u0 + xi*uxs``) into a stack buffer,
    ``A^T M A``, the bias and the activation, clipped (``ni`` x ``nj`` outputs of a
    tile at ``yoff`` + channel * ``ky``)."""
    dt = vf.dtype.type
    k = _consts(vf)
    zero = dt(0)
    one = dt(1)
    s = dt(slope)
    mb = carray(_stack_m(vf.dtype), 36 * MR * NR)
    for xi in range(36):
        _micro(vf, v0 + xi * vxs, uf, u0 + xi * uxs, C, mb, xi * MR * NR)
    o = carray(_stack36(vf.dtype), 36 * KW)  # o[(a*4 + c)*KW + j] (16 rows used)
    for i in range(rows):
        for j in range(NR):
            base = i * NR + j
            z = MR * NR
            c0 = _at(mb[base], mb[base + 6 * z], mb[base + 12 * z], mb[base + 18 * z],
                     mb[base + 24 * z], mb[base + 30 * z], k)
            c1 = _at(mb[base + z], mb[base + 7 * z], mb[base + 13 * z], mb[base + 19 * z],
                     mb[base + 25 * z], mb[base + 31 * z], k)
            c2 = _at(mb[base + 2 * z], mb[base + 8 * z], mb[base + 14 * z],
                     mb[base + 20 * z], mb[base + 26 * z], mb[base + 32 * z], k)
            c3 = _at(mb[base + 3 * z], mb[base + 9 * z], mb[base + 15 * z],
                     mb[base + 21 * z], mb[base + 27 * z], mb[base + 33 * z], k)
            c4 = _at(mb[base + 4 * z], mb[base + 10 * z], mb[base + 16 * z],
                     mb[base + 22 * z], mb[base + 28 * z], mb[base + 34 * z], k)
            c5 = _at(mb[base + 5 * z], mb[base + 11 * z], mb[base + 17 * z],
                     mb[base + 23 * z], mb[base + 29 * z], mb[base + 35 * z], k)
            for a in range(4):
                r = _at(c0[a], c1[a], c2[a], c3[a], c4[a], c5[a], k)
                o[(a * 4) * KW + j] = r[0]
                o[(a * 4 + 1) * KW + j] = r[1]
                o[(a * 4 + 2) * KW + j] = r[2]
                o[(a * 4 + 3) * KW + j] = r[3]
        kk = k0 + i
        bv = b[kk]
        for j in range(nbp):
            y0 = yoff[j0 + j] + kk * ky
            for a in range(ni[j0 + j]):
                ya = y0 + a * Wo
                for c in range(nj[j0 + j]):
                    v = o[(a * 4 + c) * KW + j] + bv
                    yf[ya + c] = v if act == ACT_NONE else act_value(v, act, s, zero, one)


def block_tiles(C, itemsize):
    """Tiles per block of the forward: V (36 x C x tiles; 3-d: C = depth taps x
    channels) within ``V_BYTES``, whole panels of NR, at most 256."""
    tb = V_BYTES // (36 * itemsize * max(C, 1))
    return int(max(NR, min(256, tb // NR * NR)))


@njit(**JIT)
def transform_weight(w, up):
    """``up[xi, k // MR, c, k % MR] = (G w[k, c] G^T)[xi]`` (xi = a*6 + b, a along y),
    computed in float64; ``up`` is zero past the last output channel. 3-d: ``w`` is
    (K, KD * C, 3, 3), row kd * C + c (the products' reduction order)."""
    K, C = w.shape[0], w.shape[1]
    f64 = np.float64
    for k in prange(K):
        kb = k // MR
        i = k % MR
        for c in range(C):
            # h_b = G (column b of the kernel): (G g)[a][b] = h_b[a]
            h0 = _g(f64(w[k, c, 0, 0]), f64(w[k, c, 1, 0]), f64(w[k, c, 2, 0]))
            h1 = _g(f64(w[k, c, 0, 1]), f64(w[k, c, 1, 1]), f64(w[k, c, 2, 1]))
            h2 = _g(f64(w[k, c, 0, 2]), f64(w[k, c, 1, 2]), f64(w[k, c, 2, 2]))
            for a in range(6):
                o = _g(h0[a], h1[a], h2[a])
                for bb in range(6):
                    up[a * 6 + bb, kb, c, i] = o[bb]


@njit(**JIT)
def correlate(x, up, b, y, loy, lox, Tb, nthreads, act, slope):
    """``y[n, k, oy, ox] = act(b[k] + sum_{c, ky, kx} w[k, c, ky, kx] * x[n, c, oy + ky -
    loy, ox + kx - lox])`` (x, y 4-D; zeros outside x) by Winograd F(4x4, 3x3), the
    weight transformed into ``up`` (``transform_weight``); blocks of ``Tb`` tiles."""
    N, C, H, W = x.shape
    K, Ho, Wo = y.shape[1], y.shape[2], y.shape[3]
    KB = up.shape[1]
    tX = (Wo + 3) // 4
    tpi = ((Ho + 3) // 4) * tX
    tiles = N * tpi
    nblk = (tiles + Tb - 1) // Tb
    npmax = Tb // NR
    vxs = npmax * C * NR
    uxs = KB * C * MR
    xf = x.reshape(x.size)
    yf = y.reshape(y.size)
    uf = up.reshape(up.size)
    ky = Ho * Wo
    nchunk = min(nblk, 4 * nthreads)
    for chunk in prange(nchunk):
        v = np.empty(36 * vxs, x.dtype)
        off = np.empty(Tb, np.int64)
        iz = np.zeros(Tb, np.int64)
        iy = np.empty(Tb, np.int64)
        ix = np.empty(Tb, np.int64)
        yoff = np.empty(Tb, np.int64)
        ni = np.empty(Tb, np.int64)
        nj = np.empty(Tb, np.int64)
        for blk in range(chunk * nblk // nchunk, (chunk + 1) * nblk // nchunk):
            t0 = blk * Tb
            nb = min(Tb, tiles - t0)
            npan = (nb + NR - 1) // NR
            _tile_geometry(t0, nb, tX, tpi, 1, C * H * W, 0, W, 0, loy, lox, off, iz, iy,
                           ix)
            _tile_outputs(t0, nb, tX, tpi, Ho, Wo, K * ky, ni, nj, yoff)
            for c in range(C):
                for p in range(npan):
                    _in_panel(xf, c * H * W, 1, H, W, 6, off, iz, 0, iy, ix, p * NR,
                              min(NR, nb - p * NR), v, (p * C + c) * NR, vxs)
            for ob in range(KB):
                rows = min(MR, K - ob * MR)
                for p in range(npan):
                    _out_panel(v, p * C * NR, vxs, uf, ob * C * MR, uxs, C, ob * MR, rows,
                               yf, ky, Ho, Wo, yoff, ni, nj, p * NR, min(NR, nb - p * NR),
                               b, act, slope)


def slots3(KD):
    """V slots (transformed input slices) per work item of ``correlate3``: the KD live
    ones and 3 more, so the live ones move to the front once every 4 output slices."""
    return KD + 3


@njit(**JIT)
def correlate3(x, up, b, y, loz, loy, lox, Tb, Lb, nthreads, act, slope):
    """``y[n, k, od, oy, ox] = act(b[k] + sum_{c, kd, ky, kx} w[k, c, kd, ky, kx] * x[n, c,
    od + kd - loz, oy + ky - loy, ox + kx - lox])`` (x, y 5-D; zeros outside x): the 3-d
    ``correlate``, the KD depth taps in the products' reduction (rows kd * C + c of
    ``up``), ``Lb`` = ``slots3(KD)``. Each input slice is transformed once per work
    item: items are (image, block of ``Tb`` tiles of one plane, range of output
    depths); an item keeps the transformed slices of its window in ``Lb`` slots of V,
    consecutive slices in consecutive slots, so the KD slices an output slice reads
    are one contiguous reduction (rows kd * C + c, the order of U); when the slots run
    out the KD - 1 live ones move to the front. The depth ranges (more of them only
    when the images and blocks are too few for the threads) decide who computes an
    output, not its value: a slice's transform and the reduction order do not depend
    on the range."""
    N, C, D, H, W = x.shape
    K, Do, Ho, Wo = y.shape[1], y.shape[2], y.shape[3], y.shape[4]
    KB, RC = up.shape[1], up.shape[2]
    KD = RC // C
    tX = (Wo + 3) // 4
    tpi = ((Ho + 3) // 4) * tX
    nblk = (tpi + Tb - 1) // Tb
    SC = Lb * C
    vxs = (Tb // NR) * SC * NR
    uxs = KB * RC * MR
    xf = x.reshape(x.size)
    yf = y.reshape(y.size)
    uf = up.reshape(up.size)
    HW = H * W
    ps = Ho * Wo
    ky = Do * ps
    nr = 1
    while N * nblk * nr < 4 * nthreads and nr < Do:
        nr += 1
    dr = (Do + nr - 1) // nr
    nr = (Do + dr - 1) // dr
    for item in prange(N * nblk * nr):
        n = item // (nblk * nr)
        blk = (item // nr) % nblk
        d0 = (item % nr) * dr
        d1 = min(Do, d0 + dr)
        t0 = blk * Tb
        nb = min(Tb, tpi - t0)
        npan = (nb + NR - 1) // NR
        v = np.empty(36 * vxs, x.dtype)
        off = np.empty(Tb, np.int64)
        iz = np.zeros(Tb, np.int64)
        iy = np.empty(Tb, np.int64)
        ix = np.empty(Tb, np.int64)
        poff = np.empty(Tb, np.int64)
        yoff = np.empty(Tb, np.int64)
        ni = np.empty(Tb, np.int64)
        nj = np.empty(Tb, np.int64)
        # the block's windows in one plane (a slice's offset goes into cbase below)
        _tile_geometry(t0, nb, tX, tpi, 1, 0, 0, W, 0, loy, lox, off, iz, iy, ix)
        _tile_outputs(t0, nb, tX, tpi, Ho, Wo, 0, ni, nj, poff)  # t0 < tpi: one image
        img = n * C * D * HW
        s0 = 0  # the slot of depth tap 0 of the current output slice
        for od in range(d0, d1):
            if od == d0:
                first, last = 0, KD
            else:
                if s0 + KD >= Lb:  # no slot after the live ones: move them to the front
                    ln = (KD - 1) * C * NR
                    for xi in range(36):
                        for p in range(npan):
                            src = xi * vxs + (p * SC + (s0 + 1) * C) * NR
                            dst = xi * vxs + p * SC * NR
                            for e in range(ln):
                                v[dst + e] = v[src + e]
                    s0 = 0
                else:
                    s0 += 1
                first, last = KD - 1, KD
            for kd in range(first, last):  # slice z into slot s0 + kd (zeros outside x)
                z = od + kd - loz
                for c in range(C):
                    for p in range(npan):
                        _in_panel(xf, img + c * D * HW + z * HW, D, H, W, 6, off, iz, z,
                                  iy, ix, p * NR, min(NR, nb - p * NR), v,
                                  (p * SC + (s0 + kd) * C + c) * NR, vxs)
            base = n * K * ky + od * ps
            for j in range(nb):
                yoff[j] = base + poff[j]
            for ob in range(KB):
                rows = min(MR, K - ob * MR)
                for p in range(npan):
                    _out_panel(v, (p * SC + s0 * C) * NR, vxs, uf, ob * RC * MR, uxs, RC,
                               ob * MR, rows, yf, ky, Ho, Wo, yoff, ni, nj, p * NR,
                               min(NR, nb - p * NR), b, act, slope)


# ----------------------------------------------------------------------------- weight grad


def weight_grad_split(C, K, nthreads):
    """(input channels, output channels) per task of ``weight_grad``: ranges of at most
    ``WG_RANGE``, the larger split until every thread has one (the split does not
    change any result)."""
    nc, nk = -(-C // WG_RANGE), -(-K // WG_RANGE)
    while nc * nk < nthreads:
        cc, mk = -(-C // nc), -(-K // nk)
        if cc >= mk and cc > 3:
            nc += 1
        elif mk > 4:
            nk += 1
        else:
            break
    return -(-C // nc), -(-K // nk)


@njit(**JIT)
def weight_grad(x, gy, gw, loz, loy, lox, cc, mk):
    """``gw[k, c, kd, ky, kx] = sum_{n, od, oy, ox} gy[n, k, od, oy, ox] * x[n, c, od + kd -
    loz, oy + ky - loy, ox + kx - lox]`` (5-D arrays, 2-d as depth 1, KD = 1; zeros
    outside x)
    by Winograd F(4x4, 3x3) on (H, W): the rows of dL/dU are the (kd, c) pairs (row
    kd * C + c), tasks of ``mk`` output channels x ``cc`` rows, the tiles of the
    (image, output slice) planes in fixed chunks of ``WG_CHUNK``."""
    N, C, D, H, W = x.shape
    K, Do, Ho, Wo = gy.shape[1], gy.shape[2], gy.shape[3], gy.shape[4]
    KD = gw.shape[2]
    RC = KD * C
    tX = (Wo + 3) // 4
    tpi = ((Ho + 3) // 4) * tX
    tiles = N * Do * tpi
    Tc = WG_CHUNK
    nch = (tiles + Tc - 1) // Tc
    nc = (RC + cc - 1) // cc
    nk = (K + mk - 1) // mk
    ccp = (cc + 2) // 3 * 3
    mkp = (mk + 3) // 4 * 4
    xf = x.reshape(x.size)
    gf = gy.reshape(gy.size)
    HW = H * W
    ps = Ho * Wo
    for it in prange(nk * nc):
        k0 = (it // nc) * mk
        k1 = min(K, k0 + mk)
        c0 = (it % nc) * cc
        c1 = min(RC, c0 + cc)
        vt = np.zeros(36 * ccp * Tc, x.dtype)  # rows past c1 / k1 stay zero
        gt = np.zeros(36 * mkp * Tc, x.dtype)
        du = np.zeros(36 * mkp * ccp, x.dtype)
        off = np.empty(Tc, np.int64)
        iz = np.empty(Tc, np.int64)
        iy = np.empty(Tc, np.int64)
        ix = np.empty(Tc, np.int64)
        goff = np.empty(Tc, np.int64)
        giz = np.empty(Tc, np.int64)
        giy = np.empty(Tc, np.int64)
        gix = np.empty(Tc, np.int64)
        for ch in range(nch):
            t0 = ch * Tc
            nb = min(Tc, tiles - t0)
            npan = (nb + NR - 1) // NR
            n = npan * NR  # the tiles past nb are zero windows: they add nothing
            _tile_geometry(t0, nb, tX, tpi, Do, C * D * HW, HW, W, loz, loy, lox, off, iz,
                           iy, ix)
            _tile_geometry(t0, nb, tX, tpi, Do, K * Do * ps, ps, Wo, 0, 0, 0, goff, giz,
                           giy, gix)
            for rc in range(c0, c1):
                kd = rc // C
                c = rc - kd * C
                for p in range(npan):
                    _in_panel(xf, c * D * HW + kd * HW, D, H, W, 6, off, iz, kd, iy, ix,
                              p * NR, min(NR, nb - p * NR), vt, (rc - c0) * Tc + p * NR,
                              ccp * Tc)
            for k in range(k0, k1):
                for p in range(npan):
                    _in_panel(gf, k * Do * ps, Do, Ho, Wo, 4, goff, giz, 0, giy, gix,
                              p * NR, min(NR, nb - p * NR), gt, (k - k0) * Tc + p * NR,
                              mkp * Tc)
            for xi in range(36):
                gb = xi * mkp * Tc
                vb = xi * ccp * Tc
                for kq in range(0, k1 - k0, 4):
                    a0 = gb + kq * Tc
                    for cq in range(0, c1 - c0, 3):
                        b0 = vb + cq * Tc
                        _dot43(gt, a0, a0 + Tc, a0 + 2 * Tc, a0 + 3 * Tc, vt, b0, b0 + Tc,
                               b0 + 2 * Tc, n, du, (xi * mkp + kq) * ccp + cq, ccp)
        # gw = G^T dL/dU G, in float64
        for k in range(k0, k1):
            for rc in range(c0, c1):
                kd = rc // C
                c = rc - kd * C
                z = mkp * ccp
                e = ((k - k0) * ccp) + (rc - c0)
                # h_a = (dU G)[a] (dU[a][s] at e + (a*6 + s) * z)
                h0 = _gt6(du, e, z)
                h1 = _gt6(du, e + 6 * z, z)
                h2 = _gt6(du, e + 12 * z, z)
                h3 = _gt6(du, e + 18 * z, z)
                h4 = _gt6(du, e + 24 * z, z)
                h5 = _gt6(du, e + 30 * z, z)
                for t in range(3):
                    o = _gt(h0[t], h1[t], h2[t], h3[t], h4[t], h5[t])
                    gw[k, c, kd, 0, t] = o[0]
                    gw[k, c, kd, 1, t] = o[1]
                    gw[k, c, kd, 2, t] = o[2]
