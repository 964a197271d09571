"""Rows of a `cnnfast bench` results file against issue 15's targets (time ratio
cnnfast / torch, medians): cpp <= 0.7 on 3x3 stride-1 layers (ResNet 3x3, the seed
conv2), <= 0.5 on the seed conv1 layer and depthwise, pooling forward <= 0.33, other
pooling <= 1.1, every other dense row <= 1.0; numba <= 1.25 on every row.

    python benchmarks/issue15_targets.py benchmarks/results/cpu.json [--backend cpp,numba]
        [--gemm-gflops X]

Prints, per backend, how many rows meet their target, each miss with its ratio, and
the range of the 3x3 stride-1 rows. Each miss also gets its roofline: the time its
target asks for, the least time its FLOPs need at the run's measured peak (or at
--gemm-gflops, e.g. what the micro-kernel reaches in cache) after the algorithm's
reduction (Winograd F(4x4, 3x3): 4x fewer products), and the least time its
compulsory bytes need at the measured bandwidth (each input read once, the output
written once, as float32; max-pool indices as int64). A target below both bounds
cannot be met by a faster kernel, only by moving fewer bytes or FLOPs.
"""

from __future__ import annotations

import argparse
import json
import math

from cnnfast.bench.suite import load_suite


def target(case: str, op: str, impl: str) -> float:
    if impl == "numba":
        return 1.25
    if "pool" in case:
        return 0.33 if op == "forward" else 1.1
    if case.startswith(("resnet.conv3x3", "fmnist.conv2")):
        return 0.7
    if case.startswith(("fmnist.conv1", "depthwise")):
        return 0.5
    return 1.0


def compulsory_bytes(case, op: str) -> int:
    """Bytes a kernel must move at least (case: a ``cnnfast.bench.suite`` case): its
    inputs read once, its result written once (float32; a max-pool's int64 indices:
    written by the forward, read by the backward)."""
    x, y = math.prod(case.x_shape), math.prod(case.y_shape)
    if case.w_shape is None:  # pooling
        return 4 * (x + y) + (8 * y if case.kind == "max_pool" else 0)
    return 4 * (x + y + math.prod(case.w_shape))


def roofline(row: dict, case, settings: dict, gemm_gflops: float | None) -> str:
    peak_gf = gemm_gflops or settings.get("peak_gflops")
    peak_gbs = settings.get("peak_gbs")
    parts = []
    if row.get("flops") and peak_gf:
        flops = row["flops"] / (4 if row.get("algorithm") == "winograd" else 1)
        parts.append(f"FLOPs {flops / peak_gf / 1e3:.0f} us at {peak_gf:g} GFLOP/s")
    if peak_gbs:
        nbytes = compulsory_bytes(case, row["op"])
        parts.append(f"bytes {nbytes / peak_gbs / 1e3:.0f} us "
                     f"({nbytes / 2**20:.1f} MiB at {peak_gbs:g} GB/s)")
    return "; ".join(parts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results")
    ap.add_argument("--backend", default="cpp,numba")
    ap.add_argument("--gemm-gflops", type=float, default=None,
                    help="the compute roof (default: the run's measured peak)")
    args = ap.parse_args(argv)
    with open(args.results) as f:
        doc = json.load(f)
    med = {(r["case"], r["op"], r["impl"]): r["median_s"]
           for r in doc["results"] if r.get("median_s")}
    row_of = {(r["case"], r["op"], r["impl"]): r for r in doc["results"]}
    cases = {c.name: c for c in load_suite(doc["settings"].get("suite"))}
    for impl in args.backend.split(","):
        rows = [(c, o, t / med[(c, o, "torch")]) for (c, o, i), t in med.items()
                if i == impl and (c, o, "torch") in med]
        misses = [(c, o, r) for c, o, r in rows if r > target(c, o, impl)]
        s1 = [r for c, o, r in rows if c.startswith(("resnet.conv3x3", "fmnist.conv2"))]
        print(f"{impl}: {len(rows) - len(misses)} of {len(rows)} rows meet their target"
              + (f"; 3x3 stride-1 rows {min(s1):.2f}-{max(s1):.2f}" if s1 else ""))
        for c, o, r in misses:
            goal = target(c, o, impl)
            t_torch = 1e6 * med[(c, o, "torch")]
            roof = roofline(row_of[(c, o, impl)], cases[c], doc["settings"], args.gemm_gflops)
            print(f"  miss: {c} {o} {r:.2f} (target {goal}): {r * t_torch:.0f} us, "
                  f"target {goal * t_torch:.0f} us; {roof}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
