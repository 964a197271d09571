"""Interleaved timing of one `cnnfast bench` case: torch against the cpp backend's
automatic choice and against forced paths, in one process (medians of --repeat rounds;
each round runs every variant once, in turn, so drift on a busy machine hits all alike;
before each sample a pause and an untimed call, as in `cnnfast bench`: without them the
variant after torch ran up to 5x slower, in the spin of torch's threads).

    python benchmarks/cpp_paths_vs_torch.py conv_transpose.k4s2 forward --paths gemm,phases
    python benchmarks/cpp_paths_vs_torch.py resnet.conv1x1 forward --simd avx2,avx512

--simd adds the automatic choice on each named SIMD kernel table (the extension's test
switch, so the ISAs are compared in one process too; `cnnfast info` lists the runnable
ones).

Prints ms per variant and the ratio to torch (< 1: cpp is faster). Development tool;
the published numbers come from `cnnfast bench`.
"""

from __future__ import annotations

import argparse
import statistics
import time

import cnnfast
from cnnfast.bench.impls import CnnfastImpl, Inputs, TorchImpl
from cnnfast.bench.suite import load_suite


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("case")
    ap.add_argument("ops", help="comma-separated: forward,backward_input,backward_weight")
    ap.add_argument("--paths", default="", help="comma-separated cpp algorithms to force")
    ap.add_argument("--simd", default="", help="comma-separated SIMD paths to run the "
                    "automatic choice on (portable, avx2, avx512)")
    ap.add_argument("--repeat", type=int, default=21)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pause", type=float, default=0.02,
                    help="seconds of sleep before each sample (then one untimed call)")
    ap.add_argument("--cpu", action="store_true",
                    help="process CPU time instead of wall time (steadier on a loaded "
                         "machine with --threads 1; with more threads it counts spinning)")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    cnnfast.set_num_threads(args.threads)
    case = next(c for c in load_suite() if c.name == args.case)
    inputs = Inputs(case, seed=0)
    for op in args.ops.split(","):
        fns = {"torch": TorchImpl().prepare(case, op, inputs)}
        fns["cpp auto"] = CnnfastImpl("cpp").prepare(case, op, inputs)
        for path in filter(None, args.paths.split(",")):
            try:
                f = CnnfastImpl("cpp").prepare(case, op, inputs)
                fns[f"cpp {path}"] = (lambda f=f, p=path: _pinned(f, p))
                fns[f"cpp {path}"]()
            except NotImplementedError as exc:
                print(f"  {path}: {exc}")
                del fns[f"cpp {path}"]
        for simd in filter(None, args.simd.split(",")):
            f = CnnfastImpl("cpp").prepare(case, op, inputs)
            fns[f"cpp @{simd}"] = (lambda f=f, s=simd: _on_simd(f, s))
            fns[f"cpp @{simd}"]()  # a path this CPU cannot run fails here, at once
        times = {k: [] for k in fns}
        for f in fns.values():
            f()
        clock = time.process_time if args.cpu else time.perf_counter
        for _ in range(args.repeat):
            for k, f in fns.items():
                # as cnnfast bench: a pause lets the previous variant's spinning thread
                # pool go idle, and an untimed call wakes this one's own workers
                time.sleep(args.pause)
                f()
                t0 = clock()
                f()
                times[k].append(clock() - t0)
        ref = statistics.median(times["torch"])
        print(f"{case.name} {op} (threads={args.threads}, {'CPU' if args.cpu else 'wall'} "
              f"time, medians of {args.repeat})")
        for k, ts in times.items():
            m = statistics.median(ts)
            print(f"  {k:16s} {m * 1e3:8.3f} ms  ratio to torch {m / ref:5.2f}")


def _on_simd(f, simd):
    from cnnfast.backends.cpp import _cpp

    _cpp.set_simd_path(simd)
    try:
        return f()
    finally:
        _cpp.set_simd_path("auto")


def _pinned(f, path):
    with cnnfast.use_algorithm(path):
        return f()


if __name__ == "__main__":
    main()
