"""``cnnfast demo``: every op on every available backend, checked against the numpy
reference, with the median time of each (a quick look, not a benchmark).

The GPU backend (cupy) is included when it is available: its inputs are copied to
the GPU once, its calls are timed up to the end of the GPU work, and its results
are copied back only for the check."""

from __future__ import annotations

import argparse
import time
from typing import Any, Callable, Dict, Iterable, List, Tuple

import numpy as np

from .common import positive_int, require_backend

HELP = "run every op on every available backend (the GPU too) and print times and errors"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch", type=positive_int, default=64,
                        help="batch size (default 64)")
    parser.add_argument("--repeat", type=positive_int, default=3,
                        help="timed runs per cell (default 3)")
    parser.add_argument("--backend", action="append",
                        help="backend to include (repeatable; default: every available "
                             "backend except cuda-emu, the CUDA emulator)")


def _inputs(rng: np.random.Generator, batch: int) -> Dict[str, Any]:
    """A Fashion-MNIST-sized layer's arrays for every op (numpy)."""
    import cnnfast as cf

    a = {"x": rng.standard_normal((batch, 16, 28, 28)).astype(np.float32),
         "w": rng.standard_normal((32, 16, 3, 3)).astype(np.float32) * 0.1,
         "wt": rng.standard_normal((16, 8, 4, 4)).astype(np.float32) * 0.1,
         "gy": rng.standard_normal((batch, 32, 28, 28)).astype(np.float32),
         "gt": rng.standard_normal((batch, 8, 56, 56)).astype(np.float32)}
    y, a["idx"] = cf.max_pool(a["x"], 2, return_indices=True, backend="numpy")
    a["gp"] = rng.standard_normal(y.shape).astype(np.float32)
    a["ga"] = cf.avg_pool(a["x"], 3, 2, 1, backend="numpy")
    return a


def _ops() -> Dict[str, Callable[[str, Dict[str, Any]], Any]]:
    """Each op: name -> function of (backend, its arrays)."""
    import cnnfast as cf

    return {
        "conv": lambda b, a: cf.conv(a["x"], a["w"], padding=1, backend=b),
        "conv_backward": lambda b, a: cf.conv_backward(a["gy"], a["x"], a["w"], padding=1,
                                                       backend=b),
        "conv_transpose": lambda b, a: cf.conv_transpose(a["x"], a["wt"], stride=2,
                                                         padding=1, backend=b),
        "conv_transpose_backward": lambda b, a: cf.conv_transpose_backward(
            a["gt"], a["x"], a["wt"], stride=2, padding=1, backend=b),
        "max_pool": lambda b, a: cf.max_pool(a["x"], 2, return_indices=True, backend=b),
        "max_pool_backward": lambda b, a: cf.max_pool_backward(a["gp"], a["idx"],
                                                               a["x"].shape, backend=b),
        "avg_pool": lambda b, a: cf.avg_pool(a["x"], 3, 2, 1, backend=b),
        "avg_pool_backward": lambda b, a: cf.avg_pool_backward(a["ga"], a["x"].shape, 3, 2,
                                                               1, backend=b),
    }


def _max_error(got: Any, ref: Any, to_host: Callable[[Any], np.ndarray] = np.asarray
               ) -> float:
    got = got if isinstance(got, tuple) else (got,)
    ref = ref if isinstance(ref, tuple) else (ref,)
    err = 0.0
    for g, r in zip(got, ref):
        if g is None:
            continue
        g = to_host(g)
        scale = max(1.0, float(np.abs(r).max()))
        err = max(err, float(np.abs(g.astype(np.float64) - r).max()) / scale)
    return err


def _arrays_for(name: str, host: Dict[str, Any]
                ) -> Tuple[Dict[str, Any], Callable[[], Any], Callable[[Any], Any]]:
    """``(inputs, sync, to_host)`` for backend ``name``: the inputs in the array kind
    it takes, the function that waits for its work to finish (a no-op on the CPU)
    and the one that copies a result back to numpy."""
    from ..registry import get_backend

    if get_backend(name).array != "cupy":
        return host, lambda: None, np.asarray
    import cupy

    stream = cupy.cuda.get_current_stream()
    return {k: cupy.asarray(v) for k, v in host.items()}, stream.synchronize, cupy.asnumpy


def default_backends(available: Iterable[str]) -> List[str]:
    """Every available backend but the CUDA emulator (slow, a correctness tool)."""
    return [b for b in available if b != "cuda-emu"]


def run(args: argparse.Namespace) -> int:
    import cnnfast as cf

    available = cf.available_backends()
    for name in args.backend or []:  # asked for by name: it must run here
        require_backend(name)
    names = args.backend or default_backends(available)
    rng = np.random.default_rng(0)
    host = _inputs(rng, args.batch)
    ops = _ops()
    print(f"cnnfast {cf.__version__} demo: batch {args.batch}, float32, "
          f"{cf.get_num_threads()} threads; median of {args.repeat} runs (ms), "
          f"max relative error vs the numpy reference")
    names = [n for n in names if n in available]
    arrays = {n: _arrays_for(n, host) for n in names}
    header = f"{'op':<26}" + "".join(f"{n:>20}" for n in names)
    print(header)
    print("-" * len(header))
    for op, fn in ops.items():
        reference = fn("numpy", host)
        cells = []
        for name in names:
            a, sync, to_host = arrays[name]
            try:
                fn(name, a)  # warm-up (compilation, caches)
                sync()
                times = []
                for _ in range(args.repeat):
                    t = time.perf_counter()
                    out = fn(name, a)
                    sync()
                    times.append(time.perf_counter() - t)
                err = _max_error(out, reference, to_host)
                cells.append(f"{1e3 * sorted(times)[len(times) // 2]:9.2f} ({err:.0e})")
            except NotImplementedError as exc:
                cells.append("n/a")
                print(f"  {name} {op}: {exc}")
        print(f"{op:<26}" + "".join(f"{c:>20}" for c in cells))
    return 0
