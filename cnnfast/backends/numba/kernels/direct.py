"""Direct kernels: fixed-order sums with no product, for depthwise-like cases.

* ``correlate_direct``: grouped correlation (output row innermost) when a group
  has fewer than MR output channels, where a product has nothing to reuse;
  ``correlate_dw3x3``: its depthwise 3x3 stride-1 case, each output's taps summed
  in registers.
* ``correlate_t``: the adjoint of correlation with respect to ``x`` for any
  stride, written so that every task owns whole output rows and gathers every
  (input channel, tap) contribution into them.
* ``weight_grad``: one fixed-order sum per (o, c) pair (depthwise);
  ``weight_grad_planes``: the same for stride 1 as whole-plane dot products
  (padded input plane, "wide" gradient rows); ``bias_grad``: one task per channel.

See ``cnnfast.backends.numba.kernels`` for the algebra and the determinism rules.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange, uint64

from . import JIT
from .common import ROW, axpy, axpy4, copy_strided, fill, mul_add, scatter_axpy, span
from .epilogue import activate

# Output channels computed together by the direct kernel.
OB = 4
# Elements of output rows per tile of the direct kernel (16 KB of float32): the
# tile stays in L1 while the (input channel, tap) loop sweeps over it.
TILE_ELEMS = 4096
# Task chunks of correlate_dw3x3 (each allocates its padded-plane buffer once).
DW_CHUNKS = 64


@njit(**JIT)
def correlate_direct(x, w, b, y, stride, pad, dil, groups, act, slope):
    """Direct grouped correlation, ``y`` (N, O, OD, OH, OW) written in full, each
    tile of rows passed through the activation ``act`` (``epilogue``) once summed.

    For depthwise-like convolutions (few output channels per group), where an
    im2col product would have nothing to reuse. Task = (n, group, block of OB
    output channels, output depth slice). The innermost loop runs along an output
    row and feeds OB accumulator rows from one input load; rows are tiled so the
    tile stays in L1 while the (input channel, tap) loop sweeps over it.
    """
    N, C, D, H, W = x.shape
    O, CG, KD, KH, KW = w.shape
    OD, OH, OW = y.shape[2], y.shape[3], y.shape[4]
    sd, sh, sw = stride
    pd, ph, pw = pad
    dd, dh, dw = dil
    OG = O // groups
    NB = (OG + OB - 1) // OB
    xf = x.reshape(x.size)
    yf = y.reshape(y.size)
    ych = OD * OH * OW  # distance between output channels in yf
    for task in prange(N * groups * NB * OD):
        od = task % OD
        r = task // OD
        ob = r % NB
        r //= NB
        g = r % groups
        n = r // groups
        o0 = g * OG + ob * OB
        nb = min(OB, OG - ob * OB)
        ybase = ((n * O + o0) * OD + od) * OH * OW
        for i in range(nb):
            fill(yf, ybase + i * ych, OH * OW, b[o0 + i])
        th = max(1, TILE_ELEMS // (nb * OW))
        for oh0 in range(0, OH, th):
            oh1 = min(oh0 + th, OH)
            for c in range(CG):
                ci = g * CG + c
                for kd in range(KD):
                    idd = od * sd - pd + kd * dd
                    if idd < 0 or idd >= D:
                        continue
                    xplane = ((n * C + ci) * D + idd) * H
                    for kh in range(KH):
                        offh = kh * dh - ph
                        lo_h, hi_h = span(OH, sh, offh, H)
                        lo_h = max(lo_h, oh0)
                        hi_h = min(hi_h, oh1)
                        for kw in range(KW):
                            offw = kw * dw - pw
                            lo_w, hi_w = span(OW, sw, offw, W)
                            m = hi_w - lo_w
                            if m <= 0:
                                continue
                            start = lo_w * sw + offw
                            if nb == OB:
                                w0 = w[o0, c, kd, kh, kw]
                                w1 = w[o0 + 1, c, kd, kh, kw]
                                w2 = w[o0 + 2, c, kd, kh, kw]
                                w3 = w[o0 + 3, c, kd, kh, kw]
                                for oh in range(lo_h, hi_h):
                                    axpy4(yf, ybase + oh * OW + lo_w, ych, xf,
                                          (xplane + oh * sh + offh) * W + start, sw, m,
                                          w0, w1, w2, w3)
                            else:
                                for i in range(nb):
                                    wv = w[o0 + i, c, kd, kh, kw]
                                    for oh in range(lo_h, hi_h):
                                        axpy(yf, ybase + i * ych + oh * OW + lo_w, xf,
                                             (xplane + oh * sh + offh) * W + start, sw, m,
                                             wv)
            # the tile is final (and still in L1): the fused activation
            for i in range(nb):
                activate(yf, ybase + i * ych + oh0 * OW, (oh1 - oh0) * OW, act, slope)


@njit(**ROW)
def _dw3_row(yf, yo, xf, r0, r1, r2, m, b, wt):
    """``yf[yo + t] = b + the 9 taps`` for t < m, the three input rows starting at
    r0, r1, r2 (all taps inside): the sum in registers, one store per output."""
    y0 = uint64(yo)
    p0 = uint64(r0)
    p1 = uint64(r1)
    p2 = uint64(r2)
    one = uint64(1)
    two = uint64(2)
    w00, w01, w02, w10, w11, w12, w20, w21, w22 = wt
    for t in range(uint64(m)):
        yf[y0 + t] = (b + w00 * xf[p0 + t] + w01 * xf[p0 + t + one] + w02 * xf[p0 + t + two]
                      + w10 * xf[p1 + t] + w11 * xf[p1 + t + one] + w12 * xf[p1 + t + two]
                      + w20 * xf[p2 + t] + w21 * xf[p2 + t + one] + w22 * xf[p2 + t + two])


@njit(**ROW)
def _dw3_pad_row(pf, d, xf, xb, H, W, ih, pw, Wp):
    """``pf[d:d+Wp]`` = row ih of the input plane at xf[xb] (H x W) seen from column
    -pw, zero outside the plane."""
    zero = pf.dtype.type(0)
    lo = min(max(pw, 0), Wp) if 0 <= ih < H else Wp  # columns before the plane's first
    hi = max(min(W + pw, Wp), lo)                      # ... and after its last
    fill(pf, d, lo, zero)
    copy_strided(pf, d + lo, xf, xb + ih * W + lo - pw, 1, hi - lo)
    fill(pf, d + hi, Wp - hi, zero)


@njit(**JIT)
def correlate_dw3x3(x, w, b, y, pad, act, slope):
    """Depthwise 3x3 correlation, stride 1, no dilation: ``x`` (N, C, 1, H, W), ``w``
    (O, 1, 1, 3, 3) with O a multiple of C (output o reads input channel o // (O/C)),
    ``y`` (N, O, 1, OH, OW) written in full, then the activation ``act``.

    The 9 taps of an output summed in registers (``_dw3_row``, vectorised along the
    row), not 9 passes of a row over y as ``correlate_direct`` makes. Taps are added
    in (ky, kx) order after the bias, as ``correlate_direct`` does. With padding, the
    input rows are copied into a zero-bordered plane buffer, each just before the
    first output row that reads it: a padding tap adds w * 0, as in the numpy
    reference and torch (inf or NaN weights give NaN there; finite ones change no
    sum). Scalar code for the edge outputs instead ran the suite's layer 1.5x slower
    (3.65 vs 2.45 ms, 1 thread). Task = (n, output channel), in chunks that each
    allocate one plane buffer.
    """
    N, C, _, H, W = x.shape
    O = w.shape[0]
    OH, OW = y.shape[3], y.shape[4]
    OG = O // C
    ph, pw = pad[1], pad[2]
    xf = x.reshape(x.size)
    yf = y.reshape(y.size)
    wf = w.reshape(w.size)
    # every tap inside the input: rows -ph .. OH + 1 - ph, columns -pw .. OW + 1 - pw
    inside = ph <= 0 and pw <= 0 and OH + 2 - ph <= H and OW + 2 - pw <= W
    Hp, Wp = OH + 2, OW + 2
    # tasks in chunks, one padded-plane buffer per chunk
    ntask = N * O
    nchunk = min(ntask, DW_CHUNKS)
    for ch in prange(nchunk):
        pf = np.empty(0 if inside else Hp * Wp, dtype=x.dtype)
        for task in range(ch * ntask // nchunk, (ch + 1) * ntask // nchunk):
            o = task % O
            n = task // O
            xb = (n * C + o // OG) * H * W
            yb = task * OH * OW
            t9 = 9 * o
            wt = (wf[t9], wf[t9 + 1], wf[t9 + 2], wf[t9 + 3], wf[t9 + 4], wf[t9 + 5],
                  wf[t9 + 6], wf[t9 + 7], wf[t9 + 8])
            bo = b[o]
            if inside:
                r0 = xb - ph * W - pw
                for oh in range(OH):
                    r = r0 + oh * W
                    _dw3_row(yf, yb + oh * OW, xf, r, r + W, r + 2 * W, OW, bo, wt)
                    activate(yf, yb + oh * OW, OW, act, slope)
                continue
            # each padded row copied just before the output row that first reads it:
            # the input's reads from memory overlap the sums
            _dw3_pad_row(pf, 0, xf, xb, H, W, -ph, pw, Wp)
            _dw3_pad_row(pf, Wp, xf, xb, H, W, 1 - ph, pw, Wp)
            for oh in range(OH):
                r = oh * Wp
                _dw3_pad_row(pf, r + 2 * Wp, xf, xb, H, W, oh + 2 - ph, pw, Wp)
                _dw3_row(yf, yb + oh * OW, pf, r, r + Wp, r + 2 * Wp, OW, bo, wt)
                activate(yf, yb + oh * OW, OW, act, slope)


# ----------------------------------------------------------------------------- adjoint


@njit(**JIT)
def correlate_t(x, w, b, y, stride, pad, dil, groups, act, slope):
    """Transposed correlation: ``x`` (N, Ci, ID, IH, IW), ``w`` (Ci, OG, *k) in
    transposed-conv layout, ``y`` (N, G*OG, OD, OH, OW) written in full, with
    ``y[n, g*OG + o, i*s - p + t*d] += x[n, g*CG + c, i] * w[g*CG + c, o, t]``, then
    the activation ``act`` (``epilogue``).

    Task = (n, output channel, output depth slice): it owns those output rows and
    gathers every (input channel, tap) that lands in them, in a fixed order.
    """
    N, Ci, ID, IH, IW = x.shape
    OG, KD, KH, KW = w.shape[1], w.shape[2], w.shape[3], w.shape[4]
    O, OD, OH, OW = y.shape[1], y.shape[2], y.shape[3], y.shape[4]
    sd, sh, sw = stride
    pd, ph, pw = pad
    dd, dh, dw = dil
    CG = Ci // groups
    xf = x.reshape(x.size)
    yf = y.reshape(y.size)
    for task in prange(N * O * OD):
        od = task % OD
        r = task // OD
        o = r % O
        n = r // O
        g = o // OG
        oo = o - g * OG
        ybase = ((n * O + o) * OD + od) * OH
        fill(yf, ybase * OW, OH * OW, b[o])
        for c in range(CG):
            ci = g * CG + c
            for kd in range(KD):
                # the input depth i with i*sd - pd + kd*dd == od, if any
                num = od + pd - kd * dd
                if num < 0 or num % sd != 0 or num // sd >= ID:
                    continue
                xplane = ((n * Ci + ci) * ID + num // sd) * IH
                for kh in range(KH):
                    offh = kh * dh - ph
                    lo_h, hi_h = span(IH, sh, offh, OH)
                    for kw in range(KW):
                        offw = kw * dw - pw
                        lo_w, hi_w = span(IW, sw, offw, OW)
                        m = hi_w - lo_w
                        if m <= 0:
                            continue
                        start = lo_w * sw + offw
                        wv = w[ci, oo, kd, kh, kw]
                        for ih in range(lo_h, hi_h):
                            scatter_axpy(yf, (ybase + ih * sh + offh) * OW + start, sw, m,
                                         wv, xf, (xplane + ih) * IW + lo_w)
        activate(yf, ybase * OW, OH * OW, act, slope)


# ----------------------------------------------------------------------------- gradients


@njit(**JIT)
def weight_grad(a, bg, gw, stride, pad, dil, groups):
    """``gw[o, c, t] = sum_{n, q} bg[n, o, q] * a[n, g*CG + c, q*s - p + t*d]``.

    ``a`` (N, C, *in), ``bg`` (N, O, *out), ``gw`` (O, CG, *k). For depthwise-like
    cases. Task = one (o, c) pair. Each tap accumulates elementwise products into
    its own row of partial sums (a vector loop with no per-row horizontal sum;
    one ``bg`` row feeds all KW taps while in L1), summed once at the end, in a
    fixed order.
    """
    N, C, D, H, W = a.shape
    O, OD, OH, OW = bg.shape[1], bg.shape[2], bg.shape[3], bg.shape[4]
    CG, KD, KH, KW = gw.shape[1], gw.shape[2], gw.shape[3], gw.shape[4]
    sd, sh, sw = stride
    pd, ph, pw = pad
    dd, dh, dw = dil
    OG = O // groups
    T = KD * KH * KW
    af = a.reshape(a.size)
    bf = bg.reshape(bg.size)
    gwf = gw.reshape(gw.size)
    spans = np.empty((KW, 2), np.int64)
    for kw in range(KW):
        lo, hi = span(OW, sw, kw * dw - pw, W)
        spans[kw, 0] = lo
        spans[kw, 1] = hi
    for task in prange(O * CG):
        c = task % CG
        o = task // CG
        ci = (o // OG) * CG + c
        part = np.zeros(T * OW, gw.dtype)
        for n in range(N):
            for kd in range(KD):
                offd = kd * dd - pd
                lo_d, hi_d = span(OD, sd, offd, D)
                for od in range(lo_d, hi_d):
                    arow = ((n * C + ci) * D + od * sd + offd) * H
                    brow = ((n * O + o) * OD + od) * OH
                    for kh in range(KH):
                        offh = kh * dh - ph
                        lo_h, hi_h = span(OH, sh, offh, H)
                        for oh in range(lo_h, hi_h):
                            b0 = (brow + oh) * OW
                            a0 = (arow + oh * sh + offh) * W
                            for kw in range(KW):
                                lo_w = spans[kw, 0]
                                m = spans[kw, 1] - lo_w
                                if m > 0:
                                    t = (kd * KH + kh) * KW + kw
                                    mul_add(part, t * OW + lo_w, bf, b0 + lo_w, af,
                                            a0 + lo_w * sw + kw * dw - pw, sw, m)
        for t in range(T):
            acc = gw.dtype.type(0)
            for i in range(OW):
                acc += part[t * OW + i]
            gwf[task * T + t] = acc



@njit(**ROW)
def _dot3(bf, af, a0, a1, a2, n):
    """The dot products of ``bf[:n]`` with ``af[a_i:a_i + n]`` (i < 3): each ``bf``
    element loaded once for three products; the loop is vectorised (reassociation
    is allowed), its order fixed by the code and ``n``."""
    z = bf.dtype.type(0)
    s0 = z
    s1 = z
    s2 = z
    u0 = uint64(a0)
    u1 = uint64(a1)
    u2 = uint64(a2)
    for u in range(uint64(n)):
        v = bf[u]
        s0 += v * af[u0 + u]
        s1 += v * af[u1 + u]
        s2 += v * af[u2 + u]
    return s0, s1, s2


@njit(**JIT)
def weight_grad_planes(a, bg, gw, pad, dil, groups, ext):
    """``weight_grad`` for stride 1, as dot products over whole planes: per image,
    the input plane zero-padded to ``ext`` = (Dq, Hq, Wq) (the extent the outputs
    read, ``Dq = OD + (KD-1)*dd`` ...) and the output-gradient plane as "wide" rows
    of Wq (zeros past OW and OH), so tap ``t`` is one dot product over the plane at
    a fixed offset: no per-row edges, no per-row partial sums.

    Task = one (o, c) pair; its sums run image by image in a fixed order. A zero
    of the padding or of a wide row meets values the exact sum never reads: an inf
    or NaN there gives NaN, so the caller recomputes a non-finite result with
    ``weight_grad`` (see ``kernels.wgrad``).
    """
    N, C, D, H, W = a.shape
    O, OD, OH, OW = bg.shape[1], bg.shape[2], bg.shape[3], bg.shape[4]
    CG, KD, KH, KW = gw.shape[1], gw.shape[2], gw.shape[3], gw.shape[4]
    Dq, Hq, Wq = ext
    pd, ph, pw = pad
    dd, dh, dw = dil
    OG = O // groups
    T = KD * KH * KW
    plane = Dq * Hq * Wq
    L = ((OD - 1) * Hq + OH - 1) * Wq + OW  # wide positions of one image
    # tap offsets in the padded plane, padded to a multiple of 3 with the last
    toff = np.empty(T + 2, np.int64)
    for t in range(T):
        kw = t % KW
        kh = (t // KW) % KH
        kd = t // (KW * KH)
        toff[t] = ((kd * dd) * Hq + kh * dh) * Wq + kw * dw
    toff[T] = toff[T - 1]
    toff[T + 1] = toff[T - 1]
    lo_w, hi_w = span(Wq, 1, -pw, W)  # padded columns inside a
    af = a.reshape(a.size)
    bf = bg.reshape(bg.size)
    gwf = gw.reshape(gw.size)
    for task in prange(O * CG):
        c = task % CG
        o = task // CG
        ci = (o // OG) * CG + c
        # the zeros (padding, the wide rows' gaps) are the same for every image:
        # written once, then only the values inside are copied per image
        ap = np.zeros(plane, gw.dtype)
        bw = np.zeros(L, gw.dtype)
        acc = np.zeros(T + 2, gw.dtype)
        for n in range(N):
            for iu in range(max(0, -pd), min(D, Dq - pd)):
                for iv in range(max(0, -ph), min(H, Hq - ph)):
                    copy_strided(ap, ((iu + pd) * Hq + iv + ph) * Wq + lo_w, af,
                                 (((n * C + ci) * D + iu) * H + iv) * W + lo_w - pw, 1,
                                 hi_w - lo_w)
            for od in range(OD):
                for oh in range(OH):
                    copy_strided(bw, (od * Hq + oh) * Wq, bf,
                                 (((n * O + o) * OD + od) * OH + oh) * OW, 1, OW)
            for t0 in range(0, T, 3):
                s0, s1, s2 = _dot3(bw, ap, toff[t0], toff[t0 + 1], toff[t0 + 2], L)
                acc[t0] += s0
                acc[t0 + 1] += s1
                acc[t0 + 2] += s2
        for t in range(T):
            gwf[task * T + t] = acc[t]


@njit(**JIT)
def bias_grad(gy, gb):
    """``gb[o] = sum over n and space of gy[n, o]``; one task per channel."""
    N, O = gy.shape[0], gy.shape[1]
    P = gy.shape[2] * gy.shape[3] * gy.shape[4]
    gf = gy.reshape(gy.size)
    for o in prange(O):
        acc = gb.dtype.type(0)
        for n in range(N):
            base = uint64((n * O + o) * P)
            for p in range(uint64(P)):
                acc += gf[base + p]
        gb[o] = acc
