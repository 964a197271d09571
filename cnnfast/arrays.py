"""The one rule that tells numpy arrays from cupy arrays.

cupy is optional and slow to import, so a cupy array is recognised by the module of
its type, never by ``isinstance`` (which would need ``import cupy``).
"""

from __future__ import annotations

import numpy as np


def is_cupy_array(a) -> bool:
    """True when ``a`` is a cupy array (without importing cupy)."""
    return type(a).__module__.split(".")[0] == "cupy"


def array_kind(a, name: str) -> str:
    """``"numpy"`` or ``"cupy"``; a TypeError naming argument ``name`` for anything else."""
    if isinstance(a, np.ndarray):
        return "numpy"
    if is_cupy_array(a):
        return "cupy"
    raise TypeError(f"{name} must be a numpy or cupy array, got {type(a).__name__} "
                    f"(convert it with numpy.asarray first)")


def array_module(x):
    """``numpy`` or ``cupy``: the module that owns array ``x``."""
    if is_cupy_array(x):
        import cupy

        return cupy
    return np
