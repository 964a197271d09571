"""Pooling launches of the CUDA backends (``cupy`` and ``cuda-emu``): the host side
of ``cnnfast/backends/cuda/kernels/pool.cu``. What it shares with the convolution
launches (runtime protocol, geometry packing, constants read from the kernel sources)
is in ``cnnfast.backends.cuda.common``; the kernels' template instantiations and the
backends' op table are ``cnnfast.backends.cuda.conv_launch``'s.

Paths (see pool.cu for the kernels' design):

* forward, max and average: one thread per output (windows up to 3x3 in the last two
  dims unrolled), or one warp per output (``*_fwd_warp``) for large windows over few
  outputs, where one thread per output would leave most of the GPU idle and walk its
  window serially;
* average backward: a gather, one thread per run of ``AVG_BWD_RUN`` input cells along
  the last dim (one per cell when dilated);
* max backward: a reach pre-pass (``max_pool_bwd_reach``: how far any winner lies from
  its output's place in the input, an integer max into a 3-int device array, never
  read back by the host), then ``max_pool_bwd``, which gathers from the few candidate
  outputs of each run of ``MAX_BWD_RUN`` input cells, or, when outputs are far fewer
  than inputs, ``max_pool_bwd_scatter`` (one thread per output over a zeroed grad_x;
  the first output of each winner writes the sum). Both scan whole planes per slice
  instead when the indices lie far from any window (chosen on the device from the
  reach). Every path sums each cell's contributions in a fixed order: deterministic.

Grids are capped (``MAX_BLOCKS``) and the kernels loop; geometry, with the
multiply-shift dividers of its invariant extents, is computed once per shape."""

from __future__ import annotations

import contextlib
import math
from functools import lru_cache

import numpy as np

from .common import (BLOCK_THREADS, POOL_GEO, check_int32_extent, ctype, kernel_constants,
                     launch_1d, pack_geometry)
from ...geometry import lift_to_3d, pads_after_3d, pads_before_3d
from ...params import PoolParams

# The templates of pool.cu, each instantiated for every dtype (NVRTC name expressions).
KERNELS = ("max_pool_fwd", "max_pool_fwd_warp", "max_pool_bwd_reach", "max_pool_bwd",
           "max_pool_bwd_scatter", "avg_pool_fwd", "avg_pool_fwd_warp", "avg_pool_bwd")

_K = kernel_constants("pool.cu")
# Input cells per thread along the last dim in the backward gathers (pool.cu's MPB_RUN
# and POOL_RUN; the best measured on an H100).
MAX_BWD_RUN = _K["MPB_RUN"]
AVG_BWD_RUN = _K["POOL_RUN"]
# PG_MODE of each max-pool backward path (pool.cu's MPB_* enum: automatic, the box
# path of the chosen kernel, the plane scan).
_MAX_BWD_MODES = {None: _K["MPB_AUTO"], "gather": _K["MPB_BOX"],
                  "segments": _K["MPB_SEGMENTS"], "scatter": _K["MPB_BOX"]}
# Test hooks: force the forward path ("thread" or "warp") or the max-pool backward
# path ("gather", "segments" or "scatter"); None restores the automatic choice.
_overrides = {"fwd": None, "max_bwd": None}


@contextlib.contextmanager
def override(fwd=None, max_bwd=None):
    """Force pooling paths (testing aid): ``fwd`` in ("thread", "warp"), ``max_bwd``
    in ("gather", "segments", "scatter")."""
    if fwd not in (None, "thread", "warp"):
        raise ValueError(f"fwd={fwd!r}: expected None, 'thread' or 'warp'")
    if max_bwd not in _MAX_BWD_MODES:
        raise ValueError(f"max_bwd={max_bwd!r}: expected None, 'gather', 'segments' "
                         f"or 'scatter'")
    old = dict(_overrides)
    _overrides.update(fwd=fwd, max_bwd=max_bwd)
    try:
        yield
    finally:
        _overrides.update(old)


def _fast_div(d):
    """(multiplier, shift) of pool.cu's FastDiv: floor(n / d) == (n * m) >> s for every
    0 <= n < 2**31. The multiplier travels as an int32 bit pattern."""
    d = int(d)
    if not 1 <= d < 2 ** 31:
        raise ValueError(f"divisor {d} outside [1, 2**31)")
    l = (d - 1).bit_length()  # ceil(log2 d)
    if d & (d - 1) == 0:
        return 1, l
    m = -(-(1 << (31 + l)) // d)  # in (2**31, 2**32) for d not a power of two
    return m - (1 << 32), 31 + l


@lru_cache(maxsize=512)
def _pool_geo(nc, ishape, oshape, p: PoolParams = None, segments=1,
              mode=_MAX_BWD_MODES[None], run=1):
    """The int32 geometry of pool.cu (a tuple; cached: a training loop repeats a few
    shapes, and the divider arithmetic costs host time at every launch)."""
    ishape, oshape = lift_to_3d(ishape, 1), lift_to_3d(oshape, 1)
    if p is None:  # max-pool backward: only the shapes matter
        fields = dict(K=(1, 1, 1), S=(1, 1, 1), P=(0, 0, 0), Q=(0, 0, 0), D=(1, 1, 1),
                      INCLUDE_PAD=0, DIVISOR=0)
    else:
        fields = dict(K=lift_to_3d(p.kernel, 1), S=lift_to_3d(p.stride, 1),
                      P=pads_before_3d(p.padding),
                      Q=pads_after_3d(p.padding), D=lift_to_3d(p.dilation, 1),
                      INCLUDE_PAD=p.count_include_pad, DIVISOR=p.divisor_override or 0)
    for name, values in (("I", ishape), ("O", oshape), ("S", fields["S"])):
        magic = [_fast_div(v) for v in values]
        fields["M" + name] = tuple(m for m, _ in magic)
        fields["H" + name] = tuple(h for _, h in magic)
    (fields["MIP"], fields["HIP"]), (fields["MOP"], fields["HOP"]) = (
        _fast_div(max(1, int(np.prod(ishape)))), _fast_div(max(1, int(np.prod(oshape)))))
    fields["MCH"], fields["HCH"] = _fast_div(-(-ishape[2] // run))  # runs per row
    return pack_geometry(POOL_GEO, NC=nc, I=ishape, O=oshape, SEGMENTS=segments, MODE=mode,
                         **fields)


def _forward_path(outputs, p: PoolParams):
    """"warp" (one warp per output) for very large windows, or for large windows over
    outputs too few to give a GPU enough threads (one thread would then walk its whole
    window serially); "thread" otherwise. Measured on an H100: a global 7x7 pool of
    32x512 planes took 7.3 us on the thread path and 9.2 us on the warp path (avg)."""
    if _overrides["fwd"] is not None:
        return _overrides["fwd"]
    taps = int(np.prod(p.kernel))
    if taps >= 256 or (taps >= 32 and outputs <= 4096):
        return "warp"
    return "thread"


# Grid cap of the grid-stride kernels: ~8 waves of blocks of BLOCK_THREADS (256) on a
# 132-SM GPU (H100/H200). A thread then covers several elements, which spreads its
# geometry loads (~45 uniform int loads) over them; 8 waves keep the last one's
# imbalance small.
MAX_BLOCKS = 8192


def _grid(threads, max_blocks=None):
    grid, block = launch_1d(threads)
    return (min(grid[0], max_blocks or MAX_BLOCKS),), block


def _forward_launch(rt, name, dtype, nc, p):
    """(kernel, grid, block, geometry) of a pooling forward over ``nc`` planes,
    resolved once per (kernel, dtype, planes, params, path override) and device: a
    repeated call only allocates its results and launches (issue 18's host path)."""

    def build():
        ct = ctype(dtype)
        outputs = nc * math.prod(p.out_shape)
        geo = rt.int32_array(_pool_geo(nc, p.in_shape, p.out_shape, p))
        if _forward_path(outputs, p) == "warp":
            grid = max(1, min(-(-outputs * 32 // BLOCK_THREADS), MAX_BLOCKS))  # warp-stride
            return rt.function("pool.cu", f"{name}_warp<{ct}>"), (grid,), (BLOCK_THREADS,), geo
        grid, block = _grid(outputs)
        return rt.function("pool.cu", f"{name}<{ct}>"), grid, block, geo

    return rt.memo(("pool", name, dtype, nc, p, _overrides["fwd"]), build)


def max_pool(rt, x, p: PoolParams, return_indices):
    check_int32_extent(x, x.shape[:2] + tuple(p.out_shape))
    kernel, grid, block, geo = _forward_launch(rt, "max_pool_fwd", x.dtype,
                                               x.shape[0] * x.shape[1], p)
    y = rt.xp.empty(x.shape[:2] + tuple(p.out_shape), x.dtype)
    idx = rt.xp.empty(y.shape if return_indices else (1,), np.int64)
    kernel(grid, block, (x, y, idx, geo, np.int32(bool(return_indices))))
    return y, (idx if return_indices else None)


def max_pool_backward(rt, gy, indices, x_shape):
    check_int32_extent(gy)
    x_shape = tuple(int(v) for v in x_shape)
    check_int32_extent(x_shape)
    scatter, reach_launch, launch = rt.memo(
        ("max_pool_bwd", gy.dtype, gy.shape, x_shape, _overrides["max_bwd"]),
        lambda: _max_backward_launches(rt, gy.dtype, gy.shape, x_shape))
    gx = (rt.xp.zeros if scatter else rt.xp.empty)(x_shape, gy.dtype)
    indices = rt.xp.ascontiguousarray(indices, np.int64)
    # The reach is written with atomicMax: a fresh zeroed array each call (the
    # runtime's int32_array may be a cached, shared geometry array).
    reach = rt.xp.zeros(3, np.int32)
    kernel, grid, block, geo = reach_launch
    kernel(grid, block, (indices, reach, geo))
    kernel, grid, block, geo = launch
    kernel(grid, block, (gy, indices, gx, reach, geo))
    return gx


def _max_backward_launches(rt, dtype, gy_shape, x_shape):
    """(scatter, the reach pass's (kernel, grid, block, geometry), the gradient
    pass's), resolved once per shapes, dtype, path override and device."""
    ct = ctype(dtype)
    nc = x_shape[0] * x_shape[1]
    plane = math.prod(x_shape[2:])
    outputs = math.prod(gy_shape)
    scatter = _max_bwd_scatter(outputs, math.prod(x_shape))
    # Slices per plane of the scanning fallback: enough threads to fill a GPU, each
    # slice >= 16 cells.
    segments = max(1, min(-(-65536 // max(nc, 1)), plane // 16, 64))
    geo = rt.int32_array(_pool_geo(nc, x_shape[2:], tuple(gy_shape[2:]), None, segments,
                                   _MAX_BWD_MODES[_overrides["max_bwd"]], MAX_BWD_RUN))
    grid, block = _grid(outputs, 1024)  # grid-stride; 3 atomics per block
    reach = (rt.function("pool.cu", f"max_pool_bwd_reach<{ct}>"), grid, block, geo)
    if scatter:
        grid, block = _grid(outputs)
        return scatter, reach, (rt.function("pool.cu", f"max_pool_bwd_scatter<{ct}>"), grid,
                                block, geo)
    ishape = lift_to_3d(x_shape[2:], 1)
    runs = nc * ishape[0] * ishape[1] * -(-ishape[2] // MAX_BWD_RUN)
    grid, block = _grid(runs)
    return scatter, reach, (rt.function("pool.cu", f"max_pool_bwd<{ct}>"), grid, block, geo)


def _max_bwd_scatter(outputs, inputs):
    """One thread per output over a zeroed grad_x when outputs are far fewer than
    inputs (3-D stride-2 pooling); the gather by runs of input cells otherwise."""
    mode = _overrides["max_bwd"]
    if mode is not None:
        return mode == "scatter"
    return outputs * 6 <= inputs


def avg_pool(rt, x, p: PoolParams):
    check_int32_extent(x, x.shape[:2] + tuple(p.out_shape))
    kernel, grid, block, geo = _forward_launch(rt, "avg_pool_fwd", x.dtype,
                                               x.shape[0] * x.shape[1], p)
    y = rt.xp.empty(x.shape[:2] + tuple(p.out_shape), x.dtype)
    kernel(grid, block, (x, y, geo))
    return y


def avg_pool_backward(rt, gy, p: PoolParams):
    check_int32_extent(gy)
    check_int32_extent(gy.shape[:2] + tuple(p.in_shape))
    nc = gy.shape[0] * gy.shape[1]

    def build():  # once per (dtype, planes, params) and device, as the forward's
        ishape = lift_to_3d(p.in_shape, 1)
        runs = nc * ishape[0] * ishape[1] * -(-ishape[2] // AVG_BWD_RUN)  # undilated: runs
        grid, block = _grid(runs if all(d == 1 for d in p.dilation) else
                            nc * math.prod(p.in_shape))
        return (rt.function("pool.cu", f"avg_pool_bwd<{ctype(gy.dtype)}>"), grid, block,
                rt.int32_array(_pool_geo(nc, p.in_shape, p.out_shape, p, run=AVG_BWD_RUN)))

    kernel, grid, block, geo = rt.memo(("avg_pool_bwd", gy.dtype, nc, p), build)
    gx = rt.xp.empty(gy.shape[:2] + tuple(p.in_shape), gy.dtype)
    kernel(grid, block, (gy, gx, geo))
    return gx
