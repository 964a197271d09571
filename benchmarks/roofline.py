"""Each benchmark row against the machine's roofline and the issue's target.

    python benchmarks/roofline.py benchmarks/results/cpu.json --backend cpp
    python benchmarks/roofline.py benchmarks/results/cpu.json --backend numba --misses

For every row of a ``cnnfast bench --json`` document: our median, torch's, the ratio
(torch time / ours), the target (issue 15's, from ``issue15_targets.py``, as the same
ratio), the time the target demands (torch / target), and the roofline floor: the
larger of FLOPs / peak GFLOP/s and bytes / peak GB/s, where a convolution moves at
least its three tensors once and a pooling the bytes the suite counts, and a Winograd
F(4x4, 3x3) row does 4x fewer multiplications. ``demands < floor`` marks a target that
no implementation of that algorithm can meet on this machine; ``ours/floor`` says how
far a row is from the hardware limit (1.0 = at the roofline). The peaks are the run's
measured ones unless given: ``--peak-gflops`` sets the compute roof, e.g. what the
micro-kernel reaches in cache (``benchmarks/ukernel_roof.cpp``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from issue15_targets import target as target_of  # noqa: E402  (one place for them)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json")
    ap.add_argument("--backend", required=True)
    ap.add_argument("--misses", action="store_true", help="only rows below target")
    ap.add_argument("--peak-gflops", type=float, default=None,
                    help="the compute roof (default: the run's measured peak)")
    args = ap.parse_args(argv)

    from cnnfast import params as P

    doc = json.loads(Path(args.json).read_text())
    peak_gf = args.peak_gflops or doc["settings"]["peak_gflops"]
    peak_gbs = doc["settings"]["peak_gbs"]
    cases = {c["name"]: c for c in doc["cases"]}
    rows = {(r["case"], r["op"], r["impl"]): r for r in doc["results"]}
    print(f"roofline: {peak_gf:g} GFLOP/s, {peak_gbs:g} GB/s; times in ms")
    print(f"{'case':24s} {'op':16s} {'ours':>8s} {'torch':>8s} {'ratio':>6s} {'target':>6s} "
          f"{'demands':>8s} {'floor':>8s} {'ours/floor':>10s}  note")
    for (name, op, impl), r in rows.items():
        if impl != args.backend or r["status"] != "ok":
            continue
        ref = rows.get((name, op, r["reference"])) if r.get("reference") else None
        case = cases[name]
        item = {"float64": 8, "float32": 4, "float16": 2}[case["dtype"]]
        if r["bytes"] is not None:
            nbytes = r["bytes"]
        else:  # convolution: x, w and y once (y from the forward's output shape)
            p = _params(case, P)
            n, c_out = case["x"][0], _out_channels(case)
            y = n * c_out * math.prod(p.out_shape)
            nbytes = (math.prod(case["x"]) + math.prod(case["weight"]) + y) * item
        flops = (r["flops"] or 0) / (4 if r.get("algorithm") == "winograd" else 1)
        floor = max(flops / (peak_gf * 1e9), nbytes / (peak_gbs * 1e9))
        ours = r["median_s"]
        theirs = ref["median_s"] if ref and ref["status"] == "ok" else None
        ratio = theirs / ours if theirs else None
        target = 1 / target_of(name, op, impl)
        demands = theirs / target if theirs and target else None
        miss = ratio is not None and target is not None and ratio < target
        if args.misses and not miss:
            continue
        note = []
        if miss:
            note.append(f"MISS by {target / ratio:.2f}x")
            if demands is not None and demands < floor:
                note.append("target below the roofline: unreachable here")
        print(f"{name:24s} {op:16s} {ours * 1e3:8.3f} "
              f"{(theirs or float('nan')) * 1e3:8.3f} {ratio or float('nan'):6.2f} "
              f"{target or float('nan'):6.1f} {(demands or float('nan')) * 1e3:8.3f} "
              f"{floor * 1e3:8.3f} {ours / floor:10.2f}  {'; '.join(note)}")


def _out_channels(case):
    if case["kind"] == "conv":
        return case["weight"][0]
    return case["weight"][1] * case["options"].get("groups", 1)


def _params(case, P):
    o = case["options"]
    if case["kind"] == "conv":
        return P.conv_params(tuple(case["x"]), tuple(case["weight"]), o.get("stride", 1),
                             o.get("padding", 0), o.get("dilation", 1), o.get("groups", 1))
    return P.conv_transpose_params(tuple(case["x"]), tuple(case["weight"]),
                                   o.get("stride", 1), o.get("padding", 0),
                                   o.get("output_padding", 0), o.get("groups", 1),
                                   o.get("dilation", 1))


if __name__ == "__main__":
    main()
