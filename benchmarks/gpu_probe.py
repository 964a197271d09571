"""Two diagnostics of the cupy backend for tuning sessions on a GPU.

    python benchmarks/gpu_probe.py overhead   # host time per call, and where it goes
    python benchmarks/gpu_probe.py tiles      # every GEMM tile forced, per layer shape

``overhead`` times tiny calls (the GPU is idle, so a call costs what the host spends
on it) and prints a cProfile of them; ``tiles`` times each conv_gemm tile shape on
the ResNet layers at batch 8 and 32, so the tile heuristic of
``cnnfast.backends.cuda.conv_launch`` can be checked against measurements.
"""

from __future__ import annotations

import cProfile
import pstats
import sys
import time

import numpy as np


def _timed(fn, reps):
    import cupy as cp

    fn()
    cp.cuda.Device().synchronize()
    start, end = cp.cuda.Event(), cp.cuda.Event()
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    end.synchronize()
    return cp.cuda.get_elapsed_time(start, end) / reps * 1e3  # us


def overhead():
    import cupy as cp

    import cnnfast

    x = cp.zeros((2, 4, 8, 8), cp.float32)
    w = cp.zeros((4, 4, 3, 3), cp.float32)
    y = cnnfast.conv2d(x, w, padding=1, backend="cupy")
    calls = {
        "cupy elementwise x + 1 (floor)": lambda: x + 1,
        "max_pool2d": lambda: cnnfast.max_pool2d(x, 2, backend="cupy"),
        "avg_pool2d": lambda: cnnfast.avg_pool2d(x, 2, backend="cupy"),
        "conv2d": lambda: cnnfast.conv2d(x, w, padding=1, backend="cupy"),
        "conv_backward x,w": lambda: cnnfast.conv_backward(y, x, w, 1, 1, needs=("x", "weight"),
                                                           backend="cupy"),
    }
    for name, fn in calls.items():
        print(f"{name:32s} {_timed(fn, 2000):8.1f} us per call", flush=True)
    fn = calls["max_pool2d"]
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(3000):
        fn()
    prof.disable()
    pstats.Stats(prof).sort_stats("tottime").print_stats(22)


def tiles():
    import cupy as cp

    import cnnfast
    from cnnfast.backends.cuda import conv_launch

    rng = np.random.default_rng(0)
    layers = [  # (name, C, H, W, O, k, stride, pad)
        ("3x3 c64 56", 64, 56, 56, 64, 3, 1, 1),
        ("3x3 c128 28", 128, 28, 28, 128, 3, 1, 1),
        ("3x3 c256 14", 256, 14, 14, 256, 3, 1, 1),
        ("1x1 c256 14", 256, 14, 14, 256, 1, 1, 0),
        ("3x3 c64 13", 64, 13, 13, 64, 3, 1, 0),
    ]
    print("us per call; rows: layer, batch, op; columns: tile (auto = the heuristic)")
    names = ["auto"] + list(conv_launch.GEMM_TILES)
    print(f"{'':28s}" + "".join(f"{t:>10s}" for t in names))
    for name, c, h, w_, o, k, s, pad in layers:
        for n in (8, 32):
            x = cp.asarray(rng.standard_normal((n, c, h, w_)).astype(np.float32))
            w = cp.asarray(rng.standard_normal((o, c, k, k)).astype(np.float32))
            y = cnnfast.conv2d(x, w, stride=s, padding=pad, backend="cupy")
            gy = cp.asarray(rng.standard_normal(y.shape).astype(np.float32))
            ops = {
                "fwd": lambda: cnnfast.conv2d(x, w, stride=s, padding=pad, backend="cupy"),
                "bwd-x": lambda: cnnfast.conv_backward(gy, x, w, s, pad, needs=("x",),
                                                       backend="cupy"),
                "bwd-w": lambda: cnnfast.conv_backward(gy, x, w, s, pad, needs=("weight",),
                                                       backend="cupy"),
            }
            for op, fn in ops.items():
                row = []
                for tile in names:
                    with conv_launch.override(path="gemm", tile=None if tile == "auto" else tile):
                        row.append(_timed(fn, 20))
                print(f"{name:14s} n{n:<3d} {op:8s}" + "".join(f"{t:10.1f}" for t in row),
                      flush=True)


if __name__ == "__main__":
    {"overhead": overhead, "tiles": tiles}[sys.argv[1] if len(sys.argv) > 1 else "overhead"]()
