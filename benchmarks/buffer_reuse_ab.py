#!/usr/bin/env python
"""Does Sequential's reuse of its intermediate results' arrays pay? The seed CNN
training loop (train_vs_torch.py's LoopArm: batch 64, Adam, cpp backend) with the
reuse on and off (``model._buffers = None``), interleaved rounds in one process,
medians, and the minor page faults per step of each arm.

    python benchmarks/buffer_reuse_ab.py [--steps 20] [--rounds 10] [--threads 2]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cnnfast  # noqa: E402
import train_vs_torch as tvt  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--backend", default="cpp")
    args = ap.parse_args(argv)
    cnnfast.set_num_threads(args.threads)
    batch = 64
    batches, _ = tvt._batches(None, batch, args.steps, 0)
    arms = {"reuse": tvt.LoopArm(args.backend, 0, batch),
            "fresh": tvt.LoopArm(args.backend, 0, batch)}
    arms["fresh"].model._buffers = None
    for arm in arms.values():  # warm up: compile, grow the workspaces
        for x, y in batches[:3]:
            arm.step(x, y)
    speed = {k: [] for k in arms}
    faults = {k: [] for k in arms}
    for r in range(args.rounds):
        for k in (("reuse", "fresh") if r % 2 == 0 else ("fresh", "reuse")):
            time.sleep(0.2)  # let the other arm's thread pools go idle
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            t0 = time.perf_counter()
            for x, y in batches:
                arms[k].step(x, y)
            dt = time.perf_counter() - t0
            faults[k].append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
                             / args.steps)
            speed[k].append(batch * args.steps / dt)
    for k in arms:
        print(f"{k:6s} {statistics.median(speed[k]):7,.0f} images/s (median of {args.rounds}), "
              f"{statistics.median(faults[k]):7,.0f} minor page faults a step; rounds: "
              + ", ".join(f"{v:,.0f}" for v in speed[k]))
    ratios = [a / b for a, b in zip(speed["reuse"], speed["fresh"])]
    print(f"reuse / fresh: {statistics.median(speed['reuse']) / statistics.median(speed['fresh']):.3f}"
          f" (per-round median {statistics.median(ratios):.3f}, "
          f"{sum(r > 1 for r in ratios)} of {len(ratios)} rounds above 1)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
