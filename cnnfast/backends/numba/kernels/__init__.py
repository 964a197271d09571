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

Modules:

* ``common``: ``span`` and the flat-row helpers (``fill``, ``axpy``, ...) every
  kernel inlines;
* ``gemm``: the product kernels (an MR x NR register-blocked product over im2col
  panels, read in place from wide rows or copied): ``correlate_wide``,
  ``correlate_gemm``;
* ``wgrad``: the weight gradient as register-blocked dot products of rows
  (``pack_phases``, ``weight_grad_rows``);
* ``direct``: the fixed-order direct sums: ``correlate_direct``, ``correlate_dw3x3``,
  ``correlate_t``, ``weight_grad``, ``weight_grad_planes``, ``bias_grad``;
* ``winograd``: Winograd F(4x4, 3x3) for 2-d 3x3 and 3-d KDx3x3 stride-1 correlations
  (``transform_weight``, ``correlate``, ``weight_grad``), the transforms and
  accuracy contract of the cpp backend's ``csrc/conv/winograd.h``;
* ``pool``: the pooling kernels;
* ``epilogue``: the fused activation (an int code and a slope, ordinary kernel
  arguments: no specialisation per activation): ``store_act`` and ``activate``,
  which the correlation kernels call where they write an output, and ``grad_act``,
  the backward's one pass over (grad_y, y) that also sums the bias gradient.

Three primitives carry the four convolution ops (the algebra is in the docstring of
``cnnfast.backends.numpy.backend``):

* correlation, ``y[n, o, q] = b[o] + sum_{c, t} w[o, c, t] * x[n, g*CG + c, q*s - p + t*d]``
  -- conv forward, the input gradient of conv_transpose, and (stride 1) the input
  gradient of conv and conv_transpose forward through the flipped weight:
  ``correlate_wide`` (stride 1, or strided over the input's stride phases),
  ``correlate_gemm`` (any stride), or
  ``correlate_direct`` for depthwise-like cases (fewer than MR output channels per
  group), where a product has nothing to reuse (``correlate_dw3x3``: 2-d depthwise
  3x3, stride 1).
* ``correlate_t``: the adjoint of correlation with respect to ``x`` for any
  stride, written so that every task owns whole output rows and gathers every
  (input channel, tap) contribution into them. The backend uses it for stride 1
  with few output channels per group only: a strided adjoint is split into
  stride phases, each a stride-1 correlation on the paths above.
* weight gradient, ``gw[o, c, t] = sum_{n, q} b[n, o, q] * a[n, g*CG + c, q*s - p + t*d]``:
  ``weight_grad_rows`` (dot products of padded input rows, split into stride
  phases, with "wide" gradient rows, over chunks of positions fixed by the
  shapes, whose partial sums are added in chunk order) and ``weight_grad`` (one
  fixed-order sum per (o, c) pair, depthwise; for stride 1 ``weight_grad_planes``,
  the same pairs as dot products of whole padded planes).

Paddings may be negative (a negative pad crops), which the adjoint needs.

Every parallel task owns a disjoint block of the output (or of a chunk's partial
sums) and sums every element in a fixed order that does not depend on the task
split, so results are bit-identical from run to run and for any thread count (no
atomics, no scattering across tasks).
"""

from __future__ import annotations

# Fast-math flags that keep NaN and inf: reassociation (vectorised reductions),
# contraction (FMA), no signed zeros, reciprocal and approximate functions.
FASTMATH = frozenset({"nsz", "arcp", "contract", "afn", "reassoc"})

JIT = dict(parallel=True, cache=True, nogil=True, fastmath=set(FASTMATH),
           error_model="numpy", boundscheck=False)
