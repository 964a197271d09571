"""``cnnfast warmup``: compile every numba kernel ahead of time.

Numba compiles a kernel on its first call with a new signature (dtype), then
stores the machine code in its on-disk cache (``cache=True``), so a later process
loads it instead of compiling. This command makes those first calls once, with
tiny inputs that reach every code path (product and direct correlation, the
strided gather, both gradients, both poolings with and without indices) in every
dtype, so that no user call pays the compile time.
"""

from __future__ import annotations

import argparse
import time
from typing import Any, Callable, Sequence, TypedDict

HELP = "compile (and cache on disk) every numba kernel ahead of time"


class _Backend(TypedDict):
    """The keyword arguments every warm-up call shares (a type for ``**kw``)."""

    backend: str


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dtype", choices=("float32", "float64", "all"), default="all",
                        help="dtypes to compile for (default: all)")
    parser.add_argument("--quiet", action="store_true", help="print nothing on success")


def warm_numba(dtypes: Sequence[str] = ("float32", "float64"),
               log: Callable[..., Any] = print) -> float:
    """Call every numba kernel once per dtype; returns the seconds it took."""
    import numpy as np

    from .. import api

    start = time.perf_counter()
    for name in dtypes:
        t0 = time.perf_counter()
        dt = np.dtype(name)
        rng = np.random.default_rng(0)
        x = rng.standard_normal((1, 4, 6, 6)).astype(dt)
        kw: _Backend = {"backend": "numba"}
        # Product path (4 output channels per group) and direct path (depthwise),
        # stride 1 (input gradient through the product) and stride 2 (the gather).
        for w_shape, groups, stride in (((4, 4, 3, 3), 1, 1), ((4, 1, 3, 3), 4, 2),
                                        ((4, 4, 3, 3), 1, 2), ((4, 1, 3, 3), 4, 1)):
            w = rng.standard_normal(w_shape).astype(dt)
            b = np.zeros(w_shape[0], dt)
            y = api.conv(x, w, b, stride=stride, padding=1, groups=groups, **kw)
            api.conv_backward(y, x, w, stride=stride, padding=1, groups=groups, **kw)
            wt = rng.standard_normal((4, 4 // groups) + w_shape[2:]).astype(dt)
            yt = api.conv_transpose(x, wt, b, stride=stride, padding=1, groups=groups, **kw)
            api.conv_transpose_backward(yt, x, wt, stride=stride, padding=1, groups=groups,
                                        **kw)
        # the fused activation's own kernels (the pass over y in the backward)
        w = rng.standard_normal((4, 4, 3, 3)).astype(dt)
        y = api.conv(x, w, padding=1, activation="relu", **kw)
        api.conv_backward(y, x, w, padding=1, activation="relu", y=y, **kw)
        y, idx = api.max_pool(x, 2, return_indices=True, **kw)
        api.max_pool(x, 2, **kw)
        api.max_pool_backward(y, idx, x.shape, **kw)
        for override in (None, 3):
            ya = api.avg_pool(x, 3, 2, 1, divisor_override=override, **kw)
            api.avg_pool_backward(ya, x.shape, 3, 2, 1, divisor_override=override, **kw)
        log(f"numba {name}: {time.perf_counter() - t0:.1f} s")
    return time.perf_counter() - start


def run(args: argparse.Namespace) -> int:
    from ..registry import get_backend

    backend = get_backend("numba")
    if not backend.available:
        print(f"numba backend unavailable: {backend.reason}")
        return 1
    dtypes = ("float32", "float64") if args.dtype == "all" else (args.dtype,)
    log = (lambda *a: None) if args.quiet else print
    total = warm_numba(dtypes, log)
    log(f"numba kernels ready in {total:.1f} s (cached on disk for later processes)")
    return 0
