"""Quick development comparison: the numba backend against torch (CPU), forward
ops, same thread count for both. Indicative only -- ``cnnfast bench`` is the real
benchmark tool.

    python benchmarks/numba_quick.py [--threads 2] [--reps 7] [--only conv|pool|dw] [--f64]

Prints, per shape, the best-of-``reps`` time of each and the ratio
torch_time / numba_time (> 1: numba is faster). Timings interleave the two
libraries so that machine noise hits both alike.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

# (name, kind, x shape, weight shape or pool kernel, stride, padding, groups)
CASES = [
    ("resnet 64ch 56x56 b8", "conv", (8, 64, 56, 56), (64, 64, 3, 3), 1, 1, 1),
    ("resnet 128ch 28x28 b8", "conv", (8, 128, 28, 28), (128, 128, 3, 3), 1, 1, 1),
    ("resnet 256ch 14x14 b8", "conv", (8, 256, 14, 14), (256, 256, 3, 3), 1, 1, 1),
    ("fmnist 1->64 28x28 b64", "conv", (64, 1, 28, 28), (64, 1, 3, 3), 1, 0, 1),
    ("fmnist 1->64 28x28 b128", "conv", (128, 1, 28, 28), (64, 1, 3, 3), 1, 0, 1),
    ("fmnist 64->64 13x13 b64", "conv", (64, 64, 13, 13), (64, 64, 3, 3), 1, 0, 1),
    ("fmnist 64->64 13x13 b128", "conv", (128, 64, 13, 13), (64, 64, 3, 3), 1, 0, 1),
    ("depthwise 128ch 56x56 b8", "dw", (8, 128, 56, 56), (128, 1, 3, 3), 1, 1, 128),
    ("fmnist maxpool 2x2 64x26x26 b128", "max", (128, 64, 26, 26), 2, 2, 0, 0),
    ("maxpool 2x2/2 64x112x112 b8", "max", (8, 64, 112, 112), 2, 2, 0, 0),
    ("maxpool 3x3/2 64x112x112 b8", "max", (8, 64, 112, 112), 3, 2, 1, 0),
    ("avgpool 2x2/2 64x112x112 b8", "avg", (8, 64, 112, 112), 2, 2, 0, 0),
    ("avgpool 3x3/2 64x112x112 b8", "avg", (8, 64, 112, 112), 3, 2, 1, 0),
]


def _best(fn, reps):
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--only", choices=("conv", "dw", "pool"), default=None)
    parser.add_argument("--f64", action="store_true", help="float64 instead of float32")
    args = parser.parse_args(argv)

    import torch
    import torch.nn.functional as F

    import cnnfast

    torch.set_num_threads(args.threads)
    cnnfast.set_num_threads(args.threads)
    dtype = np.float64 if args.f64 else np.float32
    rng = np.random.default_rng(0)
    print(f"threads={args.threads} dtype={np.dtype(dtype).name} reps={args.reps} "
          f"(best of; ratio = torch / numba, > 1 means numba is faster)")
    for name, kind, xs, ws, stride, pad, groups in CASES:
        if args.only and (kind if kind in ("conv", "dw") else "pool") != args.only:
            continue
        x = rng.standard_normal(xs).astype(dtype)
        xt = torch.from_numpy(x)
        if kind in ("conv", "dw"):
            w = rng.standard_normal(ws).astype(dtype)
            wt = torch.from_numpy(w)
            ours = lambda: cnnfast.conv(x, w, None, stride, pad, 1, groups,  # noqa: E731
                                        backend="numba")
            theirs = lambda: F.conv2d(xt, wt, None, stride, pad, 1, groups)  # noqa: E731
        elif kind == "max":
            ours = lambda: cnnfast.max_pool(x, ws, stride, pad, backend="numba")  # noqa: E731
            theirs = lambda: F.max_pool2d(xt, ws, stride, pad)  # noqa: E731
        else:
            ours = lambda: cnnfast.avg_pool(x, ws, stride, pad, backend="numba")  # noqa: E731
            theirs = lambda: F.avg_pool2d(xt, ws, stride, pad)  # noqa: E731
        ref = theirs().numpy()
        got = ours()
        err = float(np.max(np.abs(got - ref)) / max(1.0, float(np.max(np.abs(ref)))))
        t_ours = t_theirs = float("inf")
        for _ in range(2):  # interleave: noise hits both
            t_ours = min(t_ours, _best(ours, args.reps))
            t_theirs = min(t_theirs, _best(theirs, args.reps))
        print(f"{name:34s} numba {t_ours * 1e3:8.2f} ms  torch {t_theirs * 1e3:8.2f} ms  "
              f"ratio {t_theirs / t_ours:5.2f}  rel.err {err:.1e}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
