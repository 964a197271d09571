"""The host time of the CUDA backends' launch code alone, without a GPU: each op of
``cnnfast.backends.cuda.conv_launch`` run on a runtime whose kernels do nothing and
whose arrays are numpy's, so what is timed is the Python between the op's call and
its kernel launches (paths, index tables, tiles, grids, argument tuples, result
allocation) -- the part of issue 18's "host time per call" that cnnfast owns; CuPy's
own launch cost comes on top on a GPU (``gpu_probe.py overhead``).

    python benchmarks/cuda_launch_overhead.py [--number 20000] [--repeat 7]

Medians of ``--repeat`` rounds of ``--number`` calls, microseconds per call. Run it
from an older tree (``PYTHONPATH=<tree>``) for an A/B in alternating processes.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from cnnfast import params as P
from cnnfast.backends.cuda import conv_launch


class _NoKernel:
    def __call__(self, grid, block, args, shared_mem=0):
        pass


class NullRuntime:
    """The runtime protocol of ``cnnfast.backends.cuda.common`` with kernels that do
    nothing: numpy arrays, tables and launches memoised as the real runtimes do."""

    xp = np

    def __init__(self):
        self.record = conv_launch.PathRecord()
        self._functions, self._tables, self._memo = {}, {}, {}

    def function(self, file, name):
        k = self._functions.get(name)
        if k is None:
            k = self._functions[name] = _NoKernel()
        return k

    @staticmethod
    def int32_array(values):
        return np.asarray(values, np.int32)

    def cached(self, key, build):
        hit = self._tables.get(key)
        if hit is None:
            hit = self._tables[key] = tuple(np.asarray(a, np.int32) for a in build())
        return hit

    def memo(self, key, build):
        hit = self._memo.get(key)
        if hit is None:
            hit = self._memo[key] = build()
        return hit


def calls(rt):
    """{name: a call of the launch code} on small float32 arrays."""
    x = np.zeros((2, 4, 8, 8), np.float32)
    w = np.zeros((8, 4, 3, 3), np.float32)
    b = np.zeros(8, np.float32)
    p = P.conv_params(x.shape, w.shape, 1, 1, 1, 1)
    gy = np.zeros((2, 8, 8, 8), np.float32)
    wt = np.zeros((4, 8, 3, 3), np.float32)
    pt = P.conv_transpose_params(x.shape, wt.shape, 2, 1, 1, 1, 1)
    gyt = np.zeros((2, 8) + tuple(pt.out_shape), np.float32)
    pp = P.pool_params(x.shape, 2, 2, 0, 1, False)
    needs = frozenset({"x", "weight", "bias"})
    gyp = np.zeros((2, 4, 4, 4), np.float32)
    idx = np.zeros((2, 4, 4, 4), np.int64)
    return {
        "conv 2x4x8x8 k3 (gemm)": lambda: conv_launch.conv(rt, x, w, b, p),
        "conv_backward x,w,b": lambda: conv_launch.conv_backward(rt, gy, x, w, p, needs),
        "conv_transpose s2 (phases)": lambda: conv_launch.conv_transpose(rt, x, wt, None, pt),
        "conv_transpose_backward x,w": lambda: conv_launch.conv_transpose_backward(
            rt, gyt, x, wt, pt, frozenset({"x", "weight"})),
        "max_pool k2": lambda: conv_launch.max_pool(rt, x, pp, True),
        "max_pool_backward k2": lambda: conv_launch.max_pool_backward(rt, gyp, idx, x.shape),
        "avg_pool k2": lambda: conv_launch.avg_pool(rt, x, pp),
        "avg_pool_backward k2": lambda: conv_launch.avg_pool_backward(rt, gyp, pp),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--number", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args(argv)
    rt = NullRuntime()
    for name, fn in calls(rt).items():
        fn()
        rounds = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            for _ in range(args.number):
                fn()
            rounds.append((time.perf_counter() - t) / args.number * 1e6)
        print(f"{name:30s} {statistics.median(rounds):7.2f} us  "
              f"(rounds {min(rounds):.2f}-{max(rounds):.2f})", flush=True)


if __name__ == "__main__":
    main()
