"""What the CUDA launchers (``cnnfast.backends.cuda.conv_launch`` for ``kernels/conv.cu``,
``cnnfast.backends.cuda.pool_launch`` for ``kernels/pool.cu``) share: the kernel
sources' folder, the dtypes, the constants read from the kernel sources, the geometry
structs and their packing, and the 1-d launch shape. Kept below both launchers, so
that neither imports the other's internals.

The launchers talk to the device through a *runtime* object, so that the very same
code runs on a GPU (``cnnfast.backends.cuda.cupy_backend``) and in the CPU emulator
(``cnnfast.backends.cuda.emu_backend``). A runtime provides:

* ``xp``: the array module (``cupy`` or ``numpy``);
* ``function(file, name_expression)``: a kernel callable as CuPy's
  ``k(grid, block, args, shared_mem=0)``;
* ``int32_array(values)``: a device array of int32 (geometry);
* ``cached(key, build)``: the device copies of the numpy int32 arrays ``build()``
  returns (a tuple), built once per ``key`` (index tables of a geometry);
* ``memo(key, build)``: whatever ``build()`` returns, built once per ``key`` on the
  current device (a convolution's resolved launches; an exception is not kept);
* ``record``: a ``conv_launch.PathRecord``, the paths of each thread's last
  convolution call (the backends' ``last_paths()``).

Scalars are always passed as explicitly typed numpy scalars: CuPy sends a bare Python
int as a 64-bit integer, which an ``int`` parameter would misread (the emulator
checks every argument against the kernel signature and rejects that mistake).
"""

from __future__ import annotations

import math
import re
from functools import lru_cache
from pathlib import Path

import numpy as np

CUDA_DIR = Path(__file__).resolve().parent / "kernels"

# float16 is stored as half_t (common.cuh) and accumulated in float.
CTYPES = {"float32": "float", "float64": "double", "float16": "half_t"}
DTYPES = tuple(CTYPES)
# numpy dtype -> C type, without str(dtype) (microseconds per call).
_CTYPE_OF = {np.dtype(k): v for k, v in CTYPES.items()}


def ctype(dtype) -> str:
    """The kernels' C type for a numpy (or cupy) dtype."""
    return _CTYPE_OF[dtype]


# ----------------------------------------------------------------------------- constants

_COMMENT = re.compile(r"//[^\n]*|/\*.*?\*/", re.S)
_DEFINE = re.compile(r"^[ \t]*#[ \t]*define[ \t]+(\w+)[ \t]+([-+]?(?:0[xX][0-9a-fA-F]+|\d+))"
                     r"[uUlL]*[ \t]*$", re.M)
_ENUM = re.compile(r"\benum\s+(\w*)\s*\{(.*?)\}\s*;", re.S)


@lru_cache(maxsize=None)
def _parse(file: str):
    """({name: value} of the integer #defines and enumerators of ``file``, {enum name:
    {enumerator: value} in declaration order}) -- the one copy of every constant the
    host shares with the kernels."""
    text = _COMMENT.sub("", (CUDA_DIR / file).read_text())
    consts, enums = {}, {}

    def add(name, value):
        if name in consts:
            raise ValueError(f"{file}: {name} is defined twice")
        consts[name] = value

    for m in _DEFINE.finditer(text):
        add(m.group(1), int(m.group(2), 0))
    for m in _ENUM.finditer(text):
        members, value = {}, 0
        for item in filter(None, (s.strip() for s in m.group(2).split(","))):
            name, _, expr = (s.strip() for s in item.partition("="))
            if expr:
                if expr in consts:
                    value = consts[expr]
                elif re.fullmatch(r"[-+]?(0[xX][0-9a-fA-F]+|\d+)", expr):
                    value = int(expr, 0)
                else:
                    raise ValueError(f"{file}: enumerator {name} = {expr}: the host reads "
                                     f"integer literals and earlier names only")
            members[name] = value
            add(name, value)
            value += 1
        if m.group(1):
            enums[m.group(1)] = members
    return consts, enums


def kernel_constants(file: str) -> dict:
    """The integer ``#define``s and enumerators of ``kernels/<file>`` by name (its own,
    not those of the files it includes)."""
    return dict(_parse(file)[0])


# ----------------------------------------------------------------------------- geometry


class GeoLayout:
    """The int32 layout of a geometry struct of common.cuh: the enumerators of its
    field enum, in order, each the index of one field; ``<prefix>COUNT`` ends the
    list. Fields ``X0``, ``X1``, ``X2`` are the per-dim field ``X``."""

    def __init__(self, enum: str, prefix: str):
        members = _parse("common.cuh")[1][enum]
        self.enum, self.prefix = enum, prefix
        self.size = members[prefix + "COUNT"]
        self.index = {n[len(prefix):]: v for n, v in members.items() if n != prefix + "COUNT"}
        if sorted(self.index.values()) != list(range(self.size)):
            raise ValueError(f"common.cuh: enum {enum} must number its fields 0, 1, ... "
                             f"{prefix}COUNT")

    def __repr__(self):
        return f"GeoLayout({self.enum!r}, {self.size} fields)"


CONV_GEO = GeoLayout("ConvGeoField", "CG_")
POOL_GEO = GeoLayout("PoolGeoField", "PG_")


def pack_geometry(layout: GeoLayout, **named) -> tuple:
    """The int32 geometry array of ``layout`` (a tuple of ints): every field by name,
    scalar fields as ints (or bools), per-dim fields as 3-tuples. Every field must be
    given, and nothing else: a field added to common.cuh that a launcher does not
    fill is an error here, not a zero in the kernels."""
    out = [0] * layout.size
    filled = set()
    for name, value in named.items():
        if isinstance(value, (tuple, list)):
            fields = [f"{name}{d}" for d in range(len(value))]
            if len(value) != 3 or not all(f in layout.index for f in fields):
                raise ValueError(f"{layout.enum}: {name}={value!r} is not a per-dim field "
                                 f"(fields {name}0, {name}1, {name}2)")
            values = value
        else:
            if name not in layout.index:
                raise ValueError(f"{layout.enum} has no field {layout.prefix}{name}")
            fields, values = [name], [value]
        for f, v in zip(fields, values):
            out[layout.index[f]] = int(v)
        filled.update(fields)
    missing = set(layout.index) - filled
    if missing:
        raise ValueError(f"{layout.enum}: fields not given: "
                         f"{', '.join(sorted(layout.prefix + f for f in missing))}")
    if max(abs(v) for v in out) >= 2 ** 31:
        raise NotImplementedError("a dimension exceeds the int32 range of the CUDA kernels")
    return tuple(out)


# ----------------------------------------------------------------------------- launches

BLOCK_THREADS = kernel_constants("common.cuh")["BLOCK_THREADS"]


def launch_1d(total):
    """(grid, block) of a grid-stride kernel over ``total`` elements: blocks of
    BLOCK_THREADS, or fewer (whole warps) for a smaller total."""
    block = BLOCK_THREADS if total >= BLOCK_THREADS else max(32, -(-total // 32) * 32)
    grid = max(1, min(-(-total // block), 1 << 20))  # grid-stride loops cover the rest
    return (grid,), (block,)


def check_int32_extent(*arrays):
    """Arrays, or the shapes of those about to be allocated (checked first: no
    allocation of a tensor the kernels cannot index)."""
    for a in arrays:
        size = math.prod(a) if isinstance(a, tuple) else (0 if a is None else a.size)
        if size >= 2 ** 31:
            raise NotImplementedError("tensors of 2**31 elements or more are not supported "
                                      "by the CUDA kernels (int32 spatial indexing)")
