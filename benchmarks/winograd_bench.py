"""The cpp backend's Winograd F(4x4, 3x3) path against torch (CPU) and against the
backend's previous best path, on the 3x3 layers of ResNet and the seed CNN.

    .venv/bin/python benchmarks/winograd_bench.py [--threads 2] [--reps 15]
        [--only SUBSTRING] [--dtype float32]

One process, 2 threads by default (torch and cnnfast alike), float32. For every layer
and pass (forward, input gradient, weight gradient) the calls are interleaved round
by round -- torch, cnnfast's automatic choice, winograd forced, then each previous path
forced (gemm-s1, gemm), in an order shuffled every round -- so that drift on a busy
machine and the caches another call left behind hit all of them alike; the
medians are printed with the ratio cnnfast / torch (< 1: cnnfast is faster) and the
speed-up of winograd over the best previous path. torch runs
``torch.nn.functional.conv2d`` and, for the gradients, ``aten.convolution_backward``
with one output requested (what autograd calls). The CPU model, the ISA path of the
kernels and the thread counts are printed first.
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import time

import numpy as np

import cnnfast
from cnnfast.backends.cpp import _cpp
from cnnfast.backends.cpp import backend as cpp

# (name, batch, channels in = out, spatial, padding)
LAYERS = [
    ("resnet 64@56", 8, 64, 56, 1),
    ("resnet 128@28", 8, 128, 28, 1),
    ("resnet 256@14", 8, 256, 14, 1),
    ("resnet 512@7", 8, 512, 7, 1),
    ("seed conv2 64@13", 64, 64, 13, 0),
]
PASSES = ("forward", "grad_x", "grad_weight")
PREVIOUS = ("gemm-s1", "gemm")  # the paths the automatic choice had before winograd


def cpu_model():
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if ":" in line:
                    k, v = (s.strip() for s in line.split(":", 1))
                    fields.setdefault(k, v)
    except OSError:
        return platform.processor() or "unknown"
    return (f"{fields.get('model name', '?')} (family {fields.get('cpu family', '?')}, "
            f"model {fields.get('model', '?')})")


def calls(torch, x, w, gy, pad):
    """{label: callable} for each pass: torch, then cnnfast per algorithm."""
    tx, tw, tgy = (torch.from_numpy(a) for a in (x, w, gy))
    conv_bwd = torch.ops.aten.convolution_backward

    def t_bwd(mask):
        return lambda: conv_bwd(tgy, tx, tw, None, [1, 1], [pad, pad], [1, 1], False, [0, 0],
                                1, mask)

    def c_fwd(alg):
        return lambda: cnnfast.conv2d(x, w, padding=pad, backend="cpp", algorithm=alg)

    def c_bwd(need, alg):
        return lambda: cnnfast.conv_backward(gy, x, w, padding=pad, needs=(need,),
                                             backend="cpp", algorithm=alg)

    algs = ("auto", "winograd") + PREVIOUS
    return {
        "forward": {"torch": lambda: torch.nn.functional.conv2d(tx, tw, padding=pad),
                    **{a: c_fwd(a) for a in algs}},
        "grad_x": {"torch": t_bwd([True, False, False]), **{a: c_bwd("x", a) for a in algs}},
        "grad_weight": {"torch": t_bwd([False, True, False]),
                        **{a: c_bwd("weight", a) for a in algs}},
    }


def bench(fs, reps):
    """Median seconds of each callable, interleaved round by round, in an order
    shuffled every round (a call right after torch's finds colder caches)."""
    for f in fs.values():
        f()  # warm-up: workspace, first-touch, torch's lazy init
    times = {k: [] for k in fs}
    keys = list(fs)
    order = random.Random(0)
    for _ in range(reps):
        order.shuffle(keys)
        for k in keys:
            t = time.perf_counter()
            fs[k]()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--only", default=None, help="layers whose name contains this")
    ap.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    cnnfast.set_num_threads(args.threads)
    print(f"CPU: {cpu_model()}; {_cpp.simd_path()} kernels; threads: cnnfast "
          f"{cnnfast.get_num_threads()}, torch {torch.get_num_threads()} (torch "
          f"{torch.__version__}); {args.dtype}; median of {args.reps} interleaved rounds")
    head = (f"{'layer':18s} {'pass':11s} {'torch ms':>9s} {'auto ms':>8s} {'path':>9s} "
            f"{'wino ms':>8s} {'prev ms':>8s} {'prev':>7s} {'auto/torch':>10s} "
            f"{'wino/torch':>10s} {'prev/wino':>9s}")
    print(head)
    print("-" * len(head))
    dt = np.dtype(args.dtype)
    for name, n, c, hw, pad in LAYERS:
        if args.only and args.only not in name:
            continue
        rng = np.random.default_rng(0)
        x = rng.standard_normal((n, c, hw, hw)).astype(dt)
        w = (rng.standard_normal((c, c, 3, 3)) * (2.0 / (9 * c)) ** 0.5).astype(dt)
        out = hw + 2 * pad - 2
        gy = rng.standard_normal((n, c, out, out)).astype(dt)
        per_pass = calls(torch, x, w, gy, pad)
        for ps in PASSES:
            fs = per_pass[ps]
            per_pass[ps]["auto"]()
            path = next(iter(cpp.last_paths().values()))
            m = bench(fs, args.reps)
            prev = min(PREVIOUS, key=lambda a: m[a])
            print(f"{name:18s} {ps:11s} {m['torch'] * 1e3:9.2f} {m['auto'] * 1e3:8.2f} "
                  f"{path:>9s} {m['winograd'] * 1e3:8.2f} {m[prev] * 1e3:8.2f} {prev:>7s} "
                  f"{m['auto'] / m['torch']:10.2f} {m['winograd'] / m['torch']:10.2f} "
                  f"{m[prev] / m['winograd']:9.2f}", flush=True)


if __name__ == "__main__":
    main()
