"""Launch code shared by the ``cupy`` backend and the ``cuda-emu`` backend.

The CUDA kernels live in ``cnnfast/cuda/*.cu`` (package data). This module knows
which template instantiations exist (the NVRTC ``name_expressions``), how the
operations are composed from kernels, and how geometry is packed for them; it talks
to the device through a small *runtime* object so that the very same code runs on a
GPU (``cnnfast.backends.cupy_backend``) and in the CPU emulator
(``cnnfast.backends.cuda_emu_backend``). A runtime provides:

* ``xp``: the array module (``cupy`` or ``numpy``);
* ``function(file, name_expression)``: a kernel callable as CuPy's
  ``k(grid, block, args, shared_mem=0)``;
* ``int32_array(values)``: a device array of int32 (geometry).

Scalars are always passed as explicitly typed numpy scalars: CuPy sends a bare Python
int as a 64-bit integer, which an ``int`` parameter would misread (the emulator
checks every argument against the kernel signature and rejects that mistake).
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from functools import lru_cache
from pathlib import Path

import numpy as np

from .params import ConvParams, PoolParams

CUDA_DIR = Path(__file__).resolve().parent / "cuda"
SOURCE_FILES = ("conv.cu", "pool.cu")
# Options given to NVRTC (CuPy adds the -arch of the current device itself). No
# fast-math: max pooling relies on NaN comparisons.
NVRTC_OPTIONS = ("--std=c++17",)

# float16 is stored as half_t (common.cuh) and accumulated in float.
CTYPES = {"float32": "float", "float64": "double", "float16": "half_t"}
DTYPES = tuple(CTYPES)

MODE_CORR, MODE_ADJ, MODE_WGRAD = 0, 1, 2
GEMM_BM, GEMM_BN, GEMM_BK, GEMM_THREADS = 64, 64, 16, 256

# Test hooks (see tests/test_cuda_emu.py): force a convolution path or a split-K count.
_overrides = {"path": None, "splits": None}


@contextlib.contextmanager
def override(path=None, splits=None):
    """Force ``path`` ("gemm" or "direct") for forward-type convolutions and/or the
    number of split-K slices of weight gradients (testing aid)."""
    old = dict(_overrides)
    _overrides.update(path=path, splits=splits)
    try:
        yield
    finally:
        _overrides.update(old)


# ----------------------------------------------------------------------------- sources


def name_expressions(file: str) -> tuple:
    """Every template instantiation of ``file``, as NVRTC name expressions."""
    names = []
    for ct in CTYPES.values():
        if file == "conv.cu":
            names += [f"conv_gemm<{ct},{m}>" for m in (MODE_CORR, MODE_ADJ, MODE_WGRAD)]
            names += [f"conv_direct<{ct},{m}>" for m in (MODE_CORR, MODE_ADJ)]
            names += [f"sum_splits<{ct}>", f"channel_sum<{ct}>"]
        elif file == "pool.cu":
            names += [f"{k}<{ct}>" for k in ("max_pool_fwd", "max_pool_bwd", "avg_pool_fwd",
                                             "avg_pool_bwd")]
        else:
            raise ValueError(f"unknown kernel file {file!r}; expected one of {SOURCE_FILES}")
    return tuple(names)


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


def _enum_fields(enum_name: str) -> dict:
    text = (CUDA_DIR / "common.cuh").read_text()
    body = re.search(r"enum\s+" + enum_name + r"\s*\{(.*?)\};", text, re.S).group(1)
    body = re.sub(r"//[^\n]*", "", body)
    names = [n.strip() for n in body.split(",") if n.strip()]
    return {n: i for i, n in enumerate(names)}


CONV_FIELDS = _enum_fields("ConvGeoField")
POOL_FIELDS = _enum_fields("PoolGeoField")


def _lift(values, fill):
    values = tuple(int(v) for v in values)
    return (fill,) * (3 - len(values)) + values


def _pack(fields: dict, prefix: str, **named):
    """The int32 geometry array: scalar fields by name, per-dim fields as 3-tuples."""
    out = [0] * fields[prefix + "COUNT"]
    for name, value in named.items():
        if isinstance(value, tuple):
            for d, v in enumerate(value):
                out[fields[f"{prefix}{name}{d}"]] = v
        else:
            out[fields[prefix + name]] = int(value)
    if max(abs(v) for v in out) >= 2 ** 31:
        raise NotImplementedError("a dimension exceeds the int32 range of the CUDA kernels")
    return out


def _launch_1d(total):
    block = 256 if total >= 256 else max(32, -(-total // 32) * 32)
    grid = max(1, min(-(-total // block), 1 << 20))  # grid-stride loops cover the rest
    return (grid,), (block,)


def _check_int32_extent(*arrays):
    for a in arrays:
        if a is not None and a.size >= 2 ** 31:
            raise NotImplementedError("tensors of 2**31 elements or more are not supported "
                                      "by the CUDA kernels (int32 spatial indexing)")


# ----------------------------------------------------------------------------- conv


def _conv_geo(n, groups, ci, co, ishape, oshape, p: ConvParams, has_bias=False, splits=1,
              kchunk=0):
    return _pack(CONV_FIELDS, "CG_", N=n, G=groups, CI=ci, CO=co, I=_lift(ishape, 1),
                 O=_lift(oshape, 1), K=_lift(p.kernel, 1), S=_lift(p.stride, 1),
                 P=_lift([lo for lo, _ in p.padding], 0), D=_lift(p.dilation, 1),
                 HAS_BIAS=has_bias, SPLITS=splits, KCHUNK=kchunk)


def _forward_like(rt, mode, a, x, bias, out, geo, groups, m_per_group, ncols):
    """out = MODE_CORR or MODE_ADJ of (a, x) (+ bias): GEMM, or direct for groups
    with few output channels (a 64-row tile would mostly idle)."""
    if out.size == 0:  # zero output channels: nothing to launch
        return
    ct = CTYPES[str(out.dtype)]
    path = _overrides["path"] or ("direct" if groups > 1 and m_per_group < 16 else "gemm")
    g = rt.int32_array(geo)
    b = bias if bias is not None else a  # never read when HAS_BIAS is 0
    if path == "direct":
        grid, block = _launch_1d(out.size)
        rt.function("conv.cu", f"conv_direct<{ct},{mode}>")(grid, block, (a, x, b, out, g))
    else:
        grid = (-(-ncols // GEMM_BN), -(-m_per_group // GEMM_BM), groups)
        _check_grid(grid)
        rt.function("conv.cu", f"conv_gemm<{ct},{mode}>")(grid, (GEMM_THREADS,),
                                                          (a, x, b, out, g))


def _check_grid(grid):
    if grid[0] >= 2 ** 31 or grid[1] > 65535 or grid[2] > 65535:
        raise NotImplementedError(f"launch grid {grid} exceeds CUDA's limits "
                                  f"(too many groups or output channels)")


def _weight_grad(rt, a, x, out, n, groups, ci, co, ishape, oshape, p):
    """out (CO, CI/G, *k) = MODE_WGRAD of grad_y-like ``a`` (N, CO, *oshape) and data
    ``x`` (N, CI, *ishape); split-K when there are few output tiles."""
    xp = rt.xp
    if out.size == 0:
        return
    ct = CTYPES[str(out.dtype)]
    m = co // groups
    ncols = (ci // groups) * int(np.prod(p.kernel))
    k_total = n * int(np.prod(oshape))
    tiles = -(-ncols // GEMM_BN) * -(-m // GEMM_BM) * groups
    splits = _overrides["splits"]
    if splits is None:
        # Enough blocks to fill a GPU (~100+ SMs), each slice at least 1024 long.
        splits = max(1, min(k_total // 1024, 256 // tiles if tiles < 256 else 1))
    splits = max(1, min(int(splits), k_total, 65535 // groups))
    kchunk = -(-k_total // splits)
    kchunk = -(-kchunk // GEMM_BK) * GEMM_BK
    splits = -(-k_total // kchunk)
    geo = _conv_geo(n, groups, ci, co, ishape, oshape, p, splits=splits, kchunk=kchunk)
    target = out if splits == 1 else xp.empty((splits, out.size), out.dtype)
    grid = (-(-ncols // GEMM_BN), -(-m // GEMM_BM), groups * splits)
    _check_grid(grid)
    rt.function("conv.cu", f"conv_gemm<{ct},{MODE_WGRAD}>")(
        grid, (GEMM_THREADS,), (a, x, a, target, rt.int32_array(geo)))
    if splits > 1:
        grid, block = _launch_1d(out.size)
        rt.function("conv.cu", f"sum_splits<{ct}>")(
            grid, block, (target, out, np.int32(splits), np.int64(out.size)))


def _bias_grad(rt, gy):
    ct = CTYPES[str(gy.dtype)]
    n, c = gy.shape[:2]
    out = rt.xp.empty((c,), gy.dtype)
    if c == 0:
        return out
    plane = int(np.prod(gy.shape[2:]))
    rt.function("conv.cu", f"channel_sum<{ct}>")((c,), (256,), (
        gy, out, np.int32(n), np.int32(c), np.int64(plane)))
    return out


def conv(rt, x, w, b, p: ConvParams):
    _check_int32_extent(x, w)
    n, c = x.shape[:2]
    o = w.shape[0]
    y = rt.xp.empty((n, o) + tuple(p.out_shape), x.dtype)
    _check_int32_extent(y)
    geo = _conv_geo(n, p.groups, c, o, p.in_shape, p.out_shape, p, has_bias=b is not None)
    _forward_like(rt, MODE_CORR, w, x, b, y, geo, p.groups, o // p.groups,
                  n * int(np.prod(p.out_shape)))
    return y


def conv_backward(rt, gy, x, w, p: ConvParams, needs):
    _check_int32_extent(gy, x, w)
    n, c = x.shape[:2]
    o = w.shape[0]
    gx = gw = gb = None
    if "x" in needs:
        # The adjoint gathers grad_y (O channels) through w read as a transposed-conv
        # weight (O, C/G, *k): the two layouts coincide.
        gx = rt.xp.empty(x.shape, x.dtype)
        geo = _conv_geo(n, p.groups, o, c, p.out_shape, p.in_shape, p)
        _forward_like(rt, MODE_ADJ, w, gy, None, gx, geo, p.groups, c // p.groups,
                      n * int(np.prod(p.in_shape)))
    if "weight" in needs:
        gw = rt.xp.empty(w.shape, w.dtype)
        _weight_grad(rt, gy, x, gw, n, p.groups, c, o, p.in_shape, p.out_shape, p)
    if "bias" in needs:
        gb = _bias_grad(rt, gy)
    return gx, gw, gb


def conv_transpose(rt, x, w, b, p: ConvParams):
    _check_int32_extent(x, w)
    n, c = x.shape[:2]
    o = w.shape[1] * p.groups
    y = rt.xp.empty((n, o) + tuple(p.out_shape), x.dtype)
    _check_int32_extent(y)
    geo = _conv_geo(n, p.groups, c, o, p.in_shape, p.out_shape, p, has_bias=b is not None)
    _forward_like(rt, MODE_ADJ, w, x, b, y, geo, p.groups, o // p.groups,
                  n * int(np.prod(p.out_shape)))
    return y


def conv_transpose_backward(rt, gy, x, w, p: ConvParams, needs):
    _check_int32_extent(gy, x, w)
    n, c = x.shape[:2]
    o = w.shape[1] * p.groups
    gx = gw = gb = None
    if "x" in needs:
        # A plain convolution of grad_y: w (C_in, C_out/G, *k) is a conv weight from
        # C_out to C_in channels.
        gx = rt.xp.empty(x.shape, x.dtype)
        geo = _conv_geo(n, p.groups, o, c, p.out_shape, p.in_shape, p)
        _forward_like(rt, MODE_CORR, w, gy, None, gx, geo, p.groups, c // p.groups,
                      n * int(np.prod(p.in_shape)))
    if "weight" in needs:
        # Roles swapped: grad_y is the data read through the window, x the "output".
        gw = rt.xp.empty(w.shape, w.dtype)
        _weight_grad(rt, x, gy, gw, n, p.groups, o, c, p.out_shape, p.in_shape, p)
    if "bias" in needs:
        gb = _bias_grad(rt, gy)
    return gx, gw, gb


# ----------------------------------------------------------------------------- pooling


def _pool_geo(nc, ishape, oshape, p: PoolParams = None, segments=1):
    if p is None:  # max-pool backward: only the plane sizes matter
        return _pack(POOL_FIELDS, "PG_", NC=nc, I=_lift(ishape, 1), O=_lift(oshape, 1),
                     K=(1, 1, 1), S=(1, 1, 1), D=(1, 1, 1), SEGMENTS=segments)
    return _pack(POOL_FIELDS, "PG_", NC=nc, I=_lift(ishape, 1), O=_lift(oshape, 1),
                 K=_lift(p.kernel, 1), S=_lift(p.stride, 1),
                 P=_lift([lo for lo, _ in p.padding], 0),
                 Q=_lift([hi for _, hi in p.padding], 0), D=_lift(p.dilation, 1),
                 INCLUDE_PAD=p.count_include_pad, DIVISOR=p.divisor_override or 0,
                 SEGMENTS=segments)


def max_pool(rt, x, p: PoolParams, return_indices):
    _check_int32_extent(x)
    ct = CTYPES[str(x.dtype)]
    nc = x.shape[0] * x.shape[1]
    y = rt.xp.empty(x.shape[:2] + tuple(p.out_shape), x.dtype)
    idx = rt.xp.empty(y.shape if return_indices else (1,), np.int64)
    grid, block = _launch_1d(y.size)
    rt.function("pool.cu", f"max_pool_fwd<{ct}>")(grid, block, (
        x, y, idx, rt.int32_array(_pool_geo(nc, p.in_shape, p.out_shape, p)),
        np.int32(bool(return_indices))))
    return y, (idx if return_indices else None)


def max_pool_backward(rt, gy, indices, x_shape):
    _check_int32_extent(gy)
    ct = CTYPES[str(gy.dtype)]
    nc = int(x_shape[0]) * int(x_shape[1])
    plane = int(np.prod(x_shape[2:]))
    gx = rt.xp.empty(tuple(x_shape), gy.dtype)
    _check_int32_extent(gx)
    # Slices per plane: enough threads to fill a GPU, each slice >= 16 cells.
    segments = max(1, min(-(-65536 // max(nc, 1)), plane // 16, 64))
    geo = _pool_geo(nc, x_shape[2:], gy.shape[2:], None, segments)
    grid, block = _launch_1d(nc * segments)
    rt.function("pool.cu", f"max_pool_bwd<{ct}>")(grid, block, (
        gy, rt.xp.ascontiguousarray(indices, np.int64), gx, rt.int32_array(geo)))
    return gx


def avg_pool(rt, x, p: PoolParams):
    _check_int32_extent(x)
    ct = CTYPES[str(x.dtype)]
    nc = x.shape[0] * x.shape[1]
    y = rt.xp.empty(x.shape[:2] + tuple(p.out_shape), x.dtype)
    grid, block = _launch_1d(y.size)
    rt.function("pool.cu", f"avg_pool_fwd<{ct}>")(grid, block, (
        x, y, rt.int32_array(_pool_geo(nc, p.in_shape, p.out_shape, p))))
    return y


def avg_pool_backward(rt, gy, p: PoolParams):
    _check_int32_extent(gy)
    ct = CTYPES[str(gy.dtype)]
    nc = gy.shape[0] * gy.shape[1]
    gx = rt.xp.empty(gy.shape[:2] + tuple(p.in_shape), gy.dtype)
    _check_int32_extent(gx)
    grid, block = _launch_1d(gx.size)
    rt.function("pool.cu", f"avg_pool_bwd<{ct}>")(grid, block, (
        gy, gx, rt.int32_array(_pool_geo(nc, p.in_shape, p.out_shape, p))))
    return gx


def unsupported(op, params, dtype):
    """Cases the CUDA kernels cannot launch (the ``unsupported`` hook of both CUDA
    backends); tensor sizes are checked again at launch."""
    if dtype not in CTYPES:
        return f"the CUDA kernels do not compute in {dtype}"
    groups = getattr(params, "groups", 1)
    if groups > 65535:
        return f"groups={groups} exceeds the 65535 groups one launch grid can hold"
    for name in ("in_shape", "out_shape"):
        shape = getattr(params, name, None)
        if shape is not None and int(np.prod(shape)) >= 2 ** 31:
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
