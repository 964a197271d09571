"""Rows of a `cnnfast bench` results file against issue 15's targets (time ratio
cnnfast / torch, medians): cpp <= 0.7 on 3x3 stride-1 layers (ResNet 3x3, the seed
conv2), <= 0.5 on the seed conv1 layer and depthwise, pooling forward <= 0.33, other
pooling <= 1.1, every other dense row <= 1.0; numba <= 1.25 on every row.

    python benchmarks/issue15_targets.py benchmarks/results/cpu.json [--backend cpp,numba]

Prints, per backend, how many rows meet their target, each miss with its ratio, and
the range of the 3x3 stride-1 rows. `benchmarks/roofline.py` puts every row (or the
misses) against these targets and the machine's roofline.
"""

from __future__ import annotations

import argparse
import json


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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results")
    ap.add_argument("--backend", default="cpp,numba")
    args = ap.parse_args(argv)
    with open(args.results) as f:
        doc = json.load(f)
    med = {(r["case"], r["op"], r["impl"]): r["median_s"]
           for r in doc["results"] if r.get("median_s")}
    for impl in args.backend.split(","):
        rows = [(c, o, t / med[(c, o, "torch")]) for (c, o, i), t in med.items()
                if i == impl and (c, o, "torch") in med]
        misses = [(c, o, r) for c, o, r in rows if r > target(c, o, impl)]
        s1 = [r for c, o, r in rows if c.startswith(("resnet.conv3x3", "fmnist.conv2"))]
        print(f"{impl}: {len(rows) - len(misses)} of {len(rows)} rows meet their target"
              + (f"; 3x3 stride-1 rows {min(s1):.2f}-{max(s1):.2f}" if s1 else ""))
        for c, o, r in misses:
            print(f"  miss: {c} {o} {r:.2f} (target {target(c, o, impl)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
