"""The cpp backend's fused activation (``activation=``) against the bare convolution and
against the unfused form, on the seed CNN's conv layers and two ResNet 3x3 layers.

    .venv/bin/python benchmarks/fused_epilogue_bench.py [--threads 2] [--reps 21]
        [--activation relu] [--only SUBSTRING]

One process, float32, 2 threads by default. Per layer and pass, three calls are
interleaved round by round in an order shuffled every round (so that drift on a busy
machine and the caches one call leaves behind hit all alike), and their medians printed:

* forward: ``bare`` conv + bias; ``fused`` conv + bias + activation (the epilogue in the
  kernel that writes y); ``unfused`` the bare conv then the activation in numpy
  (relu: ``np.maximum(y, 0, out=y)``, the others: ``cnnfast.activation.apply``).
* backward (grad_x, grad_weight and grad_bias): ``bare`` the backward without an
  activation; ``fused`` with ``activation=`` and ``y=`` (g = grad_y * act'(y) and the
  bias gradient in one C++ pass, then the gradient kernels on g); ``unfused`` g in
  numpy (relu: ``np.where(y > 0, gy, 0)``) then the bare backward (whose bias gradient
  is a separate pass over g).

The columns ``fused/bare`` and ``unfused/bare`` are the cost of the activation over
the bare convolution (target for relu: fused <= 1.05). The CPU model, the ISA path of
the kernels and the thread count are printed first.
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import time

import numpy as np

import cnnfast
from cnnfast import activation as act_ref
from cnnfast.backends.cpp import _cpp

# (name, batch, in channels, out channels, spatial, padding): the seed CNN (`cnnfast
# train --model cnn`: Conv 1->64 3x3 on 28x28, ReLU, MaxPool 2, Conv 64->64 3x3 on
# 13x13, batch 64) and two ResNet 3x3 layers.
LAYERS = [
    ("seed conv1 1->64 @28", 64, 1, 64, 28, 0),
    ("seed conv2 64->64 @13", 64, 64, 64, 13, 0),
    ("resnet 64->64 @56", 8, 64, 64, 56, 1),
    ("resnet 128->128 @28", 8, 128, 128, 28, 1),
]


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            fields = dict(tuple(s.strip() for s in line.split(":", 1))
                          for line in f if ":" in line)
    except OSError:
        return platform.processor() or "unknown"
    return (f"{fields.get('model name', '?')} (family {fields.get('cpu family', '?')}, "
            f"model {fields.get('model', '?')})")


def calls(x, w, b, gy, pad, act):
    """{pass: {label: callable}}."""
    kw = dict(padding=pad, backend="cpp")
    y = cnnfast.conv2d(x, w, b, activation=act, **kw)  # the activated output

    def unfused_fwd():
        out = cnnfast.conv2d(x, w, b, **kw)
        if act == "relu":
            return np.maximum(out, 0, out=out)
        return act_ref.apply(out, act, 0.01)

    def unfused_bwd():
        g = np.where(y > 0, gy, np.float32(0)) if act == "relu" else act_ref.grad(gy, y, act, 0.01)
        return cnnfast.conv_backward(g, x, w, **kw)

    return {
        "forward": {
            "bare": lambda: cnnfast.conv2d(x, w, b, **kw),
            "fused": lambda: cnnfast.conv2d(x, w, b, activation=act, **kw),
            "unfused": unfused_fwd,
        },
        "backward": {
            "bare": lambda: cnnfast.conv_backward(gy, x, w, **kw),
            "fused": lambda: cnnfast.conv_backward(gy, x, w, activation=act, y=y, **kw),
            "unfused": unfused_bwd,
        },
    }


def time_interleaved(fns, reps, rng, clock):
    times = {k: [] for k in fns}
    for f in fns.values():  # warm-up: workspaces, caches
        f()
    for _ in range(reps):
        order = list(fns)
        rng.shuffle(order)
        for k in order:
            t0 = clock()
            fns[k]()
            times[k].append(clock() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=21)
    ap.add_argument("--activation", default="relu", choices=act_ref.ACTIVATIONS)
    ap.add_argument("--only", default="", help="layers whose name holds this")
    ap.add_argument("--clock", default="wall", choices=("wall", "cpu"),
                    help="wall time, or the process's CPU time (all threads: steadier "
                         "on a machine other processes load)")
    args = ap.parse_args()
    cnnfast.set_num_threads(args.threads)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    print(f"CPU: {cpu_model()}; kernels: {_cpp.kernel_path()}; threads: {args.threads}; "
          f"float32; activation: {args.activation}; {args.clock} time, medians of "
          f"{args.reps} interleaved rounds\n")
    print("| layer | pass | path | bare ms | fused ms | unfused ms | fused/bare | "
          "unfused/bare |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    rng = random.Random(0)
    for name, n, c, o, hw, pad in LAYERS:
        if args.only not in name:
            continue
        r = np.random.default_rng(0)
        x = r.standard_normal((n, c, hw, hw)).astype(np.float32)
        w = (r.standard_normal((o, c, 3, 3)) / np.sqrt(9 * c)).astype(np.float32)
        b = r.standard_normal(o).astype(np.float32) * np.float32(0.1)
        ho = hw + 2 * pad - 2
        gy = r.standard_normal((n, o, ho, ho)).astype(np.float32)
        for pss, fns in calls(x, w, b, gy, pad, args.activation).items():
            op = "conv2d" if pss == "forward" else "conv2d_backward"
            explain = (cnnfast.explain(op, x, w, padding=pad, backend="cpp")
                       if pss == "forward" else "")
            path = explain.split(" (")[0].replace("cpp: ", "") if explain else "auto"
            med = time_interleaved(fns, args.reps, rng, clock)
            bare = med["bare"]
            print(f"| {name} | {pss} | {path} | {bare * 1e3:.2f} | {med['fused'] * 1e3:.2f} | "
                  f"{med['unfused'] * 1e3:.2f} | {med['fused'] / bare:.3f} | "
                  f"{med['unfused'] / bare:.3f} |", flush=True)


if __name__ == "__main__":
    main()
