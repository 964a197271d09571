"""Index and row helpers shared by the numba kernels (see the package docstring).

``span`` clips a strided run of outputs to the part that reads inside an input
dim. The row helpers work on flat 1-D views made once per kernel call, with
unsigned offsets. Two numba costs are avoided that way (measured): an array view
made inside a loop does atomic reference counting on the parent (shared by every
thread), and a signed offset index (``ow*s + off``) gets a negative-index
wraparound select per element, which blocks vectorisation. Step 1 and 2 get loops
with a constant stride, so LLVM vectorises them. Every helper is inlined into its
caller (``ROW``).
"""

from __future__ import annotations

from numba import njit, uint64

from . import JIT

ROW = dict(cache=True, fastmath=JIT["fastmath"], error_model="numpy", inline="always")


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


@njit(**ROW)
def fill(f, start, m, value):
    """``f[start:start+m] = value``."""
    s0 = uint64(start)
    for t in range(uint64(m)):
        f[s0 + t] = value


@njit(**ROW)
def copy_strided(df, ds, sf, ss, step, m):
    """``df[ds + t] = sf[ss + t*step]`` for t < m."""
    d0 = uint64(ds)
    s0 = uint64(ss)
    mu = uint64(m)
    if step == 1:
        for t in range(mu):
            df[d0 + t] = sf[s0 + t]
    elif step == 2:
        for t in range(mu):
            df[d0 + t] = sf[s0 + uint64(2) * t]
    else:
        su = uint64(step)
        for t in range(mu):
            df[d0 + t] = sf[s0 + su * t]


@njit(**ROW)
def axpy(yf, ys, xf, xs, step, m, a):
    """``yf[ys + t] += a * xf[xs + t*step]`` for t < m."""
    y0 = uint64(ys)
    x0 = uint64(xs)
    mu = uint64(m)
    if step == 1:
        for t in range(mu):
            yf[y0 + t] += a * xf[x0 + t]
    elif step == 2:
        for t in range(mu):
            yf[y0 + t] += a * xf[x0 + uint64(2) * t]
    else:
        su = uint64(step)
        for t in range(mu):
            yf[y0 + t] += a * xf[x0 + su * t]


@njit(**ROW)
def axpy4(yf, ys, ystride, xf, xs, step, m, w0, w1, w2, w3):
    """Four ``axpy`` into rows ``ys + i*ystride`` sharing each input load."""
    y0 = uint64(ys)
    y1 = uint64(ys + ystride)
    y2 = uint64(ys + 2 * ystride)
    y3 = uint64(ys + 3 * ystride)
    x0 = uint64(xs)
    mu = uint64(m)
    if step == 1:
        for t in range(mu):
            v = xf[x0 + t]
            yf[y0 + t] += w0 * v
            yf[y1 + t] += w1 * v
            yf[y2 + t] += w2 * v
            yf[y3 + t] += w3 * v
    else:
        su = uint64(step)
        for t in range(mu):
            v = xf[x0 + su * t]
            yf[y0 + t] += w0 * v
            yf[y1 + t] += w1 * v
            yf[y2 + t] += w2 * v
            yf[y3 + t] += w3 * v


@njit(**ROW)
def scatter_axpy(yf, ys, step, m, a, xf, xs):
    """``yf[ys + t*step] += a * xf[xs + t]`` (rows owned by the caller's task)."""
    y0 = uint64(ys)
    x0 = uint64(xs)
    mu = uint64(m)
    if step == 1:
        for t in range(mu):
            yf[y0 + t] += a * xf[x0 + t]
    elif step == 2:
        for t in range(mu):
            yf[y0 + uint64(2) * t] += a * xf[x0 + t]
    else:
        su = uint64(step)
        for t in range(mu):
            yf[y0 + su * t] += a * xf[x0 + t]


@njit(**ROW)
def mul_add(pf, ps, bf, bs, af, as_, step, m):
    """``pf[ps + t] += bf[bs + t] * af[as_ + t*step]`` for t < m."""
    p0 = uint64(ps)
    b0 = uint64(bs)
    a0 = uint64(as_)
    mu = uint64(m)
    if step == 1:
        for t in range(mu):
            pf[p0 + t] += bf[b0 + t] * af[a0 + t]
    elif step == 2:
        for t in range(mu):
            pf[p0 + t] += bf[b0 + t] * af[a0 + uint64(2) * t]
    else:
        su = uint64(step)
        for t in range(mu):
            pf[p0 + t] += bf[b0 + t] * af[a0 + su * t]

