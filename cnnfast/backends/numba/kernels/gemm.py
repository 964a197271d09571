"""Product ("gemm") kernels: im2col + a register-blocked MR x NR product.

* ``correlate_wide`` (stride 1): im2col of a tile of "wide" output rows over a
  zero-padded input (``pad_input``), where every panel row is one contiguous
  copy, then the register-blocked product (``_micro``: MR x NR accumulators in
  registers). 1x1 convolutions take this path with no padding and no waste: a
  plain product of the packed input.
* ``correlate_gemm`` (any stride): the same product after a general im2col.
* ``weight_grad_gemm``: the weight gradient as products over pixel tiles, one
  task per chunk of weight columns (``_micro_t``).

The weight is packed once per call (``pack_weight``); ``pick_tile`` sizes the
im2col tile. Every task owns a disjoint block of the output and sums in a fixed
order that does not depend on the task split (see ``cnnfast.backends.numba.kernels``).
"""

from __future__ import annotations

import numpy as np
from numba import carray, njit, prange, types, uint64
from numba.core import cgutils
from numba.extending import intrinsic

from . import JIT
from .common import copy_strided, copy_strided2, fill, fill_strided, span

# Register tile of the product: MR output channels x NR output pixels. 4 x 32
# accumulators are 8 AVX-512 (16 AVX2) float32 registers; measured best here.
MR = 4
NR = 32


@intrinsic
def _stack_tile(typingctx, dtype):
    """A pointer to MR*NR elements on the stack. Heap arrays (np.empty) cannot be
    kept in registers by LLVM; a fixed-size alloca can (3x faster measured)."""
    def codegen(context, builder, signature, args):
        ty = context.get_value_type(dtype.dtype)
        return cgutils.alloca_once(builder, ty,
                                   size=context.get_constant(types.intp, MR * NR))
    return types.CPointer(dtype.dtype)(dtype), codegen



# ----------------------------------------------------------------------------- correlation


def pick_tile(k, positions):
    """Output pixels per im2col tile for a reduction of length ``k``: the tile
    (k x PT, at most ~512 KB of float32) stays in L2 while every block of MR output
    channels sweeps it; a small image is taken whole (one task, no ragged tile)."""
    cap = min(max((131072 // max(k, 1)) // NR * NR, NR), 256)
    whole = (positions + NR - 1) // NR * NR
    return int(whole if whole <= cap else cap)


@njit(cache=True, fastmath=JIT["fastmath"], error_model="numpy")
def _micro(cp, wp, g, ob, K, tile):
    """``tile[i, j] = sum_k wp[g, ob, k, i] * cp[k, j]`` for one MR x NR tile;
    ``cp`` is one packed panel (K, NR) of the im2col buffer.

    The accumulators live on the stack and are only ever indexed with constants
    (the loops below have fixed trip counts), so LLVM keeps them in registers.
    Every index is a plain range variable: numba's negative-index wraparound on
    an offset index (``j0 + j``) would block vectorisation, hence the panels.
    """
    acc = carray(_stack_tile(cp.dtype), (MR, NR))
    for i in range(MR):
        for j in range(NR):
            acc[i, j] = 0
    for k in range(K):
        a0 = wp[g, ob, k, 0]
        a1 = wp[g, ob, k, 1]
        a2 = wp[g, ob, k, 2]
        a3 = wp[g, ob, k, 3]
        for j in range(NR):
            v = cp[k, j]
            acc[0, j] += a0 * v
            acc[1, j] += a1 * v
            acc[2, j] += a2 * v
            acc[3, j] += a3 * v
    for i in range(MR):
        for j in range(NR):
            tile[i, j] = acc[i, j]


@njit(cache=True, fastmath=JIT["fastmath"], error_model="numpy")
def _im2col(xf, x_shape, n, c0, CG, kshape, out_shape, stride, pad, dil, p0, pn, cf, K,
            spans):
    """Fill the panels ``cf`` (flat (PT/NR, K, NR)): element ``[j // NR, k, j % NR]``
    is the input value tap ``k`` = (c, kd, kh, kw) reads for output pixel ``p0 + j``,
    0 in the padding and past ``pn``. ``spans[kw]`` = the valid output columns of
    tap kw. ``xf`` is the input, flat (no views in loops: see ``common``).

    Work is split into segments (one output row within one panel) so that the
    per-segment index arithmetic is paid once for all K taps.
    """
    C, D, H, W = x_shape[1], x_shape[2], x_shape[3], x_shape[4]
    KD, KH, KW = kshape
    OD, OH, OW = out_shape
    sd, sh, sw = stride
    pd, ph, pw = pad
    dd, dh, dw = dil
    npan = (pn + NR - 1) // NR
    tail = pn - (npan - 1) * NR
    if tail < NR:  # zero the tail of the last panel
        for k in range(K):
            fill(cf, ((npan - 1) * K + k) * NR + tail, NR - tail, 0)
    j = 0
    while j < pn:
        p = p0 + j
        ow0 = p % OW
        r = p // OW
        oh = r % OH
        od = r // OH
        jb = j // NR
        jj = j - jb * NR
        seg = min(OW - ow0, NR - jj, pn - j)
        k = 0
        for c in range(CG):
            for kd in range(KD):
                idd = od * sd - pd + kd * dd
                for kh in range(KH):
                    ih = oh * sh - ph + kh * dh
                    inside = 0 <= idd < D and 0 <= ih < H
                    xrow = (((n * C + c0 + c) * D + idd) * H + ih) * W
                    for kw in range(KW):
                        d0 = (jb * K + k) * NR + jj
                        if not inside:
                            fill(cf, d0, seg, 0)
                        else:
                            lo = min(max(spans[kw, 0] - ow0, 0), seg)
                            hi = max(min(spans[kw, 1] - ow0, seg), lo)
                            fill(cf, d0, lo, 0)
                            if hi > lo:
                                copy_strided(cf, d0 + lo, xf,
                                             xrow + (ow0 + lo) * sw + kw * dw - pw, sw,
                                             hi - lo)
                            fill(cf, d0 + hi, seg - hi, 0)
                        k += 1
        j += seg


@njit(**JIT)
def correlate_gemm(x, wp, b, y, kshape, stride, pad, dil, groups, PT, nthreads):
    """Correlation as tiled products: task = (n, group, tile of PT output pixels).

    ``wp`` is the weight packed as (G, ceil(OG/MR), K, MR) (zero rows past OG):
    the MR values one reduction step needs sit together. Each task im2col's its
    tile into a private buffer of NR-wide panels, then sweeps every block of MR
    output channels over it.
    """
    N, C = x.shape[0], x.shape[1]
    O = y.shape[1]
    OD, OH, OW = y.shape[2], y.shape[3], y.shape[4]
    KD, KH, KW = kshape
    CG = C // groups
    OG = O // groups
    K = CG * KD * KH * KW
    OGB = wp.shape[1]
    P = OD * OH * OW
    ntile = (P + PT - 1) // PT
    yf = y.reshape(y.size)
    xf = x.reshape(x.size)
    spans = np.empty((KW, 2), np.int64)
    for kw in range(KW):
        lo, hi = span(OW, stride[2], kw * dil[2] - pad[2], x.shape[4])
        spans[kw, 0] = lo
        spans[kw, 1] = hi
    ntask = N * groups * ntile
    # Tasks run in chunks so that a chunk allocates its buffers once (a fresh
    # ~100 KB buffer per task costs page faults); each task is computed the same
    # way whatever its chunk, so the split does not change any result.
    nchunk = min(ntask, 4 * nthreads)
    for chunk in prange(nchunk):
        col = np.empty((PT // NR, K, NR), x.dtype)
        colf = col.reshape(col.size)
        acc = np.empty((MR, NR), x.dtype)
        accf = acc.reshape(MR * NR)
        for task in range(chunk * ntask // nchunk, (chunk + 1) * ntask // nchunk):
            tile = task % ntile
            r = task // ntile
            g = r % groups
            n = r // groups
            p0 = tile * PT
            pn = min(PT, P - p0)
            npan = (pn + NR - 1) // NR
            _im2col(xf, x.shape, n, g * CG, CG, kshape, (OD, OH, OW), stride, pad, dil,
                    p0, pn, colf, K, spans)
            for ob in range(OGB):
                for jb in range(npan):
                    _micro(col[jb], wp, g, ob, K, acc)
                    j0 = jb * NR
                    cols = min(NR, pn - j0)
                    for i in range(min(MR, OG - ob * MR)):
                        o = g * OG + ob * MR + i
                        bv = b[o]
                        y0 = uint64((n * O + o) * P + p0 + j0)
                        a0 = uint64(i * NR)
                        for j in range(uint64(cols)):
                            yf[y0 + j] = accf[a0 + j] + bv


@njit(**JIT)
def pad_input(x, xp, pad):
    """``xp[n, c, u, v, w] = x[n, c, u - pd, v - ph, w - pw]`` inside ``x``, else 0
    (a negative pad crops). One task per (n, c, depth slice)."""
    N, C, D, H, W = x.shape
    Dp, Hp, Wp = xp.shape[2], xp.shape[3], xp.shape[4]
    pd, ph, pw = pad
    lo, hi = span(Wp, 1, -pw, W)
    for task in prange(N * C * Dp):
        u = task % Dp
        r = task // Dp
        c = r % C
        n = r // C
        for v in range(Hp):
            row = xp[n, c, u, v]
            iu = u - pd
            iv = v - ph
            if iu < 0 or iu >= D or iv < 0 or iv >= H:
                for t in range(Wp):
                    row[t] = 0
                continue
            for t in range(lo):
                row[t] = 0
            src = x[n, c, iu, iv, lo - pw:]
            dst = row[lo:]
            for t in range(hi - lo):
                dst[t] = src[t]
            for t in range(hi, Wp):
                row[t] = 0


@njit(**JIT)
def correlate_wide(xp, wp, b, y, kshape, dil, groups, PT, nthreads, nr_runtime):
    """Stride-1 correlation of a zero-padded input ``xp`` as tiled products.

    The output is computed over "wide" rows as long as ``xp``'s rows: for wide
    position ``q = (od*Hp + oh)*Wp + ow`` every tap reads ``xp``'s flat plane at
    ``q + offset(tap)``, so an im2col panel row is one contiguous copy (no
    per-row index arithmetic). Positions with ``ow >= OW`` or ``oh >= OH`` are
    computed and dropped (waste ``Wp/OW``, chosen by the caller).
    ``nr_runtime`` is NR, passed at run time on purpose (see the copy loop).
    """
    N, C, Dp, Hp, Wp = xp.shape
    O = y.shape[1]
    OD, OH, OW = y.shape[2], y.shape[3], y.shape[4]
    KD, KH, KW = kshape
    dd, dh, dw = dil
    CG = C // groups
    OG = O // groups
    T = KD * KH * KW
    K = CG * T
    OGB = wp.shape[1]
    plane = Dp * Hp * Wp
    Qn = ((OD - 1) * Hp + OH) * Wp
    ntile = (Qn + PT - 1) // PT
    xflat = xp.reshape(xp.size)
    yflat = y.reshape(y.size)
    unr = uint64(nr_runtime)
    offs = np.empty(T, np.int64)
    t = 0
    for kd in range(KD):
        for kh in range(KH):
            for kw in range(KW):
                offs[t] = (kd * dd * Hp + kh * dh) * Wp + kw * dw
                t += 1
    ntask = N * groups * ntile
    # Chunks allocate their buffers once; results do not depend on the split.
    nchunk = min(ntask, 4 * nthreads)
    for chunk in prange(nchunk):
        col = np.empty((PT // NR, K, NR), xp.dtype)
        acc = np.empty((MR, NR), xp.dtype)
        accf = acc.reshape(MR * NR)
        for task in range(chunk * ntask // nchunk, (chunk + 1) * ntask // nchunk):
            tile = task % ntile
            r = task // ntile
            g = r % groups
            n = r // groups
            q0 = tile * PT
            qn = min(PT, Qn - q0)
            npan = (qn + NR - 1) // NR
            # Flat, unsigned indices and a runtime trip count: no array views
            # (each costs atomic reference counting), no wraparound selects, no
            # full unrolling into scalar code (LLVM cannot prove that col and xf
            # do not overlap) -- 3x faster than the obvious loop (measured).
            cf = col.reshape(col.size)
            for jb in range(npan):
                qs = q0 + jb * NR
                k = 0
                for c in range(CG):
                    sbase = (n * C + g * CG + c) * plane
                    for t in range(T):
                        st = qs + offs[t]
                        d0 = uint64((jb * K + k) * NR)
                        if st + NR <= plane:
                            s0 = uint64(sbase + st)
                            for j in range(unr):
                                cf[d0 + j] = xflat[s0 + j]
                        else:  # past the plane: only dropped positions read here
                            for j in range(NR):
                                cf[d0 + uint64(j)] = (xflat[sbase + st + j]
                                                      if st + j < plane else 0)
                        k += 1
            for ob in range(OGB):
                rows = min(MR, OG - ob * MR)
                for jb in range(npan):
                    _micro(col[jb], wp, g, ob, K, acc)
                    qs = q0 + jb * NR
                    cols = min(NR, qn - jb * NR)
                    j = 0
                    while j < cols:
                        q = qs + j
                        ow = q % Wp
                        rr = q // Wp
                        oh = rr % Hp
                        od = rr // Hp
                        seg = min(Wp - ow, cols - j)
                        if oh < OH and ow < OW:
                            m = uint64(min(seg, OW - ow))
                            for i in range(rows):
                                o = g * OG + ob * MR + i
                                bv = b[o]
                                y0 = uint64((((n * O + o) * OD + od) * OH + oh) * OW + ow)
                                a0 = uint64(i * NR + j)
                                for u in range(m):
                                    yflat[y0 + u] = accf[a0 + u] + bv
                        j += seg


def pack_weight(w, groups, dtype):
    """(O, CG, *k) -> (G, ceil(OG/MR), K, MR), zero rows past OG (a small copy)."""
    o = w.shape[0]
    og = o // groups
    k = int(np.prod(w.shape[1:]))
    ogb = (og + MR - 1) // MR
    wp = np.zeros((groups, ogb * MR, k), dtype)
    wp[:, :og] = w.reshape(groups, og, k)
    return np.ascontiguousarray(wp.reshape(groups, ogb, MR, k).transpose(0, 1, 3, 2))


# ----------------------------------------------------------------------------- gradients


@njit(cache=True, fastmath=JIT["fastmath"], error_model="numpy")
def _micro_t(cp, ap, K, tile):
    """``tile[i, j] = sum_k ap[k, i] * cp[k, j]`` (k < K) for one MR x NR tile:
    ``_micro`` with the left operand as a plain (K', MR) array."""
    acc = carray(_stack_tile(cp.dtype), (MR, NR))
    for i in range(MR):
        for j in range(NR):
            acc[i, j] = 0
    for k in range(K):
        a0 = ap[k, 0]
        a1 = ap[k, 1]
        a2 = ap[k, 2]
        a3 = ap[k, 3]
        for j in range(NR):
            v = cp[k, j]
            acc[0, j] += a0 * v
            acc[1, j] += a1 * v
            acc[2, j] += a2 * v
            acc[3, j] += a3 * v
    for i in range(MR):
        for j in range(NR):
            tile[i, j] = acc[i, j]


@njit(**JIT)
def weight_grad_gemm(a, bg, gw, kshape, stride, pad, dil, groups, PT, nthreads):
    """``weight_grad`` as tiled products, for groups with enough output channels.

    ``gw`` is written as (G, ceil(OG/MR)*MR, ceil(K/NR)*NR) (padded; the caller
    crops): ``gw[g, o, k] = sum_{n, q} bg[n, g*OG + o, q] * col[n, k, q]`` where
    ``col`` is the im2col of ``a``. Task = (group, chunk of NR-wide k panels); it
    loops over every image and pixel tile in a fixed order, packing the pixels x
    k panel of ``col`` (transposed) and the pixels x MR panels of ``bg`` into
    private buffers, so each weight element is one fixed-order sum whatever the
    thread count.
    """
    N, C = a.shape[0], a.shape[1]
    O = bg.shape[1]
    OD, OH, OW = bg.shape[2], bg.shape[3], bg.shape[4]
    KD, KH, KW = kshape
    sd, sh, sw = stride
    pd, ph, pw = pad
    dd, dh, dw = dil
    D, H, W = a.shape[2], a.shape[3], a.shape[4]
    CG = C // groups
    OG = O // groups
    T = KD * KH * KW
    K = CG * T
    OGB = (OG + MR - 1) // MR
    NP = (K + NR - 1) // NR
    P = OD * OH * OW
    ntile = (P + PT - 1) // PT
    af = a.reshape(a.size)
    bf = bg.reshape(bg.size)
    spans = np.empty((KW, 2), np.int64)
    for kw in range(KW):
        lo, hi = span(OW, sw, kw * dw - pw, W)
        spans[kw, 0] = lo
        spans[kw, 1] = hi
    nkc = min(NP, max(1, (4 * nthreads + groups - 1) // groups))
    for task in prange(groups * nkc):
        kc = task % nkc
        g = task // nkc
        kp0 = kc * NP // nkc
        kp1 = (kc + 1) * NP // nkc
        npk = kp1 - kp0
        cpt = np.zeros((npk, PT, NR), a.dtype)  # zeros: k past K stays 0
        cptf = cpt.reshape(cpt.size)
        apk = np.zeros((OGB, PT, MR), a.dtype)  # zeros: o past OG stays 0
        apkf = apk.reshape(apk.size)
        gacc = np.zeros((OGB, npk, MR, NR), a.dtype)
        acc = np.empty((MR, NR), a.dtype)
        for n in range(N):
            for tile in range(ntile):
                p0 = tile * PT
                pn = min(PT, P - p0)
                # bg panels: apk[ob, q, i] = bg[n, g*OG + ob*MR + i, p0 + q]
                for o in range(OG):
                    ob = o // MR
                    copy_strided2(apkf, (ob * PT) * MR + (o - ob * MR), MR, bf,
                                  (n * O + g * OG + o) * P + p0, 1, pn)
                # col panels, transposed: cpt[kp, q, kk] = col[k = (kp0+kp)*NR + kk, p0 + q]
                for kp in range(npk):
                    for kk in range(NR):
                        k = (kp0 + kp) * NR + kk
                        if k >= K:
                            break
                        c = k // T
                        t = k - c * T
                        kd = t // (KH * KW)
                        kh = (t // KW) % KH
                        kw = t % KW
                        lo_w = spans[kw, 0]
                        hi_w = spans[kw, 1]
                        cbase = (n * C + g * CG + c) * D
                        dbase = kp * PT * NR + kk
                        j = 0
                        while j < pn:
                            p = p0 + j
                            ow0 = p % OW
                            r = p // OW
                            oh = r % OH
                            od = r // OH
                            seg = min(OW - ow0, pn - j)
                            idd = od * sd - pd + kd * dd
                            ih = oh * sh - ph + kh * dh
                            d0 = dbase + j * NR
                            if 0 <= idd < D and 0 <= ih < H:
                                lo = min(max(lo_w - ow0, 0), seg)
                                hi = max(min(hi_w - ow0, seg), lo)
                                fill_strided(cptf, d0, NR, lo, 0)
                                if hi > lo:
                                    copy_strided2(cptf, d0 + lo * NR, NR, af,
                                                  ((cbase + idd) * H + ih) * W
                                                  + (ow0 + lo) * sw + kw * dw - pw, sw,
                                                  hi - lo)
                                fill_strided(cptf, d0 + hi * NR, NR, seg - hi, 0)
                            else:
                                fill_strided(cptf, d0, NR, seg, 0)
                            j += seg
                for ob in range(OGB):
                    for kp in range(npk):
                        _micro_t(cpt[kp], apk[ob], pn, acc)
                        ga = gacc[ob, kp]
                        for i in range(MR):
                            for jj in range(NR):
                                ga[i, jj] += acc[i, jj]
        for ob in range(OGB):
            for kp in range(npk):
                for i in range(MR):
                    for jj in range(NR):
                        gw[g, ob * MR + i, (kp0 + kp) * NR + jj] = gacc[ob, kp, i, jj]

