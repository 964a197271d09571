"""Convolution kernels on 5-D arrays (see the package docstring).

Three primitives carry the four convolution ops (the algebra is in the docstring of
``cnnfast.backends.numpy_backend``):

* ``correlate``: ``y[n, o, q] = b[o] + sum_{c, t} w[o, c, t] * x[n, g*CG + c, q*s - p + t*d]``
  -- conv forward, and the input gradient of conv_transpose.
* ``correlate_t``: its adjoint with respect to ``x``, written as a gather into each
  output row -- conv_transpose forward, and the input gradient of conv.
* ``weight_grad``: ``gw[o, c, t] = sum_{n, q} b[n, o, q] * a[n, g*CG + c, q*s - p + t*d]``.

Every parallel task owns a disjoint block of the output and sums in a fixed order,
so results are bit-identical from run to run and for any thread count (no atomics,
no scattering across tasks).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from . import JIT

# Output channels computed together: one input row load feeds this many FMAs.
OB = 4
# Output rows per tile: keeps OB x TH output rows hot in L1 while the
# (input channel, tap) loop sweeps over them.
TH = 8


@njit(cache=True, inline="always")
def span(n_out, s, off, size):
    """``[lo, hi)``: the outputs ``o`` in ``[0, n_out)`` with ``0 <= o*s + off < size``."""
    lo = 0
    if off < 0:
        lo = (-off + s - 1) // s
    hi = (size - 1 - off) // s + 1 if size - 1 - off >= 0 else 0
    if hi > n_out:
        hi = n_out
    if hi < lo:
        hi = lo
    return lo, hi


# ----------------------------------------------------------------------------- forward


@njit(**JIT)
def correlate(x, w, b, y, stride, pad, dil, groups):
    """Direct grouped correlation, ``y`` (N, O, OD, OH, OW) written in full.

    Task = (n, group, block of OB output channels, output depth slice). The
    innermost loop runs along an output row (contiguous in ``y``; contiguous in
    ``x`` for stride 1) and feeds OB accumulator rows from one input load.
    """
    N, C, D, H, W = x.shape
    O, CG, KD, KH, KW = w.shape
    OD, OH, OW = y.shape[2], y.shape[3], y.shape[4]
    sd, sh, sw = stride
    pd, ph, pw = pad
    dd, dh, dw = dil
    OG = O // groups
    NB = (OG + OB - 1) // OB
    for task in prange(N * groups * NB * OD):
        od = task % OD
        r = task // OD
        ob = r % NB
        r //= NB
        g = r % groups
        n = r // groups
        o0 = g * OG + ob * OB
        nb = min(OB, OG - ob * OB)
        for i in range(nb):
            bv = b[o0 + i]
            for oh in range(OH):
                for ow in range(OW):
                    y[n, o0 + i, od, oh, ow] = bv
        for oh0 in range(0, OH, TH):
            oh1 = min(oh0 + TH, OH)
            for c in range(CG):
                ci = g * CG + c
                for kd in range(KD):
                    idd = od * sd - pd + kd * dd
                    if idd < 0 or idd >= D:
                        continue
                    for kh in range(KH):
                        offh = kh * dh - ph
                        lo_h, hi_h = span(OH, sh, offh, H)
                        lo_h = max(lo_h, oh0)
                        hi_h = min(hi_h, oh1)
                        for kw in range(KW):
                            offw = kw * dw - pw
                            lo_w, hi_w = span(OW, sw, offw, W)
                            if nb == OB:
                                w0 = w[o0, c, kd, kh, kw]
                                w1 = w[o0 + 1, c, kd, kh, kw]
                                w2 = w[o0 + 2, c, kd, kh, kw]
                                w3 = w[o0 + 3, c, kd, kh, kw]
                                for oh in range(lo_h, hi_h):
                                    xr = x[n, ci, idd, oh * sh + offh]
                                    y0 = y[n, o0, od, oh]
                                    y1 = y[n, o0 + 1, od, oh]
                                    y2 = y[n, o0 + 2, od, oh]
                                    y3 = y[n, o0 + 3, od, oh]
                                    for ow in range(lo_w, hi_w):
                                        v = xr[ow * sw + offw]
                                        y0[ow] += w0 * v
                                        y1[ow] += w1 * v
                                        y2[ow] += w2 * v
                                        y3[ow] += w3 * v
                            else:
                                for i in range(nb):
                                    wv = w[o0 + i, c, kd, kh, kw]
                                    for oh in range(lo_h, hi_h):
                                        xr = x[n, ci, idd, oh * sh + offh]
                                        yr = y[n, o0 + i, od, oh]
                                        for ow in range(lo_w, hi_w):
                                            yr[ow] += wv * xr[ow * sw + offw]
