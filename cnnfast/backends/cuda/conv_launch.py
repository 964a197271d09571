"""Convolution launches of the CUDA backends (``cupy`` and ``cuda-emu``): the host
side of ``cnnfast/backends/cuda/kernels/conv.cu`` -- which kernel and path each
convolution op runs (``choose_path``, ``explain``, ``last_paths``), its geometry, row
and phase tables, tiles and split-K, the fused activation (kernel arguments of the
final store; one act_grad pass in the backward) -- and what concerns the kernel library
as a whole: the template instantiations of both files (NVRTC ``name_expressions``),
their source text and cache key, and the eight ops of a backend (``make_ops``; the
pooling ones are ``cnnfast.backends.cuda.pool_launch``'s).

The kernels live in ``cnnfast/backends/cuda/kernels/*.cu`` (package data). The code
talks to the device through a runtime object (see ``cnnfast.backends.cuda.common``),
so that it runs unchanged on a GPU (``cupy_backend``) and in the CPU emulator
(``emu_backend``). Constants shared with conv.cu (modes, table layouts, thread counts)
are read from its source.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import re
import threading
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .common import (BLOCK_THREADS, CONV_GEO, CTYPES, CUDA_DIR, DTYPES,  # noqa: F401
                     check_int32_extent, ctype, kernel_constants, launch_1d, pack_geometry)
# The pooling launches: their kernel names for name_expressions, their ops for make_ops.
from .pool_launch import KERNELS as POOL_KERNELS
from .pool_launch import avg_pool, avg_pool_backward, max_pool, max_pool_backward
from . import winograd_launch
from ...geometry import lift_to_3d, pads_before_3d
from ...params import ConvParams

SOURCE_FILES = ("conv.cu", "pool.cu", "winograd.cu", "depthwise.cu")
# Options given to NVRTC (CuPy adds the -arch of the current device itself). No
# fast-math: max pooling relies on NaN comparisons.
NVRTC_OPTIONS = ("--std=c++17",)

_K = kernel_constants("conv.cu")
MODE_CORR, MODE_ADJ, MODE_WGRAD = _K["MODE_CORR"], _K["MODE_ADJ"], _K["MODE_WGRAD"]
GEMM_THREADS = _K["GEMM_THREADS"]
# conv_gemm tile shapes (BM rows x BN columns, THR_M thread rows, BK reduction steps
# per shared-memory tile; a thread computes BM/THR_M x BN/(GEMM_THREADS/THR_M)
# outputs). Rows are output channels per group (M): the tile is fitted to M. Measured
# on an H100 (benchmarks/gpu_probe.py tiles): 64 x 64 beat 128 x 128 and 64 x 256
# tiles with 8 x 8 per thread on every ResNet layer at batch 8 and 32 (more resident
# warps hide the gather latency better), so the larger tiles are gone; BK = 16 beat
# BK = 8 by 5-35% on 27 of those 30 layer/pass pairs. The last field is the blocks
# per SM the registers are limited for (__launch_bounds__' second argument):
# "small16" takes 93-105 registers in float (`.ci/nvrtc_check.py --ptxas-verbose`,
# sm_90), so only 2 blocks of 256 threads fit an SM's 64K registers (a quarter of the
# H100's 2048 threads); "small16_occ" is the same tile held to 4 blocks: 64 registers,
# no spills in float (double spills ~200 B) -- not chosen automatically until
# `gpu_probe.py tiles` has timed it on a GPU.
GEMM_TILES = {
    "small": (64, 64, 16, 8, 1),    # 4 x 4 per thread
    "small16": (64, 64, 16, 16, 1),  # the same, 16 reduction steps per tile
    "small16_occ": (64, 64, 16, 16, 4),  # the same, for 4 resident blocks per SM
    "thin": (32, 256, 8, 8, 1),     # 4 x 8, for M <= 32
    "sliver": (16, 256, 4, 8, 1),   # 4 x 4, for M <= 16 (e.g. gradients into RGB images)
}
# Split-K slices are multiples of every tile's BK.
GEMM_BK_MAX = math.lcm(*(t[3] for t in GEMM_TILES.values()))
# Blocks that keep a big GPU busy (an H100 has 132 SMs; two waves).
TARGET_BLOCKS = 264
# Row/phase table layouts (conv.cu): ints per row and per phase, and the fields'
# offsets in them.
ROW_STRIDE, ROW_XOFF, ROW_V0, ROW_AOFF = (_K[k] for k in ("ROW_STRIDE", "ROW_XOFF", "ROW_V0",
                                                          "ROW_AOFF"))
PH_STRIDE, PH_U0, PH_Q0, PH_ROWS, PH_NCOLS = (_K[k] for k in ("PH_STRIDE", "PH_U0", "PH_Q0",
                                                              "PH_ROWS", "PH_NCOLS"))
# The MODE_ADJ GEMM has one phase per stride residue (prod(stride) of them, each a
# grid z slice) and a row table of phases x rows-per-phase x ROW_STRIDE ints. A stride
# far beyond the kernel (valid: the params allow up to 2**31 - 1) would make that
# millions of phases, mostly empty, and GBs of table: past these bounds the direct
# kernel, which needs no table, runs instead (_adj_gemm_fits).
GRID_Z_MAX = 65535
# Rows of blocks the direct kernels launch over their (image, channel) planes; a block
# loops over the planes beyond (CUDA's limit; tests lower it to reach the loop).
PLANE_ROWS_MAX = 65535
ADJ_TABLE_MAX_INTS = 1 << 24  # 64 MiB of int32 (twice that as int64 while built)
DW_TAPS = _K["DW_TAPS"]
# depthwise.cu's tiles (outputs per block) and its instantiations: (K, stride, flip)
# for KxK kernels; the flipped (adjoint) form for stride 1.
_D = kernel_constants("depthwise.cu")
DW_TILE_W, DW_TILE_H = _D["DW_TILE_W"], _D["DW_TILE_H"]
DEPTHWISE_TILED = ((3, 1, 0), (3, 2, 0), (5, 1, 0), (5, 2, 0), (3, 1, 1), (5, 1, 1))
# conv_direct instantiations: 0 = any kernel size, 3 = 3x3 in the last two dims
# (unrolled taps).
DIRECT_FIXED_K = (0, 3)
# The fused activation's codes (activation.cuh ACT_*), by ConvParams.activation.
_A = kernel_constants("activation.cuh")
ACT_CODES = {None: _A["ACT_NONE"], "relu": _A["ACT_RELU"], "leaky_relu": _A["ACT_LEAKY_RELU"],
             "sigmoid": _A["ACT_SIGMOID"], "tanh": _A["ACT_TANH"]}
# The (slope, code) kernel arguments of a store without activation (the kernels'
# last two parameters).
NO_ACT = (np.float64(0.0), np.int32(ACT_CODES[None]))


def act_args(p: ConvParams):
    """The (slope, code) kernel arguments of ``p``'s fused activation."""
    return _act_args(p.activation, p.negative_slope)


@lru_cache(maxsize=64)
def _act_args(activation, slope):  # numpy scalars are immutable: shared by every call
    return np.float64(slope), np.int32(ACT_CODES[activation])

# Test hooks (see tests/test_cuda_emu.py): force a convolution path or a split-K count.
_overrides = {"path": None, "splits": None, "tile": None}


@contextlib.contextmanager
def override(path=None, splits=None, tile=None):
    """Force ``path`` ("gemm" or "direct") for every convolution kernel (weight
    gradients included), the number of reduction slices (``splits``: split-K of every
    GEMM and of the direct weight gradient, the slices of the activation's backward
    pass), and/or the GEMM ``tile`` (a GEMM_TILES name) -- a testing aid."""
    old = dict(_overrides)
    _overrides.update(path=path, splits=splits, tile=tile)
    try:
        yield
    finally:
        _overrides.update(old)


# ----------------------------------------------------------------------------- sources


def name_expressions(file: str, ctype: str = None) -> tuple:
    """Every template instantiation of ``file`` (those for C type ``ctype`` only, when
    given), as NVRTC name expressions."""
    names = []
    for ct in CTYPES.values() if ctype is None else (ctype,):
        if file == "conv.cu":
            names += [_gemm_name(ct, m, tile) for m in (MODE_CORR, MODE_ADJ, MODE_WGRAD)
                      for tile in GEMM_TILES]
            names += [f"conv_direct<{ct},{m},{k},{k}>" for m in (MODE_CORR, MODE_ADJ)
                      for k in DIRECT_FIXED_K]
            names += [f"conv_wgrad_direct<{ct}>", f"sum_splits<{ct}>", f"channel_sum<{ct}>",
                      f"act_grad<{ct}>"]
        elif file == "pool.cu":
            names += [f"{k}<{ct}>" for k in POOL_KERNELS]
        elif file == "winograd.cu":
            names += winograd_launch.name_expressions(ct)
        elif file == "depthwise.cu":
            names += [f"conv_depthwise_tiled<{ct},{k},{s},{flip}>"
                      for k, s, flip in DEPTHWISE_TILED]
        else:
            raise ValueError(f"unknown kernel file {file!r}; expected one of {SOURCE_FILES}")
    return tuple(names)


def template_ctype(name: str) -> str:
    """The C type a kernel's name expression is instantiated for (its first template
    argument): ``conv_gemm<float,0,64,64,16,16,1>`` -> ``float``."""
    return name.split("<", 1)[1].split(",", 1)[0].rstrip(">")


def _gemm_name(ct, mode, tile):
    bm, bn, thr_m, bk, min_blocks = GEMM_TILES[tile]
    return f"conv_gemm<{ct},{mode},{bm},{bn},{thr_m},{bk},{min_blocks}>"


_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]*"([^"]+)"[ \t]*$', re.M)


@lru_cache(maxsize=None)
def source_text(file: str, directory: str = str(CUDA_DIR)) -> str:
    """``file`` with its local ``#include "..."`` files inlined (once each).

    CuPy keys its on-disk kernel cache on the source string and the options only, not
    on included headers: inlining makes a header change a cache miss, as it must be.
    The text depends on the files alone, so the key is stable across processes."""
    seen = set()

    def expand(name):
        path = Path(directory) / name
        if name in seen:
            return f"// (already included: {name})\n"
        seen.add(name)
        text = path.read_text()
        text = text.replace("#pragma once\n", "")
        return _INCLUDE.sub(lambda m: expand(m.group(1)).rstrip("\n"), text)

    return expand(file)


def cache_key(file: str, options=NVRTC_OPTIONS) -> str:
    """A hash of everything that determines the compiled module of ``file``."""
    h = hashlib.sha256()
    for part in (source_text(file), "\0".join(options), "\0".join(name_expressions(file))):
        h.update(part.encode())
        h.update(b"\0\0")
    return h.hexdigest()


# ----------------------------------------------------------------------------- conv


def _geo_array(rt, n, groups, ci, co, ishape, oshape, p: ConvParams, has_bias=False,
               splits=1, kchunk=0, ksplits=1):
    """The device array of ``_conv_geo``, built once per distinct geometry: packing it
    costs more host time than a small kernel takes on a GPU."""
    key = ("geo", n, groups, ci, co, ishape, oshape, p, bool(has_bias), splits, kchunk,
           ksplits)
    return rt.cached(key, lambda: (np.asarray(_conv_geo(
        n, groups, ci, co, ishape, oshape, p, has_bias, splits, kchunk, ksplits),
        np.int32),))[0]


def _conv_geo(n, groups, ci, co, ishape, oshape, p: ConvParams, has_bias=False, splits=1,
              kchunk=0, ksplits=1):
    """The ConvGeo struct of conv.cu's kernels (common.cuh), every field by name."""
    return pack_geometry(CONV_GEO, N=n, G=groups, CI=ci, CO=co,
                         I=lift_to_3d(ishape, 1), O=lift_to_3d(oshape, 1),
                         K=lift_to_3d(p.kernel, 1), S=lift_to_3d(p.stride, 1),
                         P=pads_before_3d(p.padding), D=lift_to_3d(p.dilation, 1),
                         HAS_BIAS=has_bias, SPLITS=splits, KCHUNK=kchunk, KSPLITS=ksplits)


def _taps(p: ConvParams):
    """(KT, 3) array: every tap's per-dim offset t*d, row-major over the kernel."""
    k, d = lift_to_3d(p.kernel, 1), lift_to_3d(p.dilation, 1)
    t = np.stack(np.meshgrid(*(np.arange(e) for e in k), indexing="ij"), -1).reshape(-1, 3)
    return t * np.asarray(d)


def _row_table(count, xoff, v, aoff):
    """``count`` rows of a row table (int64, ROW_STRIDE ints each): the data offset,
    the per-dim coordinate part and the A offset at their ROW_* places (conv.cu)."""
    rows = np.zeros((count, ROW_STRIDE), np.int64)
    rows[:, ROW_XOFF] = xoff
    rows[:, ROW_V0:ROW_V0 + 3] = v
    rows[:, ROW_AOFF] = aoff
    return rows


def _phase(u, q0, rows, ncols):
    """One phase of a phase table (PH_STRIDE ints, the PH_* fields of conv.cu)."""
    ph = [0] * PH_STRIDE
    ph[PH_U0:PH_U0 + 3] = u
    ph[PH_Q0:PH_Q0 + 3] = q0
    ph[PH_ROWS], ph[PH_NCOLS] = rows, ncols
    return ph


def _rows_corr(cg, ip, p):
    """Row table of MODE_CORR: k = (c, tap)."""
    taps = _taps(p)
    kt = len(taps)
    c = np.repeat(np.arange(cg), kt)
    return _row_table(cg * kt, c * ip, np.tile(taps, (cg, 1)), np.arange(cg * kt))


def _rows_wgrad(n, ci, co, ishape, oshape, p):
    """Row table of MODE_WGRAD: k = (n, output position)."""
    o3, s3 = np.asarray(lift_to_3d(oshape, 1)), np.asarray(lift_to_3d(p.stride, 1))
    p3 = np.asarray(pads_before_3d(p.padding))
    op, ip = int(np.prod(o3)), int(np.prod(lift_to_3d(ishape, 1)))
    pos = np.stack(np.meshgrid(*(np.arange(e) for e in o3), indexing="ij"), -1).reshape(-1, 3)
    nn = np.repeat(np.arange(n), op)
    return _row_table(n * op, nn * ci * ip, np.tile(pos * s3 - p3, (n, 1)),
                      nn * co * op + np.tile(np.arange(op), n))


@lru_cache(maxsize=128)
def _host_tables(mode, n, groups, ci, co, ishape, oshape, p: ConvParams):
    """The row and phase tables of a geometry (numpy int32), with the host-side facts
    a launch needs: (rows, phases, phase count, padded rows per phase, widest phase's
    column count)."""
    cg, m = ci // groups, co // groups
    ip = math.prod(ishape)
    o3 = lift_to_3d(oshape, 1)
    if mode == MODE_WGRAD:
        rows = _rows_wgrad(n, ci, co, ishape, oshape, p)
        phases = [_phase((1, 1, 1), (0, 0, 0), len(rows), cg * int(np.prod(p.kernel)))]
    elif mode == MODE_CORR:
        rows = _rows_corr(cg, ip, p)
        phases = [_phase(o3, (0, 0, 0), len(rows), n * int(np.prod(o3)))]
    else:
        taps = _taps(p)
        kt = len(taps)
        s3 = np.asarray(lift_to_3d(p.stride, 1))
        pad3 = pads_before_3d(p.padding)
        phases, blocks = [], []
        for r in np.ndindex(*s3):
            # Outputs q = u*s + q0 have (q + pad) mod s == r: taps with t*d = r (mod s).
            q0 = [int((r[d] - pad3[d]) % s3[d]) for d in range(3)]
            u = [max(0, -(-(o3[d] - q0[d]) // int(s3[d]))) for d in range(3)]
            sel = np.flatnonzero(np.all(taps % s3 == np.asarray(r), axis=1))
            c = np.repeat(np.arange(cg), len(sel))
            t = np.tile(sel, cg)
            # (q0 + pad - tap) / s, exact in this phase: the kernel adds it to u.
            v = (np.asarray(q0) + np.asarray(pad3) - taps[t]) // s3
            blk = _row_table(len(c), c * ip, v, c * m * kt + t)
            blocks.append(blk)
            phases.append(_phase(u, q0, len(blk), n * int(np.prod(u))))
        kp = max(1, max(len(b) for b in blocks))
        rows = np.zeros((len(blocks), kp, ROW_STRIDE), np.int64)
        rows[:, :, ROW_XOFF] = -1  # padding rows: never read (kend stops first)
        for i, b in enumerate(blocks):
            rows[i, :len(b)] = b
        rows = rows.reshape(-1, ROW_STRIDE)
    if len(rows) == 0:
        rows = np.full((1, ROW_STRIDE), -1, np.int64)
    if np.abs(rows).max() >= 2 ** 31:
        raise NotImplementedError("a tensor offset exceeds the int32 range of the CUDA "
                                  "kernels")
    kp = len(rows) // len(phases)
    return (rows.astype(np.int32).ravel(), np.asarray(phases, np.int32).ravel(), len(phases),
            kp, max(ph[PH_NCOLS] for ph in phases))


def _tables(rt, mode, n, groups, ci, co, ishape, oshape, p: ConvParams):
    """(device row table, device phase table, phase count, padded rows per phase,
    widest phase's columns), cached per geometry: no host work or transfer on a
    repeated call."""
    host = _host_tables(mode, n, groups, ci, co, ishape, oshape, p)
    rows, phases = rt.cached(("tables", mode, n, groups, ci, co, ishape, oshape, p),
                             lambda: host[:2])
    return (rows, phases) + host[2:]


def _adj_gemm_fits(groups, cg, p: ConvParams) -> bool:
    """Whether MODE_ADJ's stride-phase tables stay within GRID_Z_MAX phases (times the
    groups) and ADJ_TABLE_MAX_INTS ints; known before anything is built. Along a dim
    the taps of one phase are those t with t*d = r (mod s): every (s / gcd(s, d))-th
    tap, so at most ceil(k / (s / gcd(s, d))) of them (the widest phase)."""
    phases = math.prod(p.stride)
    if groups * phases > GRID_Z_MAX:
        return False
    taps = math.prod(-(-k // (s // math.gcd(s, d)))
                     for k, s, d in zip(p.kernel, p.stride, p.dilation))
    return phases * max(1, cg * taps) * ROW_STRIDE <= ADJ_TABLE_MAX_INTS


# The paths of the convolution kernels: "gemm" and "direct" run every case;
# "winograd" (winograd_launch) 2-d 3x3 stride-1 float32/float64 ones and
# "depthwise-tiled" (depthwise.cu) 2-d depthwise 3x3/5x5 ones, on request (algorithm=,
# or autotuning on a GPU): the automatic choice waits for their device timings
# (benchmarks/gpu_probe.py paths).
GENERAL_PATHS = ("gemm", "direct")
ALGORITHMS = GENERAL_PATHS + ("winograd", "depthwise-tiled")


def _depthwise_tiled_refusal(mode, cg, p: ConvParams):
    """Why depthwise.cu's kernel cannot run a convolution kernel, or None."""
    if mode == MODE_WGRAD:
        return "it computes outputs, not weight gradients"
    if p.rank != 2 or cg != 1:
        return (f"2-d depthwise convolutions only (one input channel per group; this is "
                f"{p.rank}-d with {cg})")
    sizes = {(k, s) for k, s, flip in DEPTHWISE_TILED if flip == (mode == MODE_ADJ)}
    k, s = p.kernel, p.stride
    if k[0] != k[1] or s[0] != s[1] or (k[0], s[0]) not in sizes or p.dilation != (1, 1):
        return (f"kernel {k}, stride {s}, dilation {p.dilation}: it has square kernel / "
                f"stride pairs {sorted(sizes)} with dilation 1"
                + (" (the adjoint: stride 1)" if mode == MODE_ADJ else ""))
    return None


def choose_path(mode, groups, m, cg, p: ConvParams, dtype=None):
    """(path, why) of one convolution kernel (``mode``: MODE_CORR, MODE_ADJ or
    MODE_WGRAD; ``m`` output and ``cg`` input channels per group; ``dtype`` when
    known): ``algorithm=``, else the ``override`` test hook, else the automatic choice
    -- GEMM, or direct for groups with few output channels (a GEMM tile would mostly
    idle)."""
    forced = p.algorithm if p.algorithm != "auto" else _overrides["path"]
    if forced:
        path, why = forced, "forced"
        if path == "winograd":
            refusal = winograd_launch.refusal(p, GRID_Z_MAX)
            if refusal is None and dtype is not None:
                refusal = winograd_launch.unsupported_dtype(dtype)
            if refusal:
                raise NotImplementedError(f"algorithm='winograd' cannot run here: {refusal}")
            why = "forced: F(2x2, 3x3), 16 GEMM slices"
        elif path == "depthwise-tiled":
            refusal = _depthwise_tiled_refusal(mode, cg, p)
            if refusal:
                raise NotImplementedError(f"algorithm='depthwise-tiled' cannot run here: "
                                          f"{refusal}")
            why = f"forced: {DW_TILE_W}x{DW_TILE_H} output tiles over a shared-memory patch"
    elif groups > 1 and m < 16:
        path, why = "direct", f"{groups} groups of {m} (< 16) output channels"
    else:
        path, why = "gemm", f"{m} output channels per group" if groups > 1 else "one group"
    if path == "gemm" and mode == MODE_ADJ and not _adj_gemm_fits(groups, cg, p):
        need = f"stride {p.stride} needs more stride phases than the GEMM's tables hold"
        if p.algorithm == "gemm":
            raise NotImplementedError(f"algorithm='gemm' cannot run here: {need}; the "
                                      f"direct path can")
        if forced == "gemm":
            raise ValueError(f"override(path='gemm'): {need}; use the direct path "
                             f"(override(path=None) picks it)")
        path, why = "direct", need
    return path, why


# The convolution kernels of each op: (result, mode, output and input channel roles),
# "o" the convolution's output channels (a transposed convolution's: w_shape[1] *
# groups), "c" x's channels -- as the op functions below launch them.
_OP_KERNELS = {
    "conv": (("y", MODE_CORR, "o", "c"),),
    "conv_backward": (("grad_x", MODE_ADJ, "c", "o"), ("grad_weight", MODE_WGRAD, "o", "c")),
    "conv_transpose": (("y", MODE_ADJ, "o", "c"),),
    "conv_transpose_backward": (("grad_x", MODE_CORR, "c", "o"),
                                ("grad_weight", MODE_WGRAD, "c", "o")),
}
_NEEDS = {"grad_x": "x", "grad_weight": "weight"}


def _override_state():
    """What the test hooks set that a launch's configuration depends on (part of every
    memoised plan's key)."""
    return _overrides["path"], _overrides["splits"], _overrides["tile"], PLANE_ROWS_MAX


def _plan(op, p: ConvParams, x_shape, w_shape, needs=("x", "weight"), dtype=None):
    """((result, path, why), ...) of the convolution kernels ``op`` runs (a backward
    op: those of ``needs``), from ``choose_path``: the one place the ops, ``explain``
    and ``last_paths`` take their paths from. A forced path that cannot run one of them
    raises here, before any kernel runs. Memoised (a refusal is raised afresh)."""
    return _plan_of(op, p, tuple(x_shape), tuple(w_shape), frozenset(needs), dtype,
                    _override_state())


@lru_cache(maxsize=1024)
def _plan_of(op, p, x_shape, w_shape, needs, dtype, overrides):
    g = p.groups
    channels = {"c": x_shape[1], "o": w_shape[1] * g if p.transposed else w_shape[0]}
    plan = []
    for name, mode, co, ci in _OP_KERNELS[op]:
        if name not in _NEEDS or _NEEDS[name] in needs:
            path, why = choose_path(mode, g, channels[co] // g, channels[ci] // g, p, dtype)
            plan.append((name, path, why))
    return tuple(plan)


def explain(op, p, dtype, x_shape=None, w_shape=None, needs=("x", "weight")):
    """Which path each kernel of ``op`` would run, and why (``cnnfast.explain``);
    then, with an activation, where it is fused (after a ". ", so that the
    "result path; why: ..." pairs stay as they are)."""
    if not isinstance(p, ConvParams):
        return None  # pooling: one path per op
    text = "; ".join(f"{'' if name == 'y' else name + ' '}{path}; why: {why}"
                     for name, path, why in _plan(op, p, x_shape, w_shape, needs,
                                                  np.dtype(dtype)))
    if p.activation is not None:
        if op.endswith("_backward"):
            text += (f". Fused: {p.activation}'s derivative, read from y, in one pass over "
                     f"grad_y that also sums grad_bias; the gradient kernels read its result")
        else:
            text += (f". Fused: {p.activation} in the final store of y, after the bias (the "
                     f"kernel's epilogue, or the split-K sum's)")
    return text


class PathRecord(threading.local):
    """A runtime's ``record``: the paths of each thread's last convolution call on it,
    by result (``"y"``, ``"grad_x"``, ``"grad_weight"``)."""

    def __init__(self):
        self.paths = {}


def last_paths(rt) -> dict:
    """The paths of this thread's last convolution call on runtime ``rt`` (None: no
    runtime yet, so no call), by result -- the CUDA backends' ``last_paths()``.
    Pooling calls record nothing, as on the other backends."""
    return {} if rt is None else rt.record.paths


def _record_paths(rt, op, p, x, w_shape, needs=("x", "weight")):
    """The paths of ``op`` on data ``x`` by result (``_plan``), recorded as this
    call's on ``rt``."""
    rt.record.paths = {}  # a refused call records nothing
    paths = {name: path for name, path, _ in _plan(op, p, x.shape, w_shape, needs, x.dtype)}
    rt.record.paths = paths
    return paths


def _pick_tile(m):
    """The GEMM tile for M rows (output channels per group)."""
    if _overrides["tile"]:
        return _overrides["tile"]
    return "sliver" if m <= 16 else "thin" if m <= 32 else "small16"


def _forward_like(rt, mode, path, a, x, bias, out, n, groups, ci, co, ishape, oshape, p,
                  act=NO_ACT):
    """out = MODE_CORR or MODE_ADJ of (a, x) (+ bias), then the activation ``act``
    (``act_args``; none by default: the input gradients), on ``path`` ("gemm",
    "direct" or "winograd", from ``_plan``)."""
    if out.size == 0:  # zero output channels: nothing to launch
        return
    if path == "winograd":
        def slice_gemm(u, v, prod, g16, ci16, co16, q):
            _forward_like(rt, MODE_CORR, "gemm", u, v, None, prod, 1, g16, ci16, co16,
                          q.in_shape, q.out_shape, q)

        winograd_launch.forward_like(rt, slice_gemm, mode == MODE_ADJ, a, x, bias, out, n,
                                     groups, ci, co, ishape, oshape, p, act)
        return
    ln = rt.memo(("forward", mode, path, out.dtype, n, groups, ci, co, ishape, oshape, p,
                  bias is not None, _override_state()),
                 lambda: _forward_launch(rt, mode, path, out.dtype, n, groups, ci, co, ishape,
                                         oshape, p, bias is not None))
    b = bias if bias is not None else a  # never read when HAS_BIAS is 0
    target = _slice_workspace(rt, out, ln.splits)
    # Split: the slices are raw sums; the activation comes with their sum.
    ln.kernel(ln.grid, ln.block, (a, x, b, target) + ln.tables + act)
    _add_slices(rt, target, out, ln.splits, act)


class Launch(NamedTuple):
    """One kernel launch of a convolution kernel, resolved once per geometry, path,
    dtype and device (the runtime's ``memo``): a repeated call replays it with its
    own arrays -- no index tables, tiles or grids worked out again (issue 18's host
    path). ``tables``: the device arrays after the operands; ``splits``: the
    reduction slices the kernel writes (added in order afterwards)."""

    kernel: object
    grid: tuple
    block: tuple
    tables: tuple
    splits: int


def _forward_launch(rt, mode, path, dtype, n, groups, ci, co, ishape, oshape, p, has_bias):
    """The Launch of ``_forward_like`` on path "depthwise-tiled", "direct" or "gemm"."""
    ct = ctype(dtype)
    m = co // groups
    geo_args = (rt, n, groups, ci, co, ishape, oshape, p, has_bias)
    if path == "depthwise-tiled":
        tiles = -(-oshape[0] // DW_TILE_H) * -(-oshape[1] // DW_TILE_W)
        kernel = rt.function("depthwise.cu", f"conv_depthwise_tiled<{ct},{p.kernel[0]},"
                                             f"{p.stride[0]},{int(mode == MODE_ADJ)}>")
        return Launch(kernel, (tiles, min(n * co, PLANE_ROWS_MAX)), (BLOCK_THREADS,),
                      (_geo_array(*geo_args),), 1)
    if path == "direct":
        op = math.prod(oshape)
        k = 3 if p.rank >= 2 and p.kernel[-2:] == (3, 3) else 0
        return Launch(rt.function("conv.cu", f"conv_direct<{ct},{mode},{k},{k}>"),
                      (-(-op // BLOCK_THREADS), min(n * co, PLANE_ROWS_MAX)), (BLOCK_THREADS,),
                      (_geo_array(*geo_args),), 1)
    rows, phases, nphase, kp, ncols = _tables(rt, mode, n, groups, ci, co, ishape, oshape, p)
    tile = _pick_tile(m)
    bm, bn = GEMM_TILES[tile][:2]
    blocks = -(-ncols // bn) * -(-m // bm) * groups * nphase
    # Too few output tiles to fill the GPU: split the reduction (slices >= 256).
    ksplits = _slice_count(blocks, kp, 256, 16, min(kp, 65535 // (groups * nphase)))
    geo = _geo_array(*geo_args, nphase, kp, ksplits)
    grid = (-(-ncols // bn), -(-m // bm), groups * nphase * ksplits)
    _check_grid(grid)
    return Launch(rt.function("conv.cu", _gemm_name(ct, mode, tile)), grid, (GEMM_THREADS,),
                  (geo, rows, phases), ksplits)


def _slice_count(blocks, length, min_slice, cap, limit):
    """Reduction slices for a launch of ``blocks`` output blocks over a reduction of
    ``length``: the override, else enough slices for two waves of blocks on a big GPU,
    each at least ``min_slice`` long and at most ``cap`` of them; within [1, limit]."""
    splits = _overrides["splits"]
    if splits is None:
        splits = min(-(-2 * TARGET_BLOCKS // blocks), length // min_slice, cap)
    return max(1, min(int(splits), limit))


def _slice_workspace(rt, out, splits):
    """Where the kernel writes: ``out`` itself, or one copy of it per slice."""
    return out if splits == 1 else rt.xp.empty((splits,) + out.shape, out.dtype)


def _add_slices(rt, slices, out, splits, act=NO_ACT):
    """out = the sum of the slices, added in slice order (deterministic), then the
    activation ``act``."""
    if splits > 1:
        grid, block = launch_1d(out.size)
        rt.function("conv.cu", f"sum_splits<{ctype(out.dtype)}>")(
            grid, block, (slices, out, np.int32(splits), np.int64(out.size)) + act)


def _check_grid(grid):
    if grid[0] >= 2 ** 31 or grid[1] > 65535 or grid[2] > 65535:
        raise NotImplementedError(f"launch grid {grid} exceeds CUDA's limits "
                                  f"(too many groups or output channels)")


def _weight_grad(rt, path, a, x, out, n, groups, ci, co, ishape, oshape, p):
    """out (CO, CI/G, *k) = MODE_WGRAD of grad_y-like ``a`` (N, CO, *oshape) and data
    ``x`` (N, CI, *ishape) on ``path`` (from ``_plan``): "direct", a per-channel
    reduction kernel, "gemm", split over K when there are few output tiles, or
    "winograd" (winograd_launch)."""
    if out.size == 0:
        return
    if path == "winograd":
        def slice_gemm(gt, v, sums, g16, ci16, co16, q):
            _weight_grad(rt, "gemm", gt, v, sums, 1, g16, ci16, co16, q.in_shape,
                         q.out_shape, q)

        winograd_launch.weight_grad(rt, slice_gemm, _add_slices, a, x, out, n, groups, ci,
                                    co, ishape, oshape, p)
        return
    ln = rt.memo(("wgrad", path, out.dtype, n, groups, ci, co, ishape, oshape, p,
                  _override_state()),
                 lambda: _weight_grad_launch(rt, path, out.dtype, n, groups, ci, co, ishape,
                                             oshape, p))
    target = _slice_workspace(rt, out, ln.splits)
    if path == "direct":
        ln.kernel(ln.grid, ln.block, (a, x, target) + ln.tables)
    else:  # conv_gemm: ``a`` again where the bias would be (never read)
        ln.kernel(ln.grid, ln.block, (a, x, a, target) + ln.tables + NO_ACT)
    _add_slices(rt, target, out, ln.splits)


def _weight_grad_launch(rt, path, dtype, n, groups, ci, co, ishape, oshape, p):
    """The Launch of ``_weight_grad`` on path "direct" or "gemm"."""
    ct = ctype(dtype)
    m = co // groups
    cg = ci // groups
    kt = math.prod(p.kernel)
    if path == "direct":
        blocks = co * cg * -(-kt // DW_TAPS)
        total = n * math.prod(oshape)
        # Slices of the (n, position) range, each >= 1024 long.
        splits = _slice_count(blocks, total, 1024, 64, min(total, 65535))
        grid = (co * cg, -(-kt // DW_TAPS), splits)
        _check_grid(grid)
        return Launch(rt.function("conv.cu", f"conv_wgrad_direct<{ct}>"), grid,
                      (BLOCK_THREADS,), (_geo_array(rt, n, groups, ci, co, ishape, oshape, p),),
                      splits)
    ncols = cg * kt
    k_total = n * math.prod(oshape)
    rows, phases, _, _, _ = _tables(rt, MODE_WGRAD, n, groups, ci, co, ishape, oshape, p)
    tile = _pick_tile(m)
    bm, bn = GEMM_TILES[tile][:2]
    tiles = -(-ncols // bn) * -(-m // bm) * groups
    splits = _slice_count(tiles, k_total, 256, k_total, min(k_total, 65535 // groups))
    kchunk = -(-k_total // splits)
    kchunk = -(-kchunk // GEMM_BK_MAX) * GEMM_BK_MAX
    splits = -(-k_total // kchunk)
    geo = _geo_array(rt, n, groups, ci, co, ishape, oshape, p, splits=splits, kchunk=kchunk)
    grid = (-(-ncols // bn), -(-m // bm), groups * splits)
    _check_grid(grid)
    return Launch(rt.function("conv.cu", _gemm_name(ct, MODE_WGRAD, tile)), grid,
                  (GEMM_THREADS,), (geo, rows, phases), splits)


def _bias_grad(rt, gy):
    ct = ctype(gy.dtype)
    n, c = gy.shape[:2]
    out = rt.xp.empty((c,), gy.dtype)
    if c == 0:
        return out
    plane = math.prod(gy.shape[2:])
    rt.function("conv.cu", f"channel_sum<{ct}>")((c,), (BLOCK_THREADS,), (
        gy, out, np.int32(n), np.int32(c), np.int64(plane)))
    return out


def _activation_grad(rt, gy, y, p: ConvParams):
    """(g, grad_bias): g = grad_y * the derivative of ``p.activation`` read from the
    activated output ``y`` (what the gradient kernels then read), and its per-channel
    sums, from one pass (act_grad). The pass is sliced along (n, position) when there
    are few channels, so that it fills the GPU; the slices' sums are added in order."""
    if y is None:
        raise ValueError(f"activation={p.activation!r} needs y=, the activated output of "
                         f"the forward call")
    check_int32_extent(y)
    ct = ctype(gy.dtype)
    n, c = gy.shape[:2]
    g = rt.xp.empty(gy.shape, gy.dtype)
    gb = rt.xp.zeros((c,), gy.dtype)
    if gy.size == 0:
        return g, gb
    plane = math.prod(gy.shape[2:])
    total = n * plane
    # Slices of >= 2048 elements (8 per thread), enough blocks for two waves.
    splits = _slice_count(c, total, 2048, 64, min(total, 65535))
    sums = gb if splits == 1 else rt.xp.empty((splits, c), gy.dtype)
    rt.function("conv.cu", f"act_grad<{ct}>")((c, splits), (BLOCK_THREADS,), (
        gy, y, g, sums, np.int32(n), np.int32(c), np.int64(plane)) + act_args(p))
    _add_slices(rt, sums, gb, splits)
    return g, gb


def _output_grad(rt, gy, y, p: ConvParams, needs):
    """(the grad_y the gradient kernels read, grad_bias or None): with an activation,
    both from ``_activation_grad``'s one pass; without, grad_y itself and its sums."""
    if p.activation is not None:
        g, gb = _activation_grad(rt, gy, y, p)
        return g, gb if "bias" in needs else None
    return gy, _bias_grad(rt, gy) if "bias" in needs else None


def conv(rt, x, w, b, p: ConvParams):
    check_int32_extent(x, w)
    n, c = x.shape[:2]
    o = w.shape[0]
    check_int32_extent((n, o) + tuple(p.out_shape))
    path = _record_paths(rt, "conv", p, x, w.shape)["y"]
    y = rt.xp.empty((n, o) + tuple(p.out_shape), x.dtype)
    _forward_like(rt, MODE_CORR, path, w, x, b, y, n, p.groups, c, o, p.in_shape,
                  p.out_shape, p, act_args(p))
    return y


def conv_backward(rt, gy, x, w, p: ConvParams, needs, y=None):
    check_int32_extent(gy, x, w)
    paths = _record_paths(rt, "conv_backward", p, x, w.shape, needs)
    n, c = x.shape[:2]
    o = w.shape[0]
    gy, gb = _output_grad(rt, gy, y, p, needs)
    gx = gw = None
    if "x" in needs:
        # The adjoint gathers grad_y (O channels) through w read as a transposed-conv
        # weight (O, C/G, *k): the two layouts coincide.
        gx = rt.xp.empty(x.shape, x.dtype)
        _forward_like(rt, MODE_ADJ, paths["grad_x"], w, gy, None, gx, n, p.groups, o, c,
                      p.out_shape, p.in_shape, p)
    if "weight" in needs:
        gw = rt.xp.empty(w.shape, w.dtype)
        _weight_grad(rt, paths["grad_weight"], gy, x, gw, n, p.groups, c, o, p.in_shape,
                     p.out_shape, p)
    return gx, gw, gb


def conv_transpose(rt, x, w, b, p: ConvParams):
    check_int32_extent(x, w)
    n, c = x.shape[:2]
    o = w.shape[1] * p.groups
    check_int32_extent((n, o) + tuple(p.out_shape))
    path = _record_paths(rt, "conv_transpose", p, x, w.shape)["y"]
    y = rt.xp.empty((n, o) + tuple(p.out_shape), x.dtype)
    _forward_like(rt, MODE_ADJ, path, w, x, b, y, n, p.groups, c, o, p.in_shape, p.out_shape,
                  p, act_args(p))
    return y


def conv_transpose_backward(rt, gy, x, w, p: ConvParams, needs, y=None):
    check_int32_extent(gy, x, w)
    paths = _record_paths(rt, "conv_transpose_backward", p, x, w.shape, needs)
    n, c = x.shape[:2]
    o = w.shape[1] * p.groups
    gy, gb = _output_grad(rt, gy, y, p, needs)
    gx = gw = None
    if "x" in needs:
        # A plain convolution of grad_y: w (C_in, C_out/G, *k) is a conv weight from
        # C_out to C_in channels.
        gx = rt.xp.empty(x.shape, x.dtype)
        _forward_like(rt, MODE_CORR, paths["grad_x"], w, gy, None, gx, n, p.groups, o, c,
                      p.out_shape, p.in_shape, p)
    if "weight" in needs:
        # Roles swapped: grad_y is the data read through the window, x the "output".
        gw = rt.xp.empty(w.shape, w.dtype)
        _weight_grad(rt, paths["grad_weight"], x, gy, gw, n, p.groups, o, c, p.out_shape,
                     p.in_shape, p)
    return gx, gw, gb


def unsupported(op, params, dtype):
    """Cases the CUDA kernels cannot launch (the ``unsupported`` hook of both CUDA
    backends); tensor sizes are checked again at launch."""
    if dtype not in CTYPES:
        return f"the CUDA kernels do not compute in {dtype}"
    groups = getattr(params, "groups", 1)
    if groups > 65535:
        return f"groups={groups} exceeds the 65535 groups one launch grid can hold"
    # max_pool_backward's params are x_shape itself.
    planes = ([tuple(params)[2:]] if op == "max_pool_backward" and params is not None else
              [getattr(params, name, ()) for name in ("in_shape", "out_shape")])
    if any(math.prod(shape) >= 2 ** 31 for shape in planes):
        return "a spatial plane of 2**31 elements or more (int32 indexing)"
    return None


def make_ops(rt_getter):
    """The eight kernels of a backend, bound to the runtime ``rt_getter()`` returns."""

    def bind(fn):
        def kernel(*args):
            return fn(rt_getter(), *args)

        kernel.__name__ = fn.__name__
        kernel.__doc__ = fn.__doc__
        return kernel

    return {name: bind(fn) for name, fn in (
        ("conv", conv), ("conv_backward", conv_backward), ("conv_transpose", conv_transpose),
        ("conv_transpose_backward", conv_transpose_backward), ("max_pool", max_pool),
        ("max_pool_backward", max_pool_backward), ("avg_pool", avg_pool),
        ("avg_pool_backward", avg_pool_backward))}
