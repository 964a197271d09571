"""The numba backend's 3-d Winograd path against its previous paths (gemm-wide for the
forward and input gradient, gemm for the weight gradient), on one 3x3x3 layer.

    .venv/bin/python benchmarks/numba_winograd3d_ab.py [--shape N,C,K,D,H,W] [--reps 9]

One process, cnnfast's thread count (CNNFAST_NUM_THREADS), float32, padding 1. For each
pass the pinned algorithms are interleaved round by round, each sample after a short
pause and an untimed call (the numba threads idle between passes); medians in ms and
the ratio winograd / previous path (< 1: Winograd is faster). The numbers behind
``WINO3_MIN_WG_CHANNELS2`` in ``cnnfast/backends/numba/backend.py``. The CPU model and
thread count are printed first.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np

import cnnfast

PASSES = {  # pass: (the previous path, the call with an algorithm pinned)
    "forward": ("gemm-wide", lambda d, a: cnnfast.conv(d["x"], d["w"], padding=1,
                                                        backend="numba", algorithm=a)),
    "input gradient": ("gemm-wide", lambda d, a: cnnfast.conv_backward(
        d["gy"], d["x"], d["w"], padding=1, backend="numba", algorithm=a, needs=("x",))),
    "weight gradient": ("gemm", lambda d, a: cnnfast.conv_backward(
        d["gy"], d["x"], d["w"], padding=1, backend="numba", algorithm=a,
        needs=("weight",))),
}


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            info = {k.strip(): v for k, v in (line.split(":", 1) for line in f if ":" in line)}
        return (f"{info['model name'].strip()}, family {info['cpu family'].strip()} "
                f"model {info['model'].strip()}")
    except (OSError, KeyError):
        return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="2,16,16,16,56,56", help="N,C,K,D,H,W")
    ap.add_argument("--reps", type=int, default=9)
    args = ap.parse_args()
    n, c, k, d, h, w = (int(v) for v in args.shape.split(","))
    rng = np.random.default_rng(0)
    data = {"x": rng.standard_normal((n, c, d, h, w)).astype(np.float32),
            "w": rng.standard_normal((k, c, 3, 3, 3)).astype(np.float32)}
    data["gy"] = rng.standard_normal(cnnfast.conv(data["x"], data["w"], padding=1,
                                                  backend="numba").shape).astype(np.float32)
    print(f"{cpu_model()}; {cnnfast.get_num_threads()} threads; N,C,K,D,H,W = {args.shape}")
    for name, (previous, call) in PASSES.items():
        algorithms = (previous, "winograd")
        for a in algorithms:  # compile and warm up
            call(data, a)
        times = {a: [] for a in algorithms}
        for _ in range(args.reps):
            for a in algorithms:
                time.sleep(0.02)
                call(data, a)
                t0 = time.perf_counter()
                call(data, a)
                times[a].append((time.perf_counter() - t0) * 1e3)
        med = {a: statistics.median(v) for a, v in times.items()}
        print(f"{name:16s} {previous} {med[previous]:8.2f} ms   winograd "
              f"{med['winograd']:8.2f} ms   ratio {med['winograd'] / med[previous]:.2f}")


if __name__ == "__main__":
    main()
