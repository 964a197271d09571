"""Layout rules that several backends share, written once.

* Lifting to 3-D: the compiled kernels (numba, C++, CUDA) are written for 3 spatial
  dims only, and run a rank-1/2 call as a 3-D one with neutral leading dims. Each
  backend keeps its own packing of the lifted values (the named ``ConvGeometry`` /
  ``PoolGeometry`` for C++, a named int32 array for CUDA, tuples for numba); the lifting rule is here.
* The flipped adjoint weight: a transposed convolution (and the input gradient of a
  convolution) is a stride-1 correlation with the weight transposed per group and
  flipped in space (the algebra is in ``cnnfast.backends.numpy.backend``'s
  docstring). The numpy and numba backends use ``flipped_adjoint_weight``; the C++
  kernels, which cannot call Python, build the same weight in
  ``conv_bwd_data_s1`` (``csrc/conv/gemm_s1.h``).
"""

from __future__ import annotations

from typing import Tuple

Ints = Tuple[int, ...]


def lift_to_3d(values, fill: int) -> Ints:
    """Per-dim values of a rank-1/2 call as three, the missing dims in front.

    ``fill`` makes the added dims neutral: 1 for extents, kernel, stride and
    dilation, 0 for padding."""
    values = tuple(int(v) for v in values)
    return (fill,) * (3 - len(values)) + values


def pads_before_3d(padding) -> Ints:
    """The lifted 'before' padding of each dim, from ``(before, after)`` pairs."""
    return lift_to_3d((lo for lo, _ in padding), 0)


def pads_after_3d(padding) -> Ints:
    """The lifted 'after' padding of each dim, from ``(before, after)`` pairs."""
    return lift_to_3d((hi for _, hi in padding), 0)


def flipped_adjoint_weight(w, groups: int):
    """Transposed-conv weight ``(C_in, C_out/G, *k)`` -> the convolution weight
    ``(C_out, C_in/G, *k)`` of the same operation written as a stride-1
    correlation: transposed per group and flipped in space (a view when numpy
    can make one; any rank)."""
    c_in, og = w.shape[:2]
    k = tuple(w.shape[2:])
    wt = w.reshape((groups, c_in // groups, og) + k).swapaxes(1, 2)
    wt = wt.reshape((groups * og, c_in // groups) + k)
    return wt[(Ellipsis,) + (slice(None, None, -1),) * len(k)]
