"""``cnnfast demo``: every op on every available backend, checked against the numpy
reference, with the median time of each (a quick look, not a benchmark)."""

from __future__ import annotations

import time

import numpy as np

from .common import positive_int, require_backend

HELP = "run every op on every available backend and print times and errors"


def add_arguments(parser):
    parser.add_argument("--batch", type=positive_int, default=64,
                        help="batch size (default 64)")
    parser.add_argument("--repeat", type=positive_int, default=3,
                        help="timed runs per cell (default 3)")
    parser.add_argument("--backend", action="append",
                        help="backend to include (repeatable; default: all available "
                             "CPU backends except cuda-emu)")


def _ops(rng, batch):
    """A Fashion-MNIST-sized layer of each op: name -> (function of backend)."""
    import cnnfast as cf

    x = rng.standard_normal((batch, 16, 28, 28)).astype(np.float32)
    w = rng.standard_normal((32, 16, 3, 3)).astype(np.float32) * 0.1
    wt = rng.standard_normal((16, 8, 4, 4)).astype(np.float32) * 0.1
    gy = rng.standard_normal((batch, 32, 28, 28)).astype(np.float32)
    gt = rng.standard_normal((batch, 8, 56, 56)).astype(np.float32)
    y, idx = cf.max_pool(x, 2, return_indices=True, backend="numpy")
    gp = rng.standard_normal(y.shape).astype(np.float32)
    return {
        "conv": lambda b: cf.conv(x, w, padding=1, backend=b),
        "conv_backward": lambda b: cf.conv_backward(gy, x, w, padding=1, backend=b),
        "conv_transpose": lambda b: cf.conv_transpose(x, wt, stride=2, padding=1, backend=b),
        "conv_transpose_backward": lambda b: cf.conv_transpose_backward(
            gt, x, wt, stride=2, padding=1, backend=b),
        "max_pool": lambda b: cf.max_pool(x, 2, return_indices=True, backend=b),
        "max_pool_backward": lambda b: cf.max_pool_backward(gp, idx, x.shape, backend=b),
        "avg_pool": lambda b: cf.avg_pool(x, 3, 2, 1, backend=b),
        "avg_pool_backward": lambda b: cf.avg_pool_backward(
            cf.avg_pool(x, 3, 2, 1, backend="numpy"), x.shape, 3, 2, 1, backend=b),
    }


def _max_error(got, ref):
    got = got if isinstance(got, tuple) else (got,)
    ref = ref if isinstance(ref, tuple) else (ref,)
    err = 0.0
    for g, r in zip(got, ref):
        if g is None:
            continue
        g = g.get() if hasattr(g, "get") else g
        scale = max(1.0, float(np.abs(r).max()))
        err = max(err, float(np.abs(g.astype(np.float64) - r).max()) / scale)
    return err


def run(args) -> int:
    import cnnfast as cf

    available = cf.available_backends()
    for name in args.backend or []:  # asked for by name: it must run here
        require_backend(name)
    names = args.backend or [b for b in available if b not in ("cuda-emu", "cupy")]
    rng = np.random.default_rng(0)
    ops = _ops(rng, args.batch)
    print(f"cnnfast {cf.__version__} demo: batch {args.batch}, float32, "
          f"{cf.get_num_threads()} threads; median of {args.repeat} runs (ms), "
          f"max relative error vs the numpy reference")
    names = [n for n in names if n in available]
    header = f"{'op':<26}" + "".join(f"{n:>20}" for n in names)
    print(header)
    print("-" * len(header))
    for op, fn in ops.items():
        reference = fn("numpy")
        cells = []
        for name in names:
            try:
                fn(name)  # warm-up (compilation, caches)
                times = []
                for _ in range(args.repeat):
                    t = time.perf_counter()
                    out = fn(name)
                    times.append(time.perf_counter() - t)
                err = _max_error(out, reference)
                cells.append(f"{1e3 * sorted(times)[len(times) // 2]:9.2f} ({err:.0e})")
            except NotImplementedError as exc:
                cells.append("n/a")
                print(f"  {name} {op}: {exc}")
        print(f"{op:<26}" + "".join(f"{c:>20}" for c in cells))
    return 0
