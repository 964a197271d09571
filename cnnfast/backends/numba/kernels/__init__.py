"""Numba CPU kernels behind ``cnnfast.backends.numba.backend``.

Every kernel works on 5-D arrays ``(N, C, D, H, W)``: a 1-D or 2-D case is passed
with size-1 leading spatial dims (kernel 1, stride 1, padding 0, dilation 1 there).
One compiled specialisation per kernel and dtype therefore serves all three ranks,
which keeps the number of compilations (and the cold start) small.

Compilation flags (``JIT``): ``parallel`` with ``prange`` over the outermost
independent loop, ``cache=True`` (on-disk cache next to the sources, lazily filled
on the first call of each signature), ``nogil`` so several Python threads can call
in at once, and only the fastmath flags that keep NaN and inf semantics
(``nnan``/``ninf`` are left out, so max pooling still sees NaN).
"""

from __future__ import annotations

# Fast-math flags that keep NaN and inf: reassociation (vectorised reductions),
# contraction (FMA), no signed zeros, reciprocal and approximate functions.
FASTMATH = frozenset({"nsz", "arcp", "contract", "afn", "reassoc"})

JIT = dict(parallel=True, cache=True, nogil=True, fastmath=set(FASTMATH),
           error_model="numpy", boundscheck=False)
