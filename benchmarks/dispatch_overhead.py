"""Host time of a call: the whole ``cnnfast`` call against its kernel alone, on small
shapes where the Python around the kernel is most of the call.

    python benchmarks/dispatch_overhead.py --backend cpp
    python benchmarks/dispatch_overhead.py --backend cpp,numba --number 2000 --repeat 9

Per op: ``call`` is the public function (validation, backend choice and the kernel, or
the call's plan and the kernel once the signature has been seen, see
``cnnfast.plans``); ``kernel`` is the backend's kernel function called directly with
the plan's params (where this cnnfast has plans); ``host`` is their difference. Each
figure is the median over ``--repeat`` rounds of the mean over ``--number`` calls;
the ops are interleaved round by round. To compare two versions of cnnfast, run this
script under each (``PYTHONPATH=<tree>``) in alternating processes.
"""

from __future__ import annotations

import argparse
import importlib
import platform
import statistics
import time
from pathlib import Path

import numpy as np

import cnnfast as cf

# A cnnfast from before plans (an A/B against an older tree): the call column only.
plans = (importlib.import_module("cnnfast.plans")
         if (Path(cf.__file__).parent / "plans.py").exists() else None)


def _cases(rng):
    f32 = np.float32
    x = rng.standard_normal((1, 4, 8, 8)).astype(f32)
    w = rng.standard_normal((4, 4, 3, 3)).astype(f32)
    b = rng.standard_normal(4).astype(f32)
    gy = rng.standard_normal((1, 4, 8, 8)).astype(f32)
    xp = rng.standard_normal((1, 8, 8, 8)).astype(f32)
    yp, idx = cf.max_pool(xp, 2, return_indices=True, backend="numpy")
    gp = np.ones_like(yp)
    xg = rng.standard_normal((1, 8, 7, 7)).astype(f32)
    xs = rng.standard_normal((8, 512, 7, 7)).astype(f32)  # the bench's global_avg_pool
    return [
        ("conv", "1x4x8x8 k3 p1", lambda be: cf.conv(x, w, b, padding=1, backend=be)),
        ("conv_backward", "1x4x8x8 k3 p1",
         lambda be: cf.conv_backward(gy, x, w, padding=1, backend=be)),
        ("conv_transpose", "1x4x8x8 k3 s2",
         lambda be: cf.conv_transpose(x, w, b, stride=2, backend=be)),
        ("max_pool", "1x8x8x8 k2", lambda be: cf.max_pool(xp, 2, backend=be)),
        ("max_pool_backward", "1x8x4x4 -> 8x8",
         lambda be: cf.max_pool_backward(gp, idx, xp.shape, backend=be)),
        ("avg_pool", "1x8x7x7 global", lambda be: cf.avg_pool(xg, 7, backend=be)),
        ("avg_pool", "8x512x7x7 global", lambda be: cf.avg_pool(xs, 7, backend=be)),
        ("avg_pool_backward", "1x8x4x4 -> 8x8",
         lambda be: cf.avg_pool_backward(gp, xp.shape, 2, backend=be)),
    ]


def _kernel_only(op, call, backend):
    """The kernel of the call's plan, called as the dispatcher calls it, or None."""
    if plans is None:
        return None
    plans.clear()
    call(backend)
    (plan,) = plans._plans.values()
    captured = {}
    real = plan.ops[op]

    def spy(*args):
        captured["args"] = args
        return real(*args)

    plan.ops[op] = spy
    try:
        call(backend)
    finally:
        plan.ops[op] = real
    args = captured["args"]
    return lambda: real(*args)


def _mean_us(fn, number):
    t = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - t) / number * 1e6


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="cpp", help="comma-separated CPU backends")
    ap.add_argument("--number", type=int, default=1000, help="calls per round")
    ap.add_argument("--repeat", type=int, default=7, help="rounds (the median is shown)")
    args = ap.parse_args(argv)
    cases = _cases(np.random.default_rng(0))
    print(f"cnnfast {cf.__version__}, {platform.processor() or platform.machine()}, "
          f"{cf.get_num_threads()} thread(s); plans: {'yes' if plans else 'no'}")
    print(f"{'backend':8s} {'op':18s} {'shape':18s} {'call us':>8s} {'kernel us':>10s} "
          f"{'host us':>8s}")
    for backend in args.backend.split(","):
        timers = []
        for op, shape, call in cases:
            kernel = _kernel_only(op, call, backend)
            timers.append((op, shape, lambda c=call: c(backend), kernel))
        for _, _, fn, kernel in timers:  # warm up (numba compiles, caches fill)
            fn()
            if kernel:
                kernel()
        samples = {i: ([], []) for i in range(len(timers))}
        for _ in range(args.repeat):
            for i, (_, _, fn, kernel) in enumerate(timers):
                samples[i][0].append(_mean_us(fn, args.number))
                if kernel:
                    samples[i][1].append(_mean_us(kernel, args.number))
        for i, (op, shape, _, kernel) in enumerate(timers):
            call_us = statistics.median(samples[i][0])
            if kernel:
                kern_us = statistics.median(samples[i][1])
                tail = f"{kern_us:10.1f} {call_us - kern_us:8.1f}"
            else:
                tail = f"{'-':>10s} {'-':>8s}"
            print(f"{backend:8s} {op:18s} {shape:18s} {call_us:8.1f} {tail}")


if __name__ == "__main__":
    main()
