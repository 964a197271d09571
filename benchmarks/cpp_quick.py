"""Quick side-by-side timing of the cpp backend against torch (CPU), for development.

    python benchmarks/cpp_quick.py [--threads 2] [--only SUBSTRING] [--budget 0.4]

Torch and cnnfast calls are interleaved (so drift on a busy machine hits both alike);
the medians are reported with their ratio (torch time / cpp time: > 1 means cpp is
faster) and GFLOP/s (convolutions, 2 flops per multiply-add) or GB/s (pooling:
bytes read + written). Numbers are indicative; the full benchmark is `cnnfast bench`.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import cnnfast
from cnnfast.backends.cpp import _cpp


def _conv_case(name, n, c, o, hw, k, stride=1, pad=0, groups=1, transposed=False, pass_="fwd",
               dims=2):
    return dict(kind="conv", name=name, n=n, c=c, o=o, hw=hw, k=k, stride=stride, pad=pad,
                groups=groups, transposed=transposed, pass_=pass_, dims=dims)


def _pool_case(name, n, c, hw, k, stride, pad=0, op="max", pass_="fwd"):
    return dict(kind="pool", name=name, n=n, c=c, hw=hw, k=k, stride=stride, pad=pad, op=op,
                pass_=pass_)


def cases():
    out = []
    dense = [("3x3 64ch 56x56 b8", 8, 64, 64, 56, 3, 1, 1),
             ("3x3 128ch 28x28 b8", 8, 128, 128, 28, 3, 1, 1),
             ("3x3 256ch 14x14 b8", 8, 256, 256, 14, 3, 1, 1),
             ("1x1 256->64 56x56 b8", 8, 256, 64, 56, 1, 1, 0),
             ("7x7s2 stem 3->64 224 b4", 4, 3, 64, 224, 7, 2, 3)]
    for name, n, c, o, hw, k, s, p in dense:
        for ps in ("fwd", "bwd"):
            out.append(_conv_case(f"{name} {ps}", n, c, o, hw, k, s, p, pass_=ps))
    for b in (64, 128):
        for ps in ("fwd", "bwd"):
            out.append(_conv_case(f"fmnist 1->64 28x28 b{b} {ps}", b, 1, 64, 28, 3, pass_=ps))
            out.append(_conv_case(f"fmnist 64->64 13x13 b{b} {ps}", b, 64, 64, 13, 3, pass_=ps))
    for ps in ("fwd", "bwd"):
        out.append(_conv_case(f"depthwise 3x3 128ch 56x56 b8 {ps}", 8, 128, 128, 56, 3, 1, 1,
                              groups=128, pass_=ps))
    for ps in ("fwd", "bwd"):
        out.append(_conv_case(f"convT 128->64 k4s2 16->32 b16 {ps}", 16, 128, 64, 16, 4, 2, 1,
                              transposed=True, pass_=ps))
    for op in ("max", "avg"):
        for ps in ("fwd", "bwd"):
            out.append(_pool_case(f"{op}pool 2x2/2 64x112x112 b8 {ps}", 8, 64, 112, 2, 2, 0, op,
                                  ps))
            out.append(_pool_case(f"{op}pool 3x3/2 64x112x112 b8 {ps}", 8, 64, 112, 3, 2, 1, op,
                                  ps))
    return out


def _time_pair(f_torch, f_cpp, budget):
    f_torch()
    f_cpp()  # warm up (workspace, first-touch)
    t0 = time.perf_counter()
    f_cpp()
    one = max(time.perf_counter() - t0, 1e-6)
    reps = int(min(50, max(3, budget / one)))
    tt, tc = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        f_torch()
        tt.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        f_cpp()
        tc.append(time.perf_counter() - t0)
    return statistics.median(tt), statistics.median(tc)


def run_conv(cs, torch, rng, budget):
    n, c, o, hw, k = cs["n"], cs["c"], cs["o"], cs["hw"], cs["k"]
    s, p, g, tr = cs["stride"], cs["pad"], cs["groups"], cs["transposed"]
    x = rng.standard_normal((n, c, hw, hw)).astype(np.float32)
    wshape = (c, o // g, k, k) if tr else (o, c // g, k, k)
    w = (rng.standard_normal(wshape) / np.sqrt(c // g * k * k)).astype(np.float32)
    b = rng.standard_normal(o).astype(np.float32)
    tx, tw, tb = map(torch.from_numpy, (x, w, b))
    if tr:
        y = cnnfast.conv_transpose(x, w, b, stride=s, padding=p, groups=g, backend="cpp")
        ty = torch.nn.functional.conv_transpose2d(tx, tw, tb, stride=s, padding=p, groups=g)
    else:
        y = cnnfast.conv(x, w, b, stride=s, padding=p, groups=g, backend="cpp")
        ty = torch.nn.functional.conv2d(tx, tw, tb, stride=s, padding=p, groups=g)
    err = float(np.max(np.abs(y - ty.numpy())) / max(1.0, float(np.max(np.abs(y)))))
    gy = rng.standard_normal(y.shape).astype(np.float32)
    tgy = torch.from_numpy(gy)
    macs = float(np.prod(y.shape)) * (c // g) * k * k if not tr else \
        float(np.prod(x.shape)) * (o // g) * k * k
    if cs["pass_"] == "fwd":
        flops = 2 * macs
        if tr:
            f_t = lambda: torch.nn.functional.conv_transpose2d(tx, tw, tb, stride=s, padding=p,
                                                               groups=g)
            f_c = lambda: cnnfast.conv_transpose(x, w, b, stride=s, padding=p, groups=g,
                                                 backend="cpp")
        else:
            f_t = lambda: torch.nn.functional.conv2d(tx, tw, tb, stride=s, padding=p, groups=g)
            f_c = lambda: cnnfast.conv(x, w, b, stride=s, padding=p, groups=g, backend="cpp")
    else:
        # the first layer of a network needs no input gradient
        needs = ("weight", "bias") if c == 1 else ("x", "weight", "bias")
        mask = [c != 1, True, True]
        flops = 2 * macs * (2 if c != 1 else 1)
        if tr:
            f_t = lambda: torch.ops.aten.convolution_backward(
                tgy, tx, tw, [o], [s, s], [p, p], [1, 1], True, [0, 0], g, mask)
            f_c = lambda: cnnfast.conv_transpose_backward(gy, x, w, stride=s, padding=p, groups=g,
                                                          needs=needs, backend="cpp")
        else:
            f_t = lambda: torch.ops.aten.convolution_backward(
                tgy, tx, tw, [o], [s, s], [p, p], [1, 1], False, [0, 0], g, mask)
            f_c = lambda: cnnfast.conv_backward(gy, x, w, stride=s, padding=p, groups=g,
                                                needs=needs, backend="cpp")
    with torch.no_grad():
        tt, tc = _time_pair(f_t, f_c, budget)
    return tt, tc, f"{flops / tc / 1e9:7.1f} GFLOP/s", err


def run_pool(cs, torch, rng, budget):
    n, c, hw, k, s, p, op = cs["n"], cs["c"], cs["hw"], cs["k"], cs["stride"], cs["pad"], cs["op"]
    x = rng.standard_normal((n, c, hw, hw)).astype(np.float32)
    tx = torch.from_numpy(x)
    F = torch.nn.functional
    if op == "max":
        y, idx = cnnfast.max_pool(x, k, s, p, return_indices=True, backend="cpp")
        ty, tidx = F.max_pool2d(tx, k, s, p, return_indices=True)
        err = float(np.max(np.abs(y - ty.numpy())))
        assert np.array_equal(idx, tidx.numpy())
    else:
        y = cnnfast.avg_pool(x, k, s, p, backend="cpp")
        ty = F.avg_pool2d(tx, k, s, p)
        err = float(np.max(np.abs(y - ty.numpy())))
    nbytes = 4 * (x.size + y.size)
    if cs["pass_"] == "fwd":
        if op == "max":
            nbytes += 8 * y.size
            f_t = lambda: F.max_pool2d(tx, k, s, p, return_indices=True)
            f_c = lambda: cnnfast.max_pool(x, k, s, p, return_indices=True, backend="cpp")
        else:
            f_t = lambda: F.avg_pool2d(tx, k, s, p)
            f_c = lambda: cnnfast.avg_pool(x, k, s, p, backend="cpp")
    else:
        gy = rng.standard_normal(y.shape).astype(np.float32)
        tgy = torch.from_numpy(gy)
        if op == "max":
            nbytes += 8 * y.size
            f_t = lambda: torch.ops.aten.max_pool2d_with_indices_backward(
                tgy, tx, [k, k], [s, s], [p, p], [1, 1], False, tidx)
            f_c = lambda: cnnfast.max_pool_backward(gy, idx, x.shape, backend="cpp")
        else:
            f_t = lambda: torch.ops.aten.avg_pool2d_backward(tgy, tx, [k, k], [s, s], [p, p],
                                                             False, True, None)
            f_c = lambda: cnnfast.avg_pool_backward(gy, x.shape, k, s, p, backend="cpp")
    with torch.no_grad():
        tt, tc = _time_pair(f_t, f_c, budget)
    return tt, tc, f"{nbytes / tc / 1e9:7.1f} GB/s    ", err


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", default="", help="run the cases whose name contains this")
    ap.add_argument("--budget", type=float, default=0.4, help="seconds per side per case")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    cnnfast.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    print(f"threads={args.threads} simd={_cpp.kernel_path()} torch={torch.__version__}")
    print(f"{'case':40s} {'torch ms':>9s} {'cpp ms':>9s} {'ratio':>6s}  rate")
    for cs in cases():
        if args.only and args.only not in cs["name"]:
            continue
        run = run_conv if cs["kind"] == "conv" else run_pool
        tt, tc, rate, err = run(cs, torch, rng, args.budget)
        print(f"{cs['name']:40s} {tt * 1e3:9.3f} {tc * 1e3:9.3f} {tt / tc:6.2f}  {rate}"
              f"  err={err:.1e}", flush=True)
    cur, peak = _cpp.workspace_bytes()
    print(f"workspace: {cur / 2**20:.2f} MiB held, peak {peak / 2**20:.2f} MiB")


if __name__ == "__main__":
    main()
