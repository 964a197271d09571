"""GPU-sized layers, cnnfast's cupy backend against torch/cuDNN (TF32 off), side by side.

    python benchmarks/gpu_crosscheck.py [--reps 20] [--dtype float32,float64]

The shared benchmark suite (``cnnfast bench``) uses CPU-sized batches; this script
times the operations at batch 32, where a GPU is busy, with CUDA events around
``reps`` back-to-back calls after a warm-up, alternating cnnfast and torch per row.
Prints ms per call, GFLOP/s for convolutions, and torch-time / cnnfast-time
(above 1: cnnfast faster).
"""

from __future__ import annotations

import argparse

import numpy as np


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--dtype", default="float32,float64")
    args = ap.parse_args(argv)

    import cupy as cp

    import cnnfast
    from cnnfast.backends.cuda import cupy_backend

    print("warm-up (compile or cache load) s", round(cupy_backend.warmup(), 2))
    try:
        import torch
        import torch.nn.functional as F
        assert torch.cuda.is_available()
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.benchmark = True  # cuDNN at its best
        aten = torch.ops.aten
    except Exception:
        torch = None
    print("device", cp.cuda.runtime.getDeviceProperties(0)["name"].decode())

    def timed(fn, sync_torch=False):
        fn()
        start, end = cp.cuda.Event(), cp.cuda.Event()
        if sync_torch:
            torch.cuda.synchronize()
        start.record()
        for _ in range(args.reps):
            fn()
        end.record()
        end.synchronize()
        return cp.cuda.get_elapsed_time(start, end) / args.reps

    def ratio_str(ours, theirs):
        return f"{theirs:8.3f} ms  torch/cnnfast {theirs / ours:5.2f}" if theirs else ""

    rng = np.random.default_rng(0)
    convs = [  # (name, N, C, H, W, O, k, stride, pad, groups)
        ("resnet 3x3 c64", 32, 64, 56, 56, 64, 3, 1, 1, 1),
        ("resnet 3x3 c128 s2", 32, 128, 28, 28, 256, 3, 2, 1, 1),
        ("resnet 3x3 c256", 32, 256, 14, 14, 256, 3, 1, 1, 1),
        ("resnet 1x1 c256", 32, 256, 14, 14, 256, 1, 1, 0, 1),
        ("stem 7x7 s2", 32, 3, 224, 224, 64, 7, 2, 3, 1),
        ("depthwise 3x3 c256", 32, 256, 28, 28, 256, 3, 1, 1, 256),
        ("fmnist conv2", 128, 64, 13, 13, 64, 3, 1, 0, 1),
    ]
    for dtype in args.dtype.split(","):
        for name, n, c, h, w_, o, k, s, pad, g in convs:
            x = cp.asarray(rng.standard_normal((n, c, h, w_)).astype(dtype))
            w = cp.asarray(rng.standard_normal((o, c // g, k, k)).astype(dtype))
            y = cnnfast.conv2d(x, w, stride=s, padding=pad, groups=g, backend="cupy")
            gy = cp.asarray(rng.standard_normal(y.shape).astype(dtype))
            flops = 2 * y.size * (c // g) * k * k
            ours = {
                "fwd": lambda: cnnfast.conv2d(x, w, stride=s, padding=pad, groups=g,
                                              backend="cupy"),
                "bwd-x": lambda: cnnfast.conv_backward(gy, x, w, s, pad, 1, g, needs=("x",),
                                                       backend="cupy"),
                "bwd-w": lambda: cnnfast.conv_backward(gy, x, w, s, pad, 1, g,
                                                       needs=("weight",), backend="cupy"),
            }
            theirs = {}
            if torch is not None:
                tx, tw, tgy = (torch.as_tensor(a, device="cuda") for a in (x, w, gy))
                theirs = {
                    "fwd": lambda: F.conv2d(tx, tw, None, s, pad, 1, g),
                    "bwd-x": lambda: aten.convolution_backward(
                        tgy, tx, tw, None, [s, s], [pad, pad], [1, 1], False, [0, 0], g,
                        [True, False, False]),
                    "bwd-w": lambda: aten.convolution_backward(
                        tgy, tx, tw, None, [s, s], [pad, pad], [1, 1], False, [0, 0], g,
                        [False, True, False]),
                }
            for op, fn in ours.items():
                t_ours = timed(fn)
                t_theirs = timed(theirs[op], sync_torch=True) if theirs else None
                print(f"{dtype:8s} {name:20s} {op:6s} {t_ours:8.3f} ms "
                      f"{flops / t_ours / 1e6:7.0f} GFLOP/s  {ratio_str(t_ours, t_theirs)}",
                      flush=True)
        x = cp.asarray(rng.standard_normal((32, 64, 112, 112)).astype(dtype))
        y, idx = cnnfast.max_pool2d(x, 3, 2, 1, return_indices=True, backend="cupy")
        gy = cp.asarray(rng.standard_normal(y.shape).astype(dtype))
        ours = {
            "max fwd": lambda: cnnfast.max_pool2d(x, 3, 2, 1, return_indices=True,
                                                  backend="cupy"),
            "max bwd": lambda: cnnfast.max_pool_backward(gy, idx, x.shape, backend="cupy"),
            "avg fwd": lambda: cnnfast.avg_pool2d(x, 3, 2, 1, backend="cupy"),
            "avg bwd": lambda: cnnfast.avg_pool_backward(gy, x.shape, 3, 2, 1,
                                                         backend="cupy"),
        }
        theirs = {}
        if torch is not None:
            tx, tgy = torch.as_tensor(x, device="cuda"), torch.as_tensor(gy, device="cuda")
            _, tidx = F.max_pool2d(tx, 3, 2, 1, return_indices=True)
            theirs = {
                "max fwd": lambda: F.max_pool2d(tx, 3, 2, 1, return_indices=True),
                "max bwd": lambda: aten.max_pool2d_with_indices_backward(
                    tgy, tx, [3, 3], [2, 2], [1, 1], [1, 1], False, tidx),
                "avg fwd": lambda: F.avg_pool2d(tx, 3, 2, 1),
                "avg bwd": lambda: aten.avg_pool2d_backward(
                    tgy, tx, [3, 3], [2, 2], [1, 1], False, True, None),
            }
        for op, fn in ours.items():
            t_ours = timed(fn)
            t_theirs = timed(theirs[op], sync_torch=True) if theirs else None
            print(f"{dtype:8s} {'pool 3/2 N32 C64 112':20s} {op:7s} {t_ours:8.3f} ms  "
                  f"{ratio_str(t_ours, t_theirs)}", flush=True)


if __name__ == "__main__":
    main()
