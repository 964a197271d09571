"""Pooling kernels on 5-D arrays (see the package docstring).

Forward kernels work one output row at a time: for each tap the whole row of
outputs is updated in one vectorisable sweep over a (strided) input row, so each
input row is streamed from cache once per tap instead of once per window cell.
Backward kernels own whole ``(n, c)`` planes of the input gradient: every
contribution to a plane is added by one task in a fixed order (no atomics, no
races, bit-identical results for any thread count).

Semantics (API.md): NaN wins a max and the first NaN gives the index; ties keep
the first maximum in scan order; a window of only ``-inf`` returns its first
in-bounds cell. Taps are visited in scan order (kd, kh, kw) and only inside the
input, so "first" is the first visit.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange, uint64

from . import JIT
from .common import ROW, fill, scatter_axpy, span

# Row helpers over ``xf[xs + t*step]``, t < m, with flat unsigned offsets (see
# ``common``: no views in loops, no wraparound selects; step 1 and 2 get a constant
# stride so that LLVM vectorises).


@njit(**ROW)
def _max_row(yf, ys, xf, xs, step, m):
    """``y = max(y, x)`` where a NaN, once in, stays (``v > NaN`` is false)."""
    y0 = uint64(ys)
    x0 = uint64(xs)
    mu = uint64(m)
    if step == 1:
        for t in range(mu):
            v = xf[x0 + t]
            if v > yf[y0 + t] or v != v:
                yf[y0 + t] = v
    elif step == 2:
        for t in range(mu):
            v = xf[x0 + uint64(2) * t]
            if v > yf[y0 + t] or v != v:
                yf[y0 + t] = v
    else:
        su = uint64(step)
        for t in range(mu):
            v = xf[x0 + su * t]
            if v > yf[y0 + t] or v != v:
                yf[y0 + t] = v


@njit(**ROW)
def _max_row_idx(yf, idf, ys, xf, xs, step, m, base):
    """As ``_max_row`` with the winner's flat offset ``base + t*step`` in ``idf``.
    Strictly greater keeps the first max; the first NaN wins and stays; the first
    in-bounds tap (index still -1) is always taken, for windows of -inf only."""
    y0 = uint64(ys)
    x0 = uint64(xs)
    su = uint64(step)
    for t in range(uint64(m)):
        v = xf[x0 + su * t]
        cur = yf[y0 + t]
        if v > cur or (v != v and cur == cur) or idf[y0 + t] < 0:
            yf[y0 + t] = v
            idf[y0 + t] = base + np.int64(t) * step


@njit(**ROW)
def _sum_row(yf, ys, xf, xs, step, m):
    """``yf[ys + t] += xf[xs + t*step]``."""
    y0 = uint64(ys)
    x0 = uint64(xs)
    mu = uint64(m)
    if step == 1:
        for t in range(mu):
            yf[y0 + t] += xf[x0 + t]
    elif step == 2:
        for t in range(mu):
            yf[y0 + t] += xf[x0 + uint64(2) * t]
    else:
        su = uint64(step)
        for t in range(mu):
            yf[y0 + t] += xf[x0 + su * t]


@njit(**JIT)
def max_pool(x, y, idx, want_idx, kernel, stride, pad, dil):
    """``y`` (N, C, OD, OH, OW) and, when ``want_idx``, ``idx`` (same shape, int64
    flat offsets into each (n, c) plane of ``x``); ``idx`` may be a dummy otherwise.

    Task = (plane, output depth slice).
    """
    N, C, D, H, W = x.shape
    OD, OH, OW = y.shape[2], y.shape[3], y.shape[4]
    KD, KH, KW = kernel
    sd, sh, sw = stride
    pd, ph, pw = pad
    dd, dh, dw = dil
    xf = x.reshape(x.size)
    yf = y.reshape(y.size)
    idf = idx.reshape(idx.size)
    ninf = -np.inf
    for task in prange(N * C * OD):
        od = task % OD
        nc = task // OD
        ybase = (nc * OD + od) * OH
        fill(yf, ybase * OW, OH * OW, ninf)
        if want_idx:
            fill(idf, ybase * OW, OH * OW, -1)
        for oh in range(OH):
            yrow = (ybase + oh) * OW
            for kd in range(KD):
                idd = od * sd - pd + kd * dd
                if idd < 0 or idd >= D:
                    continue
                for kh in range(KH):
                    ih = oh * sh - ph + kh * dh
                    if ih < 0 or ih >= H:
                        continue
                    xrow = ((nc * D + idd) * H + ih) * W
                    for kw in range(KW):
                        offw = kw * dw - pw
                        lo, hi = span(OW, sw, offw, W)
                        m = hi - lo
                        if m <= 0:
                            continue
                        start = lo * sw + offw
                        if want_idx:
                            _max_row_idx(yf, idf, yrow + lo, xf, xrow + start, sw, m,
                                         (idd * H + ih) * W + start)
                        else:
                            _max_row(yf, yrow + lo, xf, xrow + start, sw, m)


@njit(**JIT)
def max_pool_backward(gy, idx, gx):
    """``gx[n, c].flat[idx[n, c, q]] += gy[n, c, q]`` in q order from 0 (the API has
    checked that every index lies in its plane); one task per (n, c) plane. The
    offsets are unsigned: a signed index gets a negative-index select per access
    (``common``), which cost 17-37% of the time here (measured, 1 thread)."""
    N, C = gx.shape[0], gx.shape[1]
    plane = gx.shape[2] * gx.shape[3] * gx.shape[4]
    Q = gy.shape[2] * gy.shape[3] * gy.shape[4]
    gxf = gx.reshape(gx.size)
    gyf = gy.reshape(gy.size)
    idf = idx.reshape(idx.size)
    pu = uint64(plane)
    qu = uint64(Q)
    for task in prange(N * C):
        p0 = uint64(task) * pu
        fill(gxf, p0, plane, 0)
        q0 = uint64(task) * qu
        for q in range(qu):
            gxf[p0 + uint64(idf[q0 + q])] += gyf[q0 + q]


@njit(**JIT)
def avg_pool(x, y, kernel, stride, pad, dil, div_d, div_h, div_w, override):
    """``y`` = window sums over the divisor: ``override`` when > 0, else
    ``div_d[od] * div_h[oh] * div_w[ow]`` (per-dim cell counts, in y's dtype).

    Task = (plane, output depth slice).
    """
    N, C, D, H, W = x.shape
    OD, OH, OW = y.shape[2], y.shape[3], y.shape[4]
    KD, KH, KW = kernel
    sd, sh, sw = stride
    pd, ph, pw = pad
    dd, dh, dw = dil
    xf = x.reshape(x.size)
    yf = y.reshape(y.size)
    # One output column (e.g. global pooling): a row of outputs is a single cell,
    # so instead of one row sweep per tap, each input row's in-bounds taps
    # [kw_lo, kw_hi) are summed in one vectorisable loop into a register.
    kw_lo, kw_hi = span(KW, dw, -pw, W)
    # ... and when those taps are whole input rows (dense in w and h), the rows
    # of one depth slice are one contiguous run: a single loop.
    whole_rows = dw == 1 and dh == 1 and kw_lo == pw and kw_hi - kw_lo == W
    # Global pooling (one output, its window the whole unpadded plane): one sum of a
    # contiguous run per plane (the row path below took 4x longer on 7x7 planes).
    whole_plane = (OD * OH * OW == 1 and pd == 0 and ph == 0 and pw == 0 and KD == D
                   and KH == H and KW == W and dd == 1 and dh == 1 and dw == 1)
    for task in prange(N * C * OD):
        if whole_plane:
            if override > 0:
                dv = y.dtype.type(override)
            else:
                dv = div_d[0] * div_h[0] * div_w[0]
            x0 = uint64(task) * uint64(D * H * W)
            cell = y.dtype.type(0)
            for t in range(uint64(D * H * W)):
                cell += xf[x0 + t]
            yf[task] = cell / dv
            continue
        od = task % OD
        nc = task // OD
        ybase = (nc * OD + od) * OH
        fill(yf, ybase * OW, OH * OW, 0)
        for oh in range(OH):
            yrow = (ybase + oh) * OW
            cell = y.dtype.type(0)
            for kd in range(KD):
                idd = od * sd - pd + kd * dd
                if idd < 0 or idd >= D:
                    continue
                if OW == 1 and whole_rows:
                    lo_h, hi_h = span(KH, 1, oh * sh - ph, H)
                    x0 = uint64(((nc * D + idd) * H + oh * sh - ph + lo_h) * W)
                    for t in range(uint64(max(hi_h - lo_h, 0) * W)):
                        cell += xf[x0 + t]
                    continue
                for kh in range(KH):
                    ih = oh * sh - ph + kh * dh
                    if ih < 0 or ih >= H:
                        continue
                    xrow = ((nc * D + idd) * H + ih) * W
                    if OW == 1:
                        if kw_hi > kw_lo:
                            x0 = uint64(xrow + kw_lo * dw - pw)
                            mu = uint64(kw_hi - kw_lo)
                            if dw == 1:
                                for t in range(mu):
                                    cell += xf[x0 + t]
                            else:
                                for t in range(mu):
                                    cell += xf[x0 + uint64(dw) * t]
                        continue
                    for kw in range(KW):
                        offw = kw * dw - pw
                        lo, hi = span(OW, sw, offw, W)
                        if hi > lo:
                            _sum_row(yf, yrow + lo, xf, xrow + lo * sw + offw, sw, hi - lo)
            if OW == 1:
                yf[yrow] = cell
            y0 = uint64(yrow)
            if override > 0:
                dv = y.dtype.type(override)
                for ow in range(uint64(OW)):
                    yf[y0 + ow] = yf[y0 + ow] / dv
            else:
                dv = div_d[od] * div_h[oh]
                for ow in range(OW):
                    yf[y0 + uint64(ow)] = yf[y0 + uint64(ow)] / (dv * div_w[ow])


@njit(**JIT)
def avg_pool_backward(gy, gx, kernel, stride, pad, dil, div_d, div_h, div_w, override):
    """The adjoint of ``avg_pool``: each output's share ``gy / divisor`` added to
    every in-bounds cell of its window. One task per (n, c) plane of ``gx``."""
    N, C, D, H, W = gx.shape
    OD, OH, OW = gy.shape[2], gy.shape[3], gy.shape[4]
    KD, KH, KW = kernel
    sd, sh, sw = stride
    pd, ph, pw = pad
    dd, dh, dw = dil
    gxf = gx.reshape(gx.size)
    gyf = gy.reshape(gy.size)
    # One output column: per input row, add the share to the in-bounds taps in
    # one loop (whole rows: one run per depth slice), as in ``avg_pool``.
    kw_lo, kw_hi = span(KW, dw, -pw, W)
    whole_rows = dw == 1 and dh == 1 and kw_lo == pw and kw_hi - kw_lo == W
    # Global pooling (one output, its window the whole unpadded plane): every cell
    # gets the same share, written once instead of zeroed and then added to.
    whole_plane = (OD * OH * OW == 1 and pd == 0 and ph == 0 and pw == 0 and KD == D
                   and KH == H and KW == W and dd == 1 and dh == 1 and dw == 1)
    for task in prange(N * C):
        if whole_plane:
            if override > 0:
                sv = gyf[task] / gy.dtype.type(override)
            else:
                sv = gyf[task] / (div_d[0] * div_h[0] * div_w[0])
            fill(gxf, task * D * H * W, D * H * W, sv)
            continue
        fill(gxf, task * D * H * W, D * H * W, 0)
        share = np.empty(OW, gy.dtype)
        one = gy.dtype.type(1)
        for od in range(OD):
            for oh in range(OH):
                g0 = ((task * OD + od) * OH + oh) * OW
                if override > 0:
                    dv = gy.dtype.type(override)
                    for ow in range(OW):
                        share[ow] = gyf[g0 + ow] / dv
                else:
                    dv = div_d[od] * div_h[oh]
                    for ow in range(OW):
                        share[ow] = gyf[g0 + ow] / (dv * div_w[ow])
                for kd in range(KD):
                    idd = od * sd - pd + kd * dd
                    if idd < 0 or idd >= D:
                        continue
                    if OW == 1 and whole_rows:
                        lo_h, hi_h = span(KH, 1, oh * sh - ph, H)
                        g1 = uint64(((task * D + idd) * H + oh * sh - ph + lo_h) * W)
                        sv = share[0]
                        for t in range(uint64(max(hi_h - lo_h, 0) * W)):
                            gxf[g1 + t] += sv
                        continue
                    for kh in range(KH):
                        ih = oh * sh - ph + kh * dh
                        if ih < 0 or ih >= H:
                            continue
                        grow = ((task * D + idd) * H + ih) * W
                        if OW == 1:
                            if kw_hi > kw_lo:
                                g1 = uint64(grow + kw_lo * dw - pw)
                                sv = share[0]
                                for t in range(uint64(kw_hi - kw_lo)):
                                    gxf[g1 + uint64(dw) * t] += sv
                            continue
                        for kw in range(KW):
                            offw = kw * dw - pw
                            lo, hi = span(OW, sw, offw, W)
                            if hi > lo:
                                scatter_axpy(gxf, grow + lo * sw + offw, sw, hi - lo, one,
                                             share, lo)
