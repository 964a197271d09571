"""Weight gradients of short reductions (few input channels per group): cpp vs torch.

    .venv/bin/python benchmarks/cpp_wgrad_bench.py [--reps 11] [--threads 2] [--algorithm auto]

Runs cnnfast.conv_backward(..., needs=("weight",), backend="cpp") and
torch.nn.grad.conv2d_weight side by side, interleaved (one cpp call, one torch call,
repeated), with the same thread count for both; prints the medians, the ratio
cpp / torch, the CPU model and the cpp path (backend.last_paths()).
"""
import argparse
import platform
import statistics
import time

import numpy as np
import torch

import cnnfast
from cnnfast.backends.cpp import backend as cppb

CASES = [
    # name, x shape, w shape, stride, padding
    ("fmnist conv1 b64", (64, 1, 28, 28), (64, 1, 3, 3), 1, 0),
    ("first layer 128px s2", (16, 3, 128, 128), (32, 3, 3, 3), 2, 1),
    ("resnet stem 7x7/2 b8", (8, 3, 224, 224), (64, 3, 7, 7), 2, 3),
]


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=11)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--algorithm", default="auto")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--baseline", action="store_true",
                    help="also time the path chosen before wgrad-short (gemm-s1 at stride "
                         "1, else gemm), interleaved in the same loop")
    args = ap.parse_args()
    cnnfast.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    dt = np.dtype(args.dtype)
    print(f"CPU: {cpu_model()}; threads {args.threads}; {dt}; reps {args.reps} (medians)")
    print(f"{'case':24s} {'cpp ms':>9s} {'torch ms':>9s} {'ratio':>6s}"
          + (f" {'base ms':>9s} {'base/torch':>10s}" if args.baseline else "") + "  path")
    rng = np.random.default_rng(0)
    for name, xs, ws, s, p in CASES:
        x = rng.standard_normal(xs).astype(dt)
        w = rng.standard_normal(ws).astype(dt)
        ho = (xs[2] + 2 * p - ws[2]) // s + 1
        wo = (xs[3] + 2 * p - ws[3]) // s + 1
        gy = rng.standard_normal((xs[0], ws[0], ho, wo)).astype(dt)
        tx, tgy = torch.from_numpy(x), torch.from_numpy(gy)

        def run_cpp():
            return cnnfast.conv_backward(gy, x, w, stride=s, padding=p, needs=("weight",),
                                         backend="cpp", algorithm=args.algorithm)

        def run_torch():
            return torch.nn.grad.conv2d_weight(tx, ws, tgy, stride=s, padding=p)

        def run_base():
            return cnnfast.conv_backward(gy, x, w, stride=s, padding=p, needs=("weight",),
                                         backend="cpp",
                                         algorithm="gemm-s1" if s == 1 else "gemm")

        run_cpp(), run_torch()  # warm-up
        path = dict(cppb.last_paths())
        if args.baseline:
            run_base()
        tc, tt, tb = [], [], []
        for _ in range(args.reps):
            t0 = time.perf_counter(); run_cpp(); tc.append(time.perf_counter() - t0)
            t0 = time.perf_counter(); run_torch(); tt.append(time.perf_counter() - t0)
            if args.baseline:
                t0 = time.perf_counter(); run_base(); tb.append(time.perf_counter() - t0)
        mc, mt = statistics.median(tc) * 1e3, statistics.median(tt) * 1e3
        extra = ""
        if args.baseline:
            mb = statistics.median(tb) * 1e3
            extra = f" {mb:9.3f} {mb / mt:10.2f}"
        print(f"{name:24s} {mc:9.3f} {mt:9.3f} {mc / mt:6.2f}{extra}  {path}")


if __name__ == "__main__":
    main()
