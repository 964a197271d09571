"""Training throughput of cnnfast.nn against PyTorch eager on the CPU.

Trains the ``cnnfast train --model cnn`` network (Conv 64 3x3, ReLU, MaxPool 2, Conv 64
3x3, ReLU, MaxPool 2, Dense 128, ReLU, Dense 10; Adam, float32) for ``--steps``
steps per round in cnnfast (the given backend) and in PyTorch (same thread count),
interleaving the rounds so that both see the same machine load, and reports:

* images/s of each (median over rounds) and the ratio cnnfast / torch;
* for cnnfast, each layer's share of the step time, forward and backward
  (timed on separate, instrumented steps so the throughput rounds stay clean);
* the peak RSS of the process (``resource.getrusage``), which includes torch.

    python benchmarks/train_vs_torch.py --backend cpp --threads 2 --steps 20 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from collections import defaultdict

import numpy as np


def _batches(data, batch_size, steps, seed):
    """``steps`` (uint8 images, labels) batches: real Fashion-MNIST when found,
    else random pixels (throughput does not depend on the values)."""
    from cnnfast.nn.data import load_fashion_mnist

    try:
        x, y = load_fashion_mnist("train", data, limit=batch_size * steps)
        source = "fashion-mnist"
    except FileNotFoundError:
        rng = np.random.default_rng(seed)
        x = rng.integers(0, 256, (batch_size * steps, 1, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, batch_size * steps)
        source = "random"
    return [(x[i:i + batch_size], y[i:i + batch_size])
            for i in range(0, len(x), batch_size)], source


def _cnnfast_setup(backend, seed):
    from cnnfast import nn
    from cnnfast.nn.training import Trainer, cnn_model

    model = cnn_model(seed=seed, backend=backend)
    if backend == "cupy":
        model.to("gpu")  # the whole step on the GPU; torch stays on the CPU
    return Trainer(model, nn.Adam(1e-3), batch_size=64, seed=seed)


def _sync(xp):
    if xp is not np:
        xp.cuda.Device().synchronize()


def _cnnfast_run(trainer, batches):
    from cnnfast.nn.data import to_float

    xp = trainer.model.xp
    _sync(xp)
    t0 = time.perf_counter()
    n = 0
    for x, y in batches:
        trainer.train_step(to_float(x, xp=xp), xp.asarray(y))  # loss read back: a sync
        n += len(x)
    _sync(xp)
    return n / (time.perf_counter() - t0)


def _torch_setup(seed):
    import torch

    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 64, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(64, 64, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(1600, 128), torch.nn.ReLU(),
        torch.nn.Linear(128, 10))
    return net, torch.optim.Adam(net.parameters(), lr=1e-3)


def _torch_run(setup, batches):
    import torch

    net, opt = setup
    loss_fn = torch.nn.functional.cross_entropy
    t0 = time.perf_counter()
    n = 0
    for x, y in batches:
        xt = torch.tensor(x, dtype=torch.float32).div_(255)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(xt), torch.from_numpy(y))
        loss.backward()
        opt.step()
        n += len(x)
    return n / (time.perf_counter() - t0)


def layer_profile(trainer, batches):
    """Seconds per layer, forward and backward, over ``batches`` (instrumented
    copies of the layer methods, removed afterwards), plus loss+optimizer."""
    from cnnfast.nn.data import to_float

    times = defaultdict(float)
    model = trainer.model

    def timed(fn, key):
        def wrapper(*a, **k):
            _sync(model.xp)  # GPU: time each layer's own kernels
            t0 = time.perf_counter()
            out = fn(*a, **k)
            _sync(model.xp)
            times[key] += time.perf_counter() - t0
            return out
        return wrapper

    for layer in model.layers:
        layer.forward = timed(layer.forward, (layer.name, "forward"))
        layer.backward = timed(layer.backward, (layer.name, "backward"))
    trainer.optimizer.step = timed(trainer.optimizer.step, ("optimizer", "step"))
    total = 0.0
    xp = trainer.model.xp
    try:
        for x, y in batches:
            t0 = time.perf_counter()
            trainer.train_step(to_float(x, xp=xp), xp.asarray(y))
            total += time.perf_counter() - t0
    finally:
        for layer in model.layers:
            del layer.forward, layer.backward
        del trainer.optimizer.step
    accounted = sum(times.values())
    times[("loss, batch, glue", "")] = max(total - accounted, 0.0)
    return times, total


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default=None, help="cnnfast backend (default: automatic)")
    ap.add_argument("--threads", type=int, default=2, help="threads for both (2)")
    ap.add_argument("--steps", type=int, default=20, help="training steps per round (20)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (3)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed warm-up steps (3)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--profile-steps", type=int, default=5,
                    help="instrumented steps for the per-layer shares (5; 0: skip)")
    ap.add_argument("--no-torch", action="store_true", help="cnnfast only")
    ap.add_argument("--data", default=None, help="Fashion-MNIST folder")
    ap.add_argument("--json", action="store_true", help="also print one JSON line")
    args = ap.parse_args(argv)

    import cnnfast

    cnnfast.set_num_threads(args.threads)
    torch = None
    if not args.no_torch:
        try:
            import torch
            torch.set_num_threads(args.threads)
        except ImportError:
            print("torch is not installed: cnnfast only", file=sys.stderr)
    batches, source = _batches(args.data, args.batch_size, args.steps, 0)
    trainer = _cnnfast_setup(args.backend, 0)
    tsetup = _torch_setup(0) if torch is not None else None
    warm = batches[:max(args.warmup, 0)]
    # cnnfast runs as `cnnfast train` does: numpy's BLAS on one thread (its spinning
    # workers would take the convolution kernels' cores; cnnfast.threads).
    from cnnfast.threads import single_threaded_blas

    with single_threaded_blas():
        _cnnfast_run(trainer, warm)  # JIT compilation, caches, allocator
    if tsetup:
        _torch_run(tsetup, warm)

    ours, theirs = [], []
    for _ in range(args.rounds):
        with single_threaded_blas():
            ours.append(_cnnfast_run(trainer, batches))
        if tsetup:
            theirs.append(_torch_run(tsetup, batches))
    result = {"backend": args.backend or "auto", "threads": args.threads,
              "batch_size": args.batch_size, "steps": args.steps, "rounds": args.rounds,
              "data": source, "cnnfast_img_s": statistics.median(ours),
              "cnnfast_img_s_all": ours}
    if theirs:
        result.update(torch_img_s=statistics.median(theirs), torch_img_s_all=theirs,
                      ratio=statistics.median(ours) / statistics.median(theirs),
                      torch=torch.__version__)

    print(f"cnn training step, batch {args.batch_size}, {args.threads} threads, "
          f"{args.steps} steps x {args.rounds} interleaved rounds ({source} data)")
    print(f"  cnnfast [{result['backend']}]: {result['cnnfast_img_s']:,.0f} images/s "
          f"(rounds: {', '.join(f'{v:,.0f}' for v in ours)})")
    if theirs:
        print(f"  torch {torch.__version__} eager: {result['torch_img_s']:,.0f} images/s "
              f"(rounds: {', '.join(f'{v:,.0f}' for v in theirs)})")
        print(f"  ratio cnnfast / torch: {result['ratio']:.2f}")

    if args.profile_steps > 0:
        with single_threaded_blas():
            times, total = layer_profile(trainer, batches[:args.profile_steps])
        result["layer_shares"] = {f"{k[0]} {k[1]}".strip(): v / total
                                  for k, v in times.items()}
        print(f"  cnnfast time per layer ({args.profile_steps} instrumented steps, "
              f"{total / args.profile_steps * 1e3:.1f} ms/step):")
        for (name, phase), t in sorted(times.items(), key=lambda kv: -kv[1]):
            print(f"    {name:<18} {phase:<9} {t / args.profile_steps * 1e3:8.2f} ms "
                  f"{100 * t / total:5.1f}%")

    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["peak_rss_mb"] = peak_mb
    print(f"  peak RSS of this process: {peak_mb:,.0f} MB")
    if args.json:
        print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
