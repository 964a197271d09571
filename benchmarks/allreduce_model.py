"""A cost model of data-parallel training of the ``cnn`` model over a network: the
ring allreduce of its gradients against the measured compute time per step.

Ring allreduce of ``B`` bytes over ``N`` machines (reduce-scatter + allgather, each
``N - 1`` steps sending ``B / N`` bytes)::

    T(N) = 2 (N - 1) / N * B / bandwidth + 2 (N - 1) * latency

The compute time per image comes from a measurement (``--per-image-ms``, or
``--measure``: a short single-process timing of the real training step here, one
thread, the fastest of a few steps). The model assumes no overlap of communication
with the backward pass (cnnfast's step reduces once, after the whole backward) and
compute proportional to the per-machine batch.

    python benchmarks/allreduce_model.py --measure                # print the tables
    python benchmarks/allreduce_model.py --measure --update benchmarks/distributed.md

``--update`` rewrites the part of that file between the ``allreduce_model`` markers.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import time

MACHINES = (2, 4, 8, 16, 32, 64)
# (name, bits per second, per-message latency in seconds): line rate, no protocol
# overhead; the latencies are typical of TCP over 10 GbE and of RDMA at 100 Gbit/s.
NETWORKS = (("10 Gbit/s", 10e9, 50e-6), ("100 Gbit/s", 100e9, 5e-6))
BEGIN, END = "<!-- allreduce_model:begin -->", "<!-- allreduce_model:end -->"


def cnn_param_count(side: int = 28, channels: int = 1, classes: int = 10) -> dict:
    """Parameters of Conv 64 3x3 -> ReLU -> MaxPool 2 -> Conv 64 3x3 -> ReLU ->
    MaxPool 2 -> Flatten -> Dense 128 -> ReLU -> Dense ``classes``, from the shapes."""
    counts = {}
    s = side - 3 + 1                         # conv 3x3, no padding: 28 -> 26
    counts["conv1"] = 64 * channels * 3 * 3 + 64
    s //= 2                                  # max pool 2: 26 -> 13
    s = s - 3 + 1                            # 13 -> 11
    counts["conv2"] = 64 * 64 * 3 * 3 + 64
    s //= 2                                  # 11 -> 5
    flat = 64 * s * s                        # 1600
    counts["dense1"] = flat * 128 + 128
    counts["dense2"] = 128 * classes + classes
    counts["flatten"] = flat
    counts["total"] = sum(counts[k] for k in ("conv1", "conv2", "dense1", "dense2"))
    return counts


def ring_allreduce_s(nbytes: float, n: int, bits_per_s: float, latency_s: float) -> float:
    if n < 2:
        return 0.0
    return 2 * (n - 1) / n * nbytes / (bits_per_s / 8) + 2 * (n - 1) * latency_s


def measure_per_image_ms(backend: str = "cpp", batch: int = 64, steps: int = 6) -> float:
    """Fastest of ``steps`` training steps of the cnn model (one thread) per image."""
    import numpy as np

    from cnnfast import nn
    from cnnfast.nn.data import to_float
    from cnnfast.nn.training import Trainer, cnn_model
    from cnnfast.threads import set_num_threads

    set_num_threads(1)
    trainer = Trainer(cnn_model(seed=0, backend=backend), nn.Adam(1e-3), batch_size=batch)
    rng = np.random.default_rng(0)
    x = to_float(rng.integers(0, 256, (batch, 1, 28, 28), dtype=np.uint8))
    y = rng.integers(0, 10, batch)
    times = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        trainer.train_step(x, y)
        times.append(time.perf_counter() - t0)
    return 1e3 * min(times[1:]) / batch


def tables(per_image_ms: float, dtype_bytes: int = 4, global_batch: int = 64,
           per_rank_batch: int = 32, efficiency: float = 0.9, source: str = "") -> str:
    p = cnn_param_count()
    nbytes = p["total"] * dtype_bytes
    t_img = per_image_ms / 1e3
    out = []
    w = out.append
    w(f"Gradient: {p['total']:,} parameters (conv1 {p['conv1']:,}, conv2 {p['conv2']:,}, "
      f"dense1 {p['dense1']:,} from flatten {p['flatten']:,}, dense2 {p['dense2']:,}) "
      f"x {dtype_bytes} bytes = {nbytes:,} bytes ({nbytes / 2**20:.2f} MiB) per step.")
    w(f"Compute: {per_image_ms:.3g} ms per image per machine (one thread){source}.")
    w("Networks: " + "; ".join(f"{name}, latency {lat * 1e6:g} us per message"
                                for name, _, lat in NETWORKS) + " (line rate).")
    w("")
    w("**Ring allreduce time per step** (ms; bandwidth term + latency term):")
    w("")
    w("| machines | " + " | ".join(name for name, _, _ in NETWORKS) + " |")
    w("|---:|" + "---:|" * len(NETWORKS))
    for n in MACHINES:
        cells = []
        for _, bps, lat in NETWORKS:
            bw = 2 * (n - 1) / n * nbytes / (bps / 8)
            cells.append(f"{1e3 * (bw + 2 * (n - 1) * lat):.2f} "
                         f"({1e3 * bw:.2f} + {1e3 * 2 * (n - 1) * lat:.2f})")
        w(f"| {n} | " + " | ".join(cells) + " |")
    w("")

    w(f"**Fixed global batch {global_batch}** (strong scaling: each machine takes "
      f"{global_batch}/N images a step). Speed-up over one machine, and the share of "
      f"the step spent in the allreduce:")
    w("")
    w("| machines | images/machine | compute ms | " +
      " | ".join(f"{name}: speed-up, comm %" for name, _, _ in NETWORKS) + " |")
    w("|---:|---:|---:|" + "---:|" * len(NETWORKS))
    one = global_batch * t_img
    best = {}
    for n in MACHINES:
        local = global_batch / n
        tc = local * t_img
        cells = []
        for name, bps, lat in NETWORKS:
            tcomm = ring_allreduce_s(nbytes, n, bps, lat)
            speedup = one / (tc + tcomm)
            if speedup > best.get(name, (0, 0))[1]:
                best[name] = (n, speedup)
            cells.append(f"{speedup:.1f}x, {100 * tcomm / (tc + tcomm):.0f}%")
        w(f"| {n} | {local:g} | {1e3 * tc:.1f} | " + " | ".join(cells) + " |")
    w("")
    for name, bps, lat in NETWORKS:
        n_best, s_best = best[name]
        effs = [(n, one / (global_batch / n * t_img + ring_allreduce_s(nbytes, n, bps, lat))
                 / n) for n in MACHINES]
        below90 = next((n for n, e in effs if e < 0.9), None)
        below50 = next((n for n, e in effs if e < 0.5), None)
        w(f"- {name}: the speed-up "
          + (f"peaks at {s_best:.1f}x at {n_best} machines" if n_best != MACHINES[-1]
             else f"is still rising at {MACHINES[-1]} machines ({s_best:.1f}x)")
          + "; efficiency (speed-up / machines) "
          + (f"falls below 90% at {below90} machines" if below90 else "stays >= 90%")
          + (f" and below 50% at {below50}" if below50 else "") + ".")
    w("")

    w(f"**Fixed batch per machine** (weak scaling: the global batch grows with N). "
      f"Parallel efficiency with {per_rank_batch} images per machine, and the "
      f"smallest per-machine batch that keeps the efficiency at "
      f"{100 * efficiency:.0f}% (compute >= {efficiency / (1 - efficiency):.0f}x "
      f"the allreduce), with the global batch it implies:")
    w("")
    w("| machines | " + " | ".join(
        f"{name}: eff. at {per_rank_batch}/machine, min batch/machine (global)"
        for name, _, _ in NETWORKS) + " |")
    w("|---:|" + "---:|" * len(NETWORKS))
    for n in MACHINES:
        cells = []
        for _, bps, lat in NETWORKS:
            tcomm = ring_allreduce_s(nbytes, n, bps, lat)
            tc = per_rank_batch * t_img
            b_min = max(1, math.ceil(efficiency / (1 - efficiency) * tcomm / t_img))
            cells.append(f"{100 * tc / (tc + tcomm):.0f}%, {b_min} ({b_min * n:,})")
        w(f"| {n} | " + " | ".join(cells) + " |")
    w("")
    w(f"**How fast may the compute get?** The per-image compute time below which "
      f"the efficiency at {per_rank_batch} images per machine drops under "
      f"{100 * efficiency:.0f}% (a faster backend, threads or a GPU shrink the "
      f"compute, not the allreduce); the compute used above: {1e3 * t_img:.3g} ms:")
    w("")
    w("| machines | " + " | ".join(f"{name}: us/image (images/s per machine)"
                                    for name, _, _ in NETWORKS) + " |")
    w("|---:|" + "---:|" * len(NETWORKS))
    for n in MACHINES:
        cells = []
        for _, bps, lat in NETWORKS:
            t_min = efficiency / (1 - efficiency) * ring_allreduce_s(nbytes, n, bps, lat) \
                / per_rank_batch
            cells.append(f"{1e6 * t_min:.0f} ({1 / t_min:,.0f})")
        w(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--per-image-ms", type=float,
                     help="measured compute time per image per machine (ms)")
    src.add_argument("--measure", action="store_true",
                     help="time the cnn training step here (one thread)")
    ap.add_argument("--backend", default="cpp", help="for --measure (cpp)")
    ap.add_argument("--global-batch", type=int, default=64)
    ap.add_argument("--per-rank-batch", type=int, default=32)
    ap.add_argument("--update", metavar="FILE",
                    help="rewrite the section between the allreduce_model markers")
    args = ap.parse_args(argv)
    if args.measure:
        per_image = measure_per_image_ms(args.backend)
        source = (f", measured here: the fastest of 6 steps of batch 64, backend "
                  f"{args.backend}")
    else:
        per_image, source = args.per_image_ms, ", as given"
    text = tables(per_image, global_batch=args.global_batch,
                  per_rank_batch=args.per_rank_batch, source=source)
    print(text)
    if args.update:
        with open(args.update) as f:
            doc = f.read()
        pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
        if not pattern.search(doc):
            sys.exit(f"{args.update}: no {BEGIN} ... {END} section")
        doc = pattern.sub(lambda _: f"{BEGIN}\n{text}\n{END}", doc)
        with open(args.update, "w") as f:
            f.write(doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
