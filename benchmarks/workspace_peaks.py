"""The cpp backend's workspace per call on the bench suite's convolutions: for each
case and op, the peak of the kernels' per-thread scratch (``_cpp.workspace_bytes()``)
during one call, after the workspace was released, on the given threads and SIMD path.

    python benchmarks/workspace_peaks.py [--threads 2] [--simd avx2] [--top 5]

Development tool: issue 15 asks for the workspace to stay bounded per thread (no
whole-batch buffers); this prints the largest.
"""

from __future__ import annotations

import argparse

import cnnfast
from cnnfast.bench.impls import CnnfastImpl, Inputs
from cnnfast.bench.suite import load_suite


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--simd", default="auto", help="portable, avx2, avx512 or auto")
    ap.add_argument("--top", type=int, default=5)
    args = ap.parse_args(argv)
    from cnnfast.backends.cpp import _cpp

    cnnfast.set_num_threads(args.threads)
    _cpp.set_simd_path(args.simd)
    rows = []
    for case in load_suite():
        if case.kind not in ("conv", "conv_transpose"):
            continue
        for op in case.ops:
            f = CnnfastImpl("cpp").prepare(case, op, Inputs(case, seed=0))
            _cpp.release_workspace(args.threads)
            f()
            rows.append((_cpp.workspace_bytes()[1], case.name, op))
    rows.sort(reverse=True)
    print(f"cpp workspace peak of one call ({_cpp.kernel_path()} kernels, "
          f"{args.threads} threads), largest:")
    for peak, name, op in rows[:args.top]:
        print(f"  {name} {op}: {peak / 2**20:.2f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
