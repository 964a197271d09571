"""Two diagnostics of the cupy backend for tuning sessions on a GPU.

    python benchmarks/gpu_probe.py overhead   # host time per call, and where it goes
    python benchmarks/gpu_probe.py tiles      # every GEMM tile forced, per layer shape
    python benchmarks/gpu_probe.py paths      # gemm vs winograd on the 3x3 stride-1 layers

``overhead`` times tiny calls (the GPU is idle, so a call costs what the host spends
on it) and prints a cProfile of them; ``tiles`` times each conv_gemm tile shape on
the ResNet layers at batch 8 and 32, so the tile heuristic of
``cnnfast.backends.cuda.conv_launch`` can be checked against measurements; ``paths``
times the implicit GEMM against the Winograd F(2x2, 3x3) path (``algorithm=``) and
torch/cuDNN on the 3x3 stride-1 layers of the bench suite and the seed CNN, forward and
both gradients, float32 with TF32 off -- the figures the automatic choice of
``conv_launch.choose_path`` waits for.
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


def paths():
    import cupy as cp
    import torch

    import cnnfast

    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    rng = np.random.default_rng(0)
    layers = [  # (name, C, H, W, O, pad)
        ("resnet c64 56", 64, 56, 56, 64, 1),
        ("resnet c128 28", 128, 28, 28, 128, 1),
        ("resnet c256 14", 256, 14, 14, 256, 1),
        ("resnet c512 7", 512, 7, 7, 512, 1),
        ("seed conv2 13", 64, 13, 13, 64, 0),
        ("wide c32 112", 32, 112, 112, 32, 1),
    ]
    print("us per call (CUDA events, 20 calls after one warm-up); float32, TF32 off")
    print("(rel err: max |winograd - gemm| / max |gemm|, the results on the device)")
    print(f"{'':30s}{'gemm':>10s}{'winograd':>10s}{'cudnn':>10s}{'gemm/wino':>10s}"
          f"{'rel err':>10s}")
    for name, c, h, w_, o, pad in layers:
        for n in (8, 32, 64):
            x = cp.asarray(rng.standard_normal((n, c, h, w_)).astype(np.float32))
            w = cp.asarray(rng.standard_normal((o, c, 3, 3)).astype(np.float32))
            y = cnnfast.conv2d(x, w, padding=pad, backend="cupy")
            gy = cp.asarray(rng.standard_normal(y.shape).astype(np.float32))
            tx, tw, tgy = (torch.as_tensor(a, device="cuda") for a in (x, w, gy))

            def ours(op, algo):
                if op == "fwd":
                    return lambda: cnnfast.conv2d(x, w, padding=pad, backend="cupy",
                                                  algorithm=algo)
                needs = ("x",) if op == "bwd-x" else ("weight",)
                return lambda: cnnfast.conv_backward(gy, x, w, 1, pad, needs=needs,
                                                     backend="cupy", algorithm=algo)

            cudnn = {
                "fwd": lambda: torch.nn.functional.conv2d(tx, tw, padding=pad),
                "bwd-x": lambda: torch.nn.grad.conv2d_input(tx.shape, tw, tgy, padding=pad),
                "bwd-w": lambda: torch.nn.grad.conv2d_weight(tx, tw.shape, tgy, padding=pad),
            }
            for op in ("fwd", "bwd-x", "bwd-w"):
                g, wi = _timed(ours(op, "gemm"), 20), _timed(ours(op, "winograd"), 20)
                t = _timed(cudnn[op], 20)
                ref, got = (r if op == "fwd" else r[0] if op == "bwd-x" else r[1]
                            for r in (ours(op, "gemm")(), ours(op, "winograd")()))
                err = float(cp.abs(got - ref).max() / cp.abs(ref).max())
                print(f"{name:16s} n{n:<3d} {op:8s}{g:10.1f}{wi:10.1f}{t:10.1f}{g / wi:10.2f}"
                      f"{err:10.1e}", flush=True)


if __name__ == "__main__":
    {"overhead": overhead, "tiles": tiles, "paths": paths}[
        sys.argv[1] if len(sys.argv) > 1 else "overhead"]()
