"""A PyTorch training step with torch's own kernels against the same step after
``cnnfast.torch.replace``: pooling only, and every op cnnfast has.

Models (float32, CPU, Adam, cross-entropy):

* ``cnn``: the seed CNN (``cnnfast train --model cnn``; ``cnnfast.nn.training.cnn_model``)
  in torch: Conv2d(1, 64, 3), ReLU, MaxPool2d(2), Conv2d(64, 64, 3), ReLU,
  MaxPool2d(2), Flatten, Linear(1600, 128), ReLU, Linear(128, 10); 1x28x28 images.
* ``resnet``: a small ResNet on 3x32x32 images: a stem (Conv 3->16 3x3, BN, ReLU), a
  basic block (two Conv 3x3 + BN, identity shortcut), MaxPool2d(2), a downsampling
  basic block (16->32, stride 2, 1x1 projection), AvgPool2d(8), Linear(32, 10).

Variants: ``torch`` (native), ``pool`` (``replace(model, ops=("max_pool",
"avg_pool"))``) and ``all`` (``replace(model)``), each on its own copy of the same
initial weights and the same batches. Rounds interleave the variants (the order
rotates each round) so that all see the same machine load; the table gives the median
step time over every timed step of every round and images/s from it; the speed-up
over torch as the median over rounds of torch's mean step time / the variant's in the
same round (paired: slow drifts of the machine's load cancel); and the fastest single
step (the least disturbed by other load).

    python benchmarks/torch_swap.py --threads 2 --batch 64 --steps 10 --rounds 5
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

VARIANTS = {"torch": None, "pool": ("max_pool", "avg_pool"),
            "all": ("conv", "conv_transpose", "max_pool", "avg_pool")}


def seed_cnn(nn):
    return nn.Sequential(
        nn.Conv2d(1, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 5 * 5, 128), nn.ReLU(), nn.Linear(128, 10))


def small_resnet(nn):
    class BasicBlock(nn.Module):
        def __init__(self, c_in, c_out, stride=1):
            super().__init__()
            self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(c_out)
            self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(c_out)
            self.shortcut = nn.Identity() if stride == 1 and c_in == c_out else \
                nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                              nn.BatchNorm2d(c_out))

        def forward(self, x):
            y = self.bn1(self.conv1(x)).relu()
            return (self.bn2(self.conv2(y)) + self.shortcut(x)).relu()

    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        BasicBlock(16, 16), nn.MaxPool2d(2), BasicBlock(16, 32, stride=2),
        nn.AvgPool2d(8), nn.Flatten(), nn.Linear(32, 10))


MODELS = {"cnn": (seed_cnn, (1, 28, 28)), "resnet": (small_resnet, (3, 32, 32))}


def _setup(model_name, batch, seed):
    import torch

    import cnnfast.torch as ct

    build, image = MODELS[model_name]
    torch.manual_seed(seed)
    base = build(torch.nn)
    gen = torch.Generator().manual_seed(seed + 1)
    batches = [(torch.randn((batch,) + image, generator=gen),
                torch.randint(0, 10, (batch,), generator=gen)) for _ in range(4)]
    setups = {}
    for name, ops in VARIANTS.items():
        model = copy.deepcopy(base)
        if ops is not None:
            ct.replace(model, ops=ops)
        setups[name] = (model, torch.optim.Adam(model.parameters(), lr=1e-3))
    return setups, batches


def _steps(setup, batches, steps):
    """Seconds of each of ``steps`` training steps."""
    import torch

    model, opt = setup
    times = []
    for i in range(steps):
        x, y = batches[i % len(batches)]
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return times


def _check_same_step(setups, batches):
    """One step of each variant from the same weights gives the same loss (float32
    rounding apart): the swap changes the kernels, not the model."""
    import torch

    losses = {}
    for name, (model, _) in setups.items():
        x, y = batches[0]
        with torch.no_grad():
            losses[name] = torch.nn.functional.cross_entropy(model(x), y).item()
    ref = losses["torch"]
    for name, value in losses.items():
        if abs(value - ref) > 1e-4 * max(1.0, abs(ref)):
            raise AssertionError(f"{name}: loss {value} differs from torch's {ref}")


def run(model_name, batch, steps, rounds, warmup, seed):
    setups, batches = _setup(model_name, batch, seed)
    _check_same_step(setups, batches)
    for setup in setups.values():
        _steps(setup, batches, warmup)
    times = {name: [] for name in setups}
    rounds_mean = {name: [] for name in setups}
    names = list(setups)
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            t = _steps(setups[name], batches, steps)
            times[name] += t
            rounds_mean[name].append(statistics.fmean(t))
    # the speed-up: the median over rounds of torch's time / the variant's time in the
    # same round (paired, so that slow drifts of the machine's load cancel)
    return {name: (statistics.median(t), min(t),
                   statistics.median(a / b for a, b in zip(rounds_mean["torch"],
                                                           rounds_mean[name])))
            for name, t in times.items()}


def pool_layers(batch, rounds):
    """The seed CNN's two MaxPool2d(2) layers alone, forward + backward, torch's against
    cnnfast's (interleaved, alternating which goes first): {layer: (torch median,
    cnnfast median, median paired speed-up)} in seconds."""
    import torch

    import cnnfast.torch as ct

    out = {}
    for layer, shape in (("pool1 64x26x26", (batch, 64, 26, 26)),
                         ("pool2 64x11x11", (batch, 64, 11, 11))):
        x = torch.randn(shape, requires_grad=True)
        grad = torch.randn((batch, 64, shape[2] // 2, shape[3] // 2))
        fns = {"torch": torch.nn.MaxPool2d(2), "cnnfast": ct.nn.MaxPool2d(2)}
        times = {name: [] for name in fns}
        for r in range(rounds + 2):
            for name in (list(fns) if r % 2 else list(fns)[::-1]):
                t0 = time.perf_counter()
                fns[name](x).backward(grad)
                if r >= 2:  # two warm-up rounds
                    times[name].append(time.perf_counter() - t0)
        out[layer] = (statistics.median(times["torch"]), statistics.median(times["cnnfast"]),
                      statistics.median(a / b for a, b in zip(times["torch"],
                                                              times["cnnfast"])))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="cnn,resnet")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import torch

    import cnnfast
    from cnnfast.bench.results import cpu_model

    torch.set_num_threads(args.threads)
    cnnfast.set_num_threads(args.threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"CPU: {cpu_model()}, {args.threads} threads (torch and cnnfast); torch "
          f"{torch.__version__}, cnnfast {cnnfast.__version__}; batch {args.batch}, "
          f"{args.rounds} rounds x {args.steps} steps, interleaved; load average "
          f"{load:.2f} at the start")
    print("command: python benchmarks/torch_swap.py " + " ".join(
        sys.argv[1:] if argv is None else argv))
    print()
    print("| model | variant | median step (ms) | images/s | vs torch | fastest step (ms) |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for model_name in args.models.split(","):
        results = run(model_name, args.batch, args.steps, args.rounds, args.warmup,
                      args.seed)
        for name, (seconds, best, speedup) in results.items():
            label = {"torch": "torch native", "pool": "cnnfast pooling only",
                     "all": "cnnfast all ops"}[name]
            print(f"| {model_name} | {label} | {seconds * 1e3:.1f} | "
                  f"{args.batch / seconds:,.0f} | {speedup:.2f}x | {best * 1e3:.1f} |",
                  flush=True)
    if "cnn" in args.models.split(","):
        print()
        print("| seed CNN layer, forward + backward | torch (ms) | cnnfast (ms) | speed-up |")
        print("| --- | ---: | ---: | ---: |")
        for layer, (theirs, ours, speedup) in pool_layers(args.batch,
                                                          4 * args.rounds).items():
            print(f"| {layer} | {theirs * 1e3:.2f} | {ours * 1e3:.2f} | {speedup:.2f}x |")


if __name__ == "__main__":
    main()
