"""Three diagnostics of the cupy backend for tuning sessions on a GPU.

    python benchmarks/gpu_probe.py overhead   # host time per call, and where it goes
    python benchmarks/gpu_probe.py tiles      # every GEMM tile forced, per layer shape
    python benchmarks/gpu_probe.py paths      # gemm vs winograd, direct vs tiled depthwise

``overhead`` times tiny calls (the GPU is idle, so a call costs what the host spends
on it) and prints a cProfile of them; ``tiles`` times each conv_gemm tile shape on
the ResNet layers at batch 8 and 32, so the tile heuristic of
``cnnfast.backends.cuda.conv_launch`` can be checked against measurements; ``paths``
times the implicit GEMM against the Winograd F(2x2, 3x3) path (``algorithm=``) and
torch/cuDNN on the 3x3 stride-1 layers of the bench suite and the seed CNN (forward and
both gradients), and the direct kernel against the shared-memory tiled one on
MobileNet-like depthwise layers (forward, and the input gradient at stride 1), float32
with TF32 off -- the figures the automatic choice of ``conv_launch.choose_path`` waits
for.
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


def _wall(fn, reps):
    """Wall-clock microseconds per call around a synchronised loop."""
    import cupy as cp

    fn()
    cp.cuda.Device().synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    cp.cuda.Device().synchronize()
    return (time.perf_counter() - t) / reps * 1e6


def overhead():
    import cupy as cp

    import cnnfast

    x = cp.zeros((2, 4, 8, 8), cp.float32)
    w = cp.zeros((4, 4, 3, 3), cp.float32)
    y = cnnfast.conv2d(x, w, padding=1, backend="cupy")
    yp, idx = cnnfast.max_pool2d(x, 2, return_indices=True, backend="cupy")
    calls = {
        "cupy elementwise x + 1 (floor)": lambda: x + 1,
        "max_pool2d": lambda: cnnfast.max_pool2d(x, 2, backend="cupy"),
        "max_pool2d_backward": lambda: cnnfast.max_pool_backward(yp, idx, x.shape,
                                                                 backend="cupy"),
        "avg_pool2d": lambda: cnnfast.avg_pool2d(x, 2, backend="cupy"),
        "avg_pool2d_backward": lambda: cnnfast.avg_pool_backward(yp, x.shape, 2,
                                                                 backend="cupy"),
        "conv2d": lambda: cnnfast.conv2d(x, w, padding=1, backend="cupy"),
        "conv_transpose2d": lambda: cnnfast.conv_transpose2d(x, w, padding=1, backend="cupy"),
        "conv_backward x,w": lambda: cnnfast.conv_backward(y, x, w, 1, 1, needs=("x", "weight"),
                                                           backend="cupy"),
    }
    # Tiny calls on an idle GPU: the device waits on the host, so both the CUDA-event
    # time and the wall clock around a synchronised loop are the host time per call
    # (issue 18's target: <= 10 us, beside CuPy's own floor, the first row).
    print(f"{'':32s} {'events':>8s} {'wall':>8s}  us per call")
    for name, fn in calls.items():
        print(f"{name:32s} {_timed(fn, 2000):8.1f} {_wall(fn, 2000):8.1f}", flush=True)
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


def _compare(name, n, op, base, alt, cudnn):
    """One row of ``paths``: the two paths' and cuDNN's times, base/alt, and the two
    results' relative difference (each callable returns the op's result)."""
    import cupy as cp

    b, a, t = _timed(base, 20), _timed(alt, 20), _timed(cudnn, 20)
    ref, got = base(), alt()
    err = float(cp.abs(got - ref).max() / cp.abs(ref).max())
    print(f"{name:16s} n{n:<3d} {op:8s}{b:10.1f}{a:10.1f}{t:10.1f}{b / a:10.2f}{err:10.1e}",
          flush=True)


def paths():
    import cupy as cp
    import torch

    import cnnfast

    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    rng = np.random.default_rng(0)

    def arrays(n, c, h, w_, o, cg, k, s, pad):
        x = cp.asarray(rng.standard_normal((n, c, h, w_)).astype(np.float32))
        w = cp.asarray(rng.standard_normal((o, cg, k, k)).astype(np.float32))
        kw = dict(stride=s, padding=pad, groups=c // cg)
        y = cnnfast.conv2d(x, w, backend="cupy", **kw)
        gy = cp.asarray(rng.standard_normal(y.shape).astype(np.float32))
        return x, w, gy, kw

    def ours(op, algo, x, w, gy, kw):
        if op == "fwd":
            return lambda: cnnfast.conv2d(x, w, backend="cupy", algorithm=algo, **kw)
        if op == "bwd-x":
            return lambda: cnnfast.conv_backward(gy, x, w, needs=("x",), backend="cupy",
                                                 algorithm=algo, **kw)[0]
        return lambda: cnnfast.conv_backward(gy, x, w, needs=("weight",), backend="cupy",
                                             algorithm=algo, **kw)[1]

    def cudnn(op, x, w, gy, kw):
        tx, tw, tgy = (torch.as_tensor(a, device="cuda") for a in (x, w, gy))
        return {"fwd": lambda: torch.nn.functional.conv2d(tx, tw, **kw),
                "bwd-x": lambda: torch.nn.grad.conv2d_input(tx.shape, tw, tgy, **kw),
                "bwd-w": lambda: torch.nn.grad.conv2d_weight(tx, tw.shape, tgy, **kw)}[op]

    print("us per call (CUDA events, 20 calls after one warm-up); float32, TF32 off")
    print("(rel err: max |alt - base| / max |base|, the two results on the device)")
    head = f"{'base':>10s}{'alt':>10s}{'cudnn':>10s}{'base/alt':>10s}{'rel err':>10s}"
    print(f"\n3x3 stride 1: base gemm, alt winograd\n{'':30s}{head}")
    dense = [  # (name, C, H, W, O, pad)
        ("resnet c64 56", 64, 56, 56, 64, 1),
        ("resnet c128 28", 128, 28, 28, 128, 1),
        ("resnet c256 14", 256, 14, 14, 256, 1),
        ("resnet c512 7", 512, 7, 7, 512, 1),
        ("seed conv2 13", 64, 13, 13, 64, 0),
        ("wide c32 112", 32, 112, 112, 32, 1),
    ]
    for name, c, h, w_, o, pad in dense:
        for n in (8, 32, 64):
            a = arrays(n, c, h, w_, o, c, 3, 1, pad)
            for op in ("fwd", "bwd-x", "bwd-w"):
                _compare(name, n, op, ours(op, "gemm", *a), ours(op, "winograd", *a),
                         cudnn(op, *a))
    print(f"\ndepthwise: base direct, alt depthwise-tiled\n{'':30s}{head}")
    depthwise = [  # (name, C, H, W, k, stride): MobileNet-like layers
        ("dw c32 112", 32, 112, 112, 3, 1),
        ("dw c96 112 s2", 96, 112, 112, 3, 2),
        ("dw c144 56", 144, 56, 56, 3, 1),
        ("dw c384 14", 384, 14, 14, 3, 1),
        ("dw c960 7", 960, 7, 7, 3, 1),
        ("dw c240 28 k5", 240, 28, 28, 5, 1),
        ("dw c672 14 k5s2", 672, 14, 14, 5, 2),
    ]
    for name, c, h, w_, k, s in depthwise:
        for n in (8, 32):
            a = arrays(n, c, h, w_, c, 1, k, s, k // 2)
            for op in ("fwd", "bwd-x") if s == 1 else ("fwd",):
                _compare(name, n, op, ours(op, "direct", *a), ours(op, "depthwise-tiled", *a),
                         cudnn(op, *a))


if __name__ == "__main__":
    {"overhead": overhead, "tiles": tiles, "paths": paths}[
        sys.argv[1] if len(sys.argv) > 1 else "overhead"]()
