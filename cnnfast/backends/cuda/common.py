"""What the CUDA conv and pool launchers (``cnnfast.backends.cuda.conv_launch``,
``cnnfast.backends.cuda.pool_launch``) share: the kernel sources' folder, the dtypes, and the
packing of geometry into the int32 arrays the kernels read.

Kept below both launcher modules so that neither imports the other's internals.
"""

from __future__ import annotations

import math
import re
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


# ----------------------------------------------------------------------------- geometry


def _enum_fields(enum_name: str) -> dict:
    text = (CUDA_DIR / "common.cuh").read_text()
    body = re.search(r"enum\s+" + enum_name + r"\s*\{(.*?)\};", text, re.S).group(1)
    body = re.sub(r"//[^\n]*", "", body)
    names = [n.strip() for n in body.split(",") if n.strip()]
    return {n: i for i, n in enumerate(names)}


CONV_FIELDS = _enum_fields("ConvGeoField")
POOL_FIELDS = _enum_fields("PoolGeoField")


def pack_geometry(fields: dict, prefix: str, **named):
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


def launch_1d(total):
    block = 256 if total >= 256 else max(32, -(-total // 32) * 32)
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
