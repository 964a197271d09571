"""The weight gradient as products of rows ("gemm" path of the weight gradient).

``gw[o, c, t] = sum_{n, q} b[n, o, q] * a[n, g*CG + c, q*s - p + t*d]`` is, for
every (o, c, t), a dot product of an output-gradient row with an input row
shifted by the tap. The rows are made contiguous once, with no im2col:

* ``pack_phases``: the input, zero-padded and split into its stride phases
  (``aq[n, c, r, m] = a[n, c, m*s + r - p]`` per dim, ``r < s``): tap ``t`` reads
  phase ``(t*d) % s`` at offset ``(t*d) // s``, a stride-1 shift. With stride 1
  and no padding the input itself is used.
* ``pack_wide``: the output gradient as "wide" rows as long as the phase rows
  (``bw[n, o, (od*Hq + oh)*Wq + ow]``, zeros at ``ow >= OW`` and ``oh >= OH``), so
  that tap ``t`` of every position ``q`` reads the flat phase plane at
  ``q + offset(t)`` (the ``correlate_wide`` layout of the forward). The wide
  positions past the outputs pair zeros with input values; all of them stay inside
  the plane. Not needed when the rows are already as long (1x1, stride 1).
* ``weight_grad_rows``: register-blocked dot products, ``MO`` gradient rows x ``MK``
  input rows (12 accumulators, vectorised along the rows), over fixed chunks of
  positions.

Determinism: the positions of every image are cut into units of ``QC`` wide
positions, and the units into ``nchunk`` contiguous chunks, both from the shapes
alone (``plan_chunks``), never from the thread count. Each chunk (one task) sums
its units in order into its own partial ``gw``; the partials are then added in
chunk order. Every weight element is therefore the same fixed-order sum for any
thread count (see ``cnnfast.backends.numba.kernels``).

A zero times an inf or NaN input value read by a padding position would give NaN
where the reference has none: the backend checks that the result is finite and
otherwise recomputes it with the direct kernel (exact for any input).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange, uint64

from . import JIT
from .common import ROW, copy_strided, fill, span

# Register block of the dot products: MO output-gradient rows x MK input rows.
MO = 4
MK = 3
# Chunks of positions with their own partial sums: enough to spread over the
# threads (with the k slices) while keeping the partials small.
MAX_CHUNKS = 16
# Units of fewer wide positions are not cut further for equal chunks: each dot
# product's final reduction of its 12 vector accumulators pays off over a unit
# (the transposed k4s2 decoder layer's weight gradient, 272-position units at 256:
# 1.2x slower than at 512, measured).
MIN_UNIT = 512


@njit(**ROW)
def _dot43(af, a0, a1, a2, a3, bf, b0, b1, b2, n, out, e, es):
    """``out[e + i*es + j] += sum_{u < n} af[ai + u] * bf[bj + u]`` for the 4 x 3
    pairs: 12 accumulators, each input element loaded once for 3 or 4 products.
    Unsigned offsets and plain scalars: LLVM vectorises the loop (reassociation
    is allowed by the fast-math flags), and the order is fixed by the code."""
    z = af.dtype.type(0)
    s00 = z
    s01 = z
    s02 = z
    s10 = z
    s11 = z
    s12 = z
    s20 = z
    s21 = z
    s22 = z
    s30 = z
    s31 = z
    s32 = z
    u0 = uint64(a0)
    u1 = uint64(a1)
    u2 = uint64(a2)
    u3 = uint64(a3)
    v0 = uint64(b0)
    v1 = uint64(b1)
    v2 = uint64(b2)
    for u in range(uint64(n)):
        x0 = af[u0 + u]
        x1 = af[u1 + u]
        x2 = af[u2 + u]
        x3 = af[u3 + u]
        y0 = bf[v0 + u]
        y1 = bf[v1 + u]
        y2 = bf[v2 + u]
        s00 += x0 * y0
        s01 += x0 * y1
        s02 += x0 * y2
        s10 += x1 * y0
        s11 += x1 * y1
        s12 += x1 * y2
        s20 += x2 * y0
        s21 += x2 * y1
        s22 += x2 * y2
        s30 += x3 * y0
        s31 += x3 * y1
        s32 += x3 * y2
    e1 = e + es
    e2 = e1 + es
    e3 = e2 + es
    out[e] += s00
    out[e + 1] += s01
    out[e + 2] += s02
    out[e1] += s10
    out[e1 + 1] += s11
    out[e1 + 2] += s12
    out[e2] += s20
    out[e2 + 1] += s21
    out[e2 + 2] += s22
    out[e3] += s30
    out[e3 + 1] += s31
    out[e3 + 2] += s32


@njit(**JIT)
def pack_phases(a, xq, ext, strides, stride, pad):
    """``xq[c*xc + phase*xs + (md*Hq + mh)*xr + n*xn + mw] = a[n, c, md*sd + rd - pd,
    mh*sh + rh - ph, mw*sw + rw - pw]`` (phase ``(rd*sh + rh)*sw + rw``) inside
    ``a``, else 0, for ``m < (Dq, Hq, Wq) = ext`` and ``(xc, xs, xr, xn) =
    strides``: image by image, or the images' rows side by side ("stacked").
    One task per (c, phase, md)."""
    N, C, D, H, W = a.shape
    Dq, Hq, Wq = ext
    xc, xs, xr, xn = strides
    sd, sh, sw = stride
    pd, ph, pw = pad
    S = sd * sh * sw
    af = a.reshape(a.size)
    lo_w = np.empty(S, np.int64)
    hi_w = np.empty(S, np.int64)
    for phase in range(S):
        lo_w[phase], hi_w[phase] = span(Wq, sw, phase % sw - pw, W)  # columns inside a
    for task in prange(C * S * Dq):
        md = task % Dq
        r = task // Dq
        phase = r % S
        c = r // S
        rw = phase % sw
        rh = (phase // sw) % sh
        rd = phase // (sw * sh)
        dst = c * xc + phase * xs + md * Hq * xr
        idd = md * sd + rd - pd
        lo = lo_w[phase]
        hi = hi_w[phase]
        for n in range(N):  # image by image: the reads run along a's planes
            for mh in range(Hq):
                d0 = dst + mh * xr + n * xn
                ih = mh * sh + rh - ph
                if idd < 0 or idd >= D or ih < 0 or ih >= H:
                    fill(xq, d0, Wq, 0)
                    continue
                fill(xq, d0, lo, 0)
                if hi > lo:
                    copy_strided(xq, d0 + lo, af,
                                 (((n * C + c) * D + idd) * H + ih) * W + lo * sw + rw - pw,
                                 sw, hi - lo)
                fill(xq, d0 + hi, Wq - hi, 0)


@njit(**ROW)
def _fill_wide(bf, buf, QC, b_shape, Hq, Wq, nst, img, o0, OG, gu0, L):
    """``buf[o*QC + u] = b[img + n, o0 + o, od, oh, ow]`` for the wide positions
    ``gu0 + u = ((od*Hq + oh)*nst + n)*Wq + ow`` (u < L, o < OG), 0 where the
    position is not an output. One gradient row at a time, wide row by wide row."""
    O, OD, OH, OW = b_shape[1], b_shape[2], b_shape[3], b_shape[4]
    ow0 = gu0 % Wq
    r = gu0 // Wq
    n0 = r % nst
    r //= nst
    oh0 = r % Hq
    od0 = r // Hq
    for o in range(OG):
        n = n0
        od = od0
        oh = oh0
        ow = ow0
        d = o * QC
        u = 0
        while u < L:
            seg = min(Wq - ow, L - u)
            m = 0
            if od < OD and oh < OH and ow < OW:
                m = min(OW - ow, seg)
                copy_strided(buf, d + u, bf,
                             (((img + n) * O + o0 + o) * OD + od) * OH * OW + oh * OW + ow,
                             1, m)
            fill(buf, d + u + m, seg - m, 0)
            u += seg
            ow = 0
            n += 1
            if n == nst:
                n = 0
                oh += 1
                if oh == Hq:
                    oh = 0
                    od += 1


@njit(**ROW)
def _unit_dots(rows, a0, ap, xq, xg, xsc, S, toff, tphase, K, OG, og0, kb0, kb1, L, pc,
               acc):
    """One unit of ``weight_grad_rows`` for one group: ``pc[(og0 + o)*K + k] +=``
    the dot product of gradient row ``o`` (``rows`` from ``a0 + o*ap``) with input
    row ``k`` (``xq`` from ``xg + (c*S + tphase[t])*xsc + toff[t]``, ``k = c*T +
    t``), over ``L`` positions, for the k blocks ``[kb0, kb1)``: for each block of
    MK input rows (L1), every block of MO gradient rows (L2). Row indices past the
    end of a block repeat the last row (computed, dropped)."""
    T = toff.shape[0]
    for kb in range(kb0, kb1):
        k0 = kb * MK
        k1 = min(k0 + 1, K - 1)
        k2 = min(k0 + 2, K - 1)
        c = k0 // T
        t = k0 - c * T
        r0 = xg + (c * S + tphase[t]) * xsc + toff[t]
        c = k1 // T
        t = k1 - c * T
        r1 = xg + (c * S + tphase[t]) * xsc + toff[t]
        c = k2 // T
        t = k2 - c * T
        r2 = xg + (c * S + tphase[t]) * xsc + toff[t]
        nk = min(MK, K - k0)
        for o0 in range(0, OG, MO):
            e = (og0 + o0) * K + k0
            if nk == MK and o0 + MO <= OG:  # a full block: straight into pc
                _dot43(rows, a0 + o0 * ap, a0 + (o0 + 1) * ap, a0 + (o0 + 2) * ap,
                       a0 + (o0 + 3) * ap, xq, r0, r1, r2, L, pc, e, K)
                continue
            for i in range(MO * MK):
                acc[i] = 0
            _dot43(rows, a0 + o0 * ap, a0 + min(o0 + 1, OG - 1) * ap,
                   a0 + min(o0 + 2, OG - 1) * ap, a0 + min(o0 + 3, OG - 1) * ap,
                   xq, r0, r1, r2, L, acc, 0, MK)
            for i in range(min(MO, OG - o0)):
                for jj in range(nk):
                    pc[e + i * K + jj] += acc[i * MK + jj]


@njit(**JIT)
def weight_grad_rows(xq, b, gw, part, toff, tphase, geo, groups):
    """``gw[o, k]`` (flat (O, CG*T), ``k = c*T + t``) from the phase-split input
    ``xq`` (flat, ``pack_phases`` or the input itself) and the output gradient
    ``b`` (N, O, OD, OH, OW).

    ``geo`` = (S, Hq, Wq, nst, nimg, xsn, xsc, vlen, nunit, nchunk, nks, QC,
    nwork): the input row of channel ``c``, tap ``t`` for the wide positions of
    image ``img`` starts at ``img*xsn + (c*S + tphase[t])*xsc + toff[t]``; wide
    position ``((od*Hq + oh)*nst + n)*Wq + ow`` is output (od, oh, ow) of image
    ``img + n``: image by image (``nst`` 1, ``nimg`` N), or all the images in one
    row space (stacked: ``nst`` N, ``nimg`` 1). An image has ``vlen`` wide
    positions, cut into units of at most QC (``nunit`` in all) and the units into
    ``nchunk`` chunks, whose sums (``part`` (nchunk, O*K)) are added in chunk
    order at the end. Task = (chunk, slice of the k blocks: ``nks`` slices, which
    change no sum), run by ``nwork`` workers. Per unit and group: the unit's
    gradient rows, wide (copied into a private buffer that stays in L2 unless they
    are the rows of ``b`` already), then ``_unit_dots``.
    """
    S, Hq, Wq, nst, nimg, xsn, xsc, vlen, nunit, nchunk, nks, QC, nwork = geo
    O = b.shape[1]
    T = toff.shape[0]
    K = gw.shape[1]
    CG = K // T
    OG = O // groups
    NKB = (K + MK - 1) // MK
    upi = nunit // nimg  # units per image
    P = b.shape[2] * b.shape[3] * b.shape[4]
    inplace = nst == 1 and vlen == P  # the gradient rows are the wide rows: no copy
    bf = b.reshape(b.size)
    gwf = gw.reshape(gw.size)
    ntask = nchunk * nks
    # Workers run tasks in turn so that buffers are allocated once per worker (a
    # fresh buffer per task costs page faults); a task is computed the same way
    # whatever its worker.
    for wk in prange(nwork):
        buf = np.empty(0 if inplace else OG * QC, gw.dtype)
        acc = np.empty(MO * MK, gw.dtype)
        for task in range(wk * ntask // nwork, (wk + 1) * ntask // nwork):
            ks = task % nks
            ch = task // nks
            kb0 = ks * NKB // nks
            kb1 = (ks + 1) * NKB // nks
            pc = part[ch]
            for o in range(O):
                fill(pc, o * K + kb0 * MK, min(kb1 * MK, K) - kb0 * MK, 0)
            for unit in range(ch * nunit // nchunk, (ch + 1) * nunit // nchunk):
                img = unit // upi
                j = unit - img * upi
                # units start at multiples of 8: no vector tail but the image's last
                u0 = (j * vlen // upi) // 8 * 8
                L = (vlen if j == upi - 1 else ((j + 1) * vlen // upi) // 8 * 8) - u0
                for g in range(groups):
                    if inplace:
                        rows = bf
                        a0 = (img * O + g * OG) * P + u0
                        ap = P
                    else:
                        _fill_wide(bf, buf, QC, b.shape, Hq, Wq, nst, img, g * OG, OG, u0,
                                   L)
                        rows = buf
                        a0 = 0
                        ap = QC
                    _unit_dots(rows, a0, ap, xq, img * xsn + g * CG * S * xsc + u0,
                               xsc, S, toff, tphase, K, OG, g * OG, kb0, kb1, L, pc, acc)
    # The chunks' sums in chunk order, blocks of elements per task.
    ne = O * K
    nblk = (ne + 511) // 512
    for blk in prange(nblk):
        e0 = blk * 512
        e1 = min(e0 + 512, ne)
        for e in range(e0, e1):
            gwf[e] = part[0, e]
        for ch in range(1, nchunk):
            for e in range(e0, e1):
                gwf[e] += part[ch, e]


def plan(vlen, nimg, og, k, o, itemsize, threads):
    """(QC, nunit, nchunk, nks, nwork) of ``weight_grad_rows``; the first three
    (which fix every sum) from the shapes only, never from ``threads``.

    A unit's gradient rows (``og`` x QC) stay in L2 (~512 KB); units are equal
    cuts of each image's ``vlen`` wide positions, as many as make ``MAX_CHUNKS``
    chunks of equal size if they stay long enough; the chunks' partial sums
    (nchunk x ``o*k``) stay under ~32 MB. Tasks: at least 4 per thread when there
    are k blocks enough to slice, a multiple of the thread count if possible."""
    qc_max = min(max((524288 // itemsize) // max(og, 1), 512), 2048)
    upi = -(-vlen // qc_max)
    step = MAX_CHUNKS // math.gcd(nimg, MAX_CHUNKS)  # nimg * upi a multiple of MAX_CHUNKS
    equal = -(-upi // step) * step
    if vlen // equal >= MIN_UNIT:
        upi = equal
    # The buffer's row pitch: a multiple of 16 elements off the multiples of 4 KB
    # (4 rows 4 KB apart would share L1 sets).
    qc = (-(-vlen // upi) + 8 + 15) // 16 * 16  # a unit is at most ceil + 7
    if (qc * itemsize) % 4096 == 0:
        qc += 16
    nunit = nimg * upi
    budget = max(1, (32 << 20) // (itemsize * max(o * k, 1)))
    nchunk = max(1, min(nunit, budget, MAX_CHUNKS))
    nkb = -(-k // MK)
    nks = 1
    while nks < nkb and (nchunk * nks < 4 * threads or (nchunk * nks) % threads):
        nks += 1
    ntask = nchunk * nks
    nwork = threads if ntask % threads == 0 else min(ntask, 4 * threads)
    return int(qc), int(nunit), int(nchunk), int(nks), int(nwork)
