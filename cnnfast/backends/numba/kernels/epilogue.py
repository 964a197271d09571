"""The fused activation (``cnnfast.activation``, the reference) of the numba kernels.

Forward: the correlation kernels pass every final output value (after the bias)
through ``store_act`` / ``activate`` where they write it, while it is in registers or
L1. Backward: ``grad_act`` is one parallel pass over (grad_y, y) that writes
``g = grad_y * act'(y)`` and the bias gradient's partial sums, before the gradient
kernels read ``g``.

The activation is an int code (``ACT_*``) and a float64 slope, ordinary kernel
arguments: one compiled specialisation per kernel and dtype serves every activation
(and none). The hot loops branch on the code outside the loop, so the plain and relu
stores stay vectorised. Every formula is the reference's, in the array's dtype:
relu ``0 if v <= 0 else v`` (np.maximum(v, 0): NaN stays NaN, -0.0 becomes 0.0);
sigmoid through ``exp(-|v|)`` (no overflow on either side); tanh ``math.tanh``.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange, uint64

from . import JIT
from .common import ROW

ACT_NONE = 0
ACT_RELU = 1
ACT_LEAKY = 2
ACT_SIGMOID = 3
ACT_TANH = 4
CODES = {None: ACT_NONE, "relu": ACT_RELU, "leaky_relu": ACT_LEAKY,
         "sigmoid": ACT_SIGMOID, "tanh": ACT_TANH}

# Elements of one task of ``grad_act`` at most: a large plane is split into chunks of
# this size (fixed by the shape, not the thread count) so a few big planes still run
# in parallel.
GRAD_CHUNK = 16384


@njit(**ROW)
def act_value(v, act, s, zero, one):
    """``v`` through activation ``act``; ``s`` (the slope), ``zero`` and ``one`` are
    of ``v``'s dtype (a plain int literal would promote float32 math to float64)."""
    if act == ACT_RELU:
        return zero if v <= zero else v
    if act == ACT_LEAKY:
        return v * s if v < zero else v
    if act == ACT_SIGMOID:
        e = math.exp(-abs(v))
        if v >= zero:
            return one / (one + e)
        if v < zero:
            return e / (one + e)
        return v  # NaN
    if act == ACT_TANH:
        return math.tanh(v)
    return v


@njit(**ROW)
def store_act(yf, ys, af, as_, m, bv, act, slope):
    """``yf[ys + t] = act(af[as_ + t] + bv)`` for t < m: the bias and the activation
    applied where a product kernel writes its accumulators out."""
    y0 = uint64(ys)
    a0 = uint64(as_)
    mu = uint64(m)
    zero = yf.dtype.type(0)
    if act == ACT_NONE:
        for t in range(mu):
            yf[y0 + t] = af[a0 + t] + bv
    elif act == ACT_RELU:
        for t in range(mu):
            v = af[a0 + t] + bv
            yf[y0 + t] = zero if v <= zero else v
    else:
        s = yf.dtype.type(slope)
        one = yf.dtype.type(1)
        for t in range(mu):
            yf[y0 + t] = act_value(af[a0 + t] + bv, act, s, zero, one)


@njit(**ROW)
def store_act_step(yf, ys, step, af, as_, m, bv, act, slope):
    """``yf[ys + t*step] = act(af[as_ + t] + bv)`` for t < m: ``store_act`` into
    every ``step``-th element (a stride phase of a transposed convolution's output)."""
    y0 = uint64(ys)
    su = uint64(step)
    a0 = uint64(as_)
    s = yf.dtype.type(slope)
    zero = yf.dtype.type(0)
    one = yf.dtype.type(1)
    for t in range(uint64(m)):
        yf[y0 + su * t] = act_value(af[a0 + t] + bv, act, s, zero, one)


@njit(**ROW)
def activate(f, start, m, act, slope):
    """``f[start:start+m]`` through activation ``act``, in place (rows a direct kernel
    has finished summing)."""
    if act == ACT_NONE:
        return
    s0 = uint64(start)
    mu = uint64(m)
    zero = f.dtype.type(0)
    if act == ACT_RELU:
        for t in range(mu):
            v = f[s0 + t]
            f[s0 + t] = zero if v <= zero else v
    else:
        s = f.dtype.type(slope)
        one = f.dtype.type(1)
        for t in range(mu):
            f[s0 + t] = act_value(f[s0 + t], act, s, zero, one)


@njit(cache=True, fastmath=JIT["fastmath"], error_model="numpy")
def activate_all(f, act, slope):
    """``activate`` over all of the 1-D ``f`` (a small array: the bias, for the outputs
    no tap reaches)."""
    activate(f, 0, f.size, act, slope)


@njit(**ROW)
def _grad_run(gf, gyf, yf, start, m, act, slope):
    """``gf[i] = gyf[i] * act'(yf[i])`` for i in [start, start+m) (the derivative from
    the activated output, ``cnnfast.activation.grad``); returns the sum of those
    ``gf[i]`` in a fixed order."""
    s0 = uint64(start)
    mu = uint64(m)
    zero = gf.dtype.type(0)
    one = gf.dtype.type(1)
    acc = zero
    if act == ACT_RELU:
        for t in range(mu):
            g = gyf[s0 + t] if yf[s0 + t] > zero else zero
            gf[s0 + t] = g
            acc += g
    elif act == ACT_LEAKY:
        s = gf.dtype.type(slope)
        for t in range(mu):
            gy = gyf[s0 + t]
            g = gy if yf[s0 + t] > zero else gy * s
            gf[s0 + t] = g
            acc += g
    elif act == ACT_SIGMOID:
        for t in range(mu):
            y = yf[s0 + t]
            g = gyf[s0 + t] * (y * (one - y))
            gf[s0 + t] = g
            acc += g
    else:  # ACT_TANH: (1 - y)(1 + y), not 1 - y*y (cancellation as |y| -> 1)
        for t in range(mu):
            y = yf[s0 + t]
            g = gyf[s0 + t] * ((one - y) * (one + y))
            gf[s0 + t] = g
            acc += g
    return acc


@njit(**JIT)
def grad_act(gy, y, g, gb, act, slope):
    """``g = gy * act'(y)`` (all (N, C, D, H, W), ``act`` not ``ACT_NONE``) and
    ``gb[c]`` = the sum of ``g[:, c]``, in one pass.

    Task = (n, c, chunk of at most ``GRAD_CHUNK`` elements of the plane); each task
    sums its chunk in a fixed order into its own partial, and the partials of a
    channel are added in (n, chunk) order after the loop: the same bits for any
    thread count.
    """
    N, C = gy.shape[0], gy.shape[1]
    P = gy.shape[2] * gy.shape[3] * gy.shape[4]
    nch = max(1, (P + GRAD_CHUNK - 1) // GRAD_CHUNK)
    gyf = gy.reshape(gy.size)
    yf = y.reshape(y.size)
    gf = g.reshape(g.size)
    part = np.empty(N * C * nch, g.dtype)
    for task in prange(N * C * nch):
        ch = task % nch
        plane = task // nch  # n * C + c
        lo = ch * GRAD_CHUNK
        hi = min(P, lo + GRAD_CHUNK)
        part[task] = _grad_run(gf, gyf, yf, plane * P + lo, hi - lo, act, slope)
    for c in range(C):
        acc = g.dtype.type(0)
        for n in range(N):
            base = (n * C + c) * nch
            for ch in range(nch):
                acc += part[base + ch]
        gb[c] = acc
