"""Training throughput of cnnfast.nn against PyTorch eager on the CPU.

Trains the ``cnnfast train --model cnn`` network (Conv 64 3x3, ReLU, MaxPool 2, Conv 64
3x3, ReLU, MaxPool 2, Dense 128, ReLU, Dense 10; Adam, float32) for ``--steps``
steps per round, in one process, interleaving the rounds of each arm so that all see
the same machine load:

* ``loop``: the loop a user writes from ``cnnfast.nn``'s docstring (forward,
  ``softmax_cross_entropy``, backward, ``Adam.step``), with nothing around it: the
  headline number, and the one the ratio to torch is of;
* ``train``: ``Trainer.train_step`` inside what ``cnnfast train`` wraps its run in
  (numpy's BLAS on one thread, ``cnnfast.threads.single_threaded_blas``);
* ``torch``: the same network in PyTorch eager (same thread count);
* ``loop, free BLAS`` (``--free-blas``): the ``loop`` arm with the dense layers'
  products left on numpy's default BLAS threads, as before issue 16 (a before/after
  comparison in one process).

It prints images/s of each (median over rounds), the ratios to torch, the OpenMP and
BLAS environment it ran under (the benchmark sets none; importing cnnfast picks a short
OpenMP spin unless the environment chose, and torch, loaded after, shares that
runtime), the peak RSS of the process
(``resource.getrusage``, torch included) and, with ``--profile``, each layer's time per
step, forward and backward, plus loss, optimizer and the rest, for every cnnfast arm
(timed on separate, instrumented steps so the throughput rounds stay clean).

    python benchmarks/train_vs_torch.py --backend cpp --threads 2 --steps 20 --rounds 5 --profile
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import sys
import time
from collections import defaultdict

import numpy as np

# Variables that change how the OpenMP, BLAS and cnnfast thread pools behave; the
# benchmark sets none and reports those it finds.
_THREAD_ENV = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS",
               "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "CNNFAST_NUM_THREADS")

# Seconds between arms: OpenBLAS workers spin for a while after their last product
# (and OpenMP workers after their last region), so without a gap one arm's leftover
# spinning would be charged to the next arm.
_GAP_S = 0.2


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


def _sync(xp):
    if xp is not np:
        xp.cuda.Device().synchronize()


# ------------------------------------------------------------------- the cnnfast arms


class LoopArm:
    """The docstring loop of ``cnnfast.nn``: forward, loss, backward, optimizer step."""

    name = "loop"

    def __init__(self, backend, seed, batch_size):
        from cnnfast import nn
        from cnnfast.nn.training import cnn_model

        self.model = cnn_model(seed=seed, backend=backend)
        if backend == "cupy":
            self.model.to("gpu")  # the whole step on the GPU; torch stays on the CPU
        self.optimizer = nn.Adam(1e-3)
        self.loss = nn.softmax_cross_entropy

    def context(self):
        return contextlib.nullcontext()

    def step(self, x, y):
        from cnnfast.nn.data import to_float

        xp = self.model.xp
        out = self.model.forward(to_float(x, xp=xp), training=True)
        loss, grad = self.loss(out, xp.asarray(y))
        self.model.backward(grad)
        self.optimizer.step(self.model)
        return float(loss)  # the loss read back, as a user's log does (a GPU sync)


class FreeBlasArm(LoopArm):
    """The docstring loop with the dense layers' products on numpy's default BLAS
    threads (``serial_blas`` bypassed): cnnfast as it was before issue 16."""

    name = "loop, free BLAS"

    @contextlib.contextmanager
    def context(self):
        from cnnfast.nn.layers import dense

        saved = dense._products
        dense._products = lambda x: contextlib.nullcontext()
        try:
            yield
        finally:
            dense._products = saved


class TrainArm(LoopArm):
    """``Trainer.train_step`` in the BLAS setting ``cnnfast train`` runs under."""

    name = "train"

    def __init__(self, backend, seed, batch_size):
        super().__init__(backend, seed, batch_size)
        from cnnfast.nn.training import Trainer

        self.trainer = Trainer(self.model, self.optimizer, batch_size=batch_size, seed=seed)

    def context(self):
        from cnnfast.threads import single_threaded_blas

        return single_threaded_blas()

    def step(self, x, y):
        from cnnfast.nn.data import to_float

        xp = self.model.xp
        loss, _ = self.trainer.train_step(to_float(x, xp=xp), xp.asarray(y))
        return loss


def _cnnfast_run(arm, batches):
    xp = arm.model.xp
    with arm.context():
        _sync(xp)
        t0 = time.perf_counter()
        n = 0
        for x, y in batches:
            arm.step(x, y)
            n += len(x)
        _sync(xp)
        return n / (time.perf_counter() - t0)


# ------------------------------------------------------------------------ the torch arm


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
        loss.item()  # as the cnnfast arms read their loss back
        n += len(x)
    return n / (time.perf_counter() - t0)


# ---------------------------------------------------------------------------- profile


def layer_profile(arm, batches):
    """Seconds per (layer, phase) over ``batches``, from instrumented copies of the
    layer methods (removed afterwards), plus ("loss", ""), ("optimizer", "") and
    ("rest", ""): batch conversion, the loop and everything not in a layer.

    A fused step (``Sequential(fuse=True)``) calls ``forward_activated`` on the
    convolution, counted as its forward; the activation layer it absorbs then shows
    no time of its own."""
    times = defaultdict(float)
    model = arm.model
    xp = model.xp
    depth = [0]  # a timed call made inside another (forward -> forward_activated)
    # is part of the outer one's time

    def timed(obj, attr, key):
        fn = getattr(obj, attr)

        def wrapper(*a, **k):
            if depth[0]:
                return fn(*a, **k)
            _sync(xp)  # GPU: time each layer's own kernels
            depth[0] += 1
            t0 = time.perf_counter()
            try:
                out = fn(*a, **k)
                _sync(xp)
            finally:
                depth[0] -= 1
            times[key] += time.perf_counter() - t0
            return out
        # an instance attribute (a loss function) is put back, a method uncovered
        patched.append((obj, attr, vars(obj).get(attr)))
        setattr(obj, attr, wrapper)

    patched = []
    for layer in model.layers:
        for method, phase in (("forward", "forward"), ("forward_activated", "forward"),
                              ("backward", "backward")):
            if hasattr(layer, method):
                timed(layer, method, (layer.name, phase))
    timed(arm.optimizer, "step", ("optimizer", ""))
    if isinstance(arm, TrainArm):
        timed(arm.trainer, "loss", ("loss", ""))
    else:
        timed(arm, "loss", ("loss", ""))
    total = 0.0
    try:
        with arm.context():
            for x, y in batches:
                t0 = time.perf_counter()
                arm.step(x, y)
                total += time.perf_counter() - t0
    finally:
        for obj, attr, own in patched:
            if own is None:
                delattr(obj, attr)
            else:
                setattr(obj, attr, own)
    times[("rest", "")] = max(total - sum(times.values()), 0.0)
    return times, total


def _print_profile(profiles, steps):
    """One table, a column per arm: ms per step of each (layer, phase)."""
    names = list(profiles)
    keys = []
    for times, _ in profiles.values():
        keys += [k for k in times if k not in keys]
    tail = [("loss", ""), ("optimizer", ""), ("rest", "")]
    keys = [k for k in keys if k not in tail] + tail
    width = max(12, *(len(n) for n in names))
    print(f"  time per layer, ms per step ({steps} instrumented steps per arm):")
    print(f"    {'layer':<18} {'phase':<9}" + "".join(f" {n:>{width}}" for n in names))
    for key in keys:
        cells = []
        for times, _ in profiles.values():
            cells.append(f"{times[key] / steps * 1e3:{width}.2f}" if key in times
                         else f"{'-':>{width}}")
        print(f"    {key[0]:<18} {key[1]:<9} " + " ".join(cells))
    print(f"    {'step':<18} {'':<9}" + "".join(
        f" {total / steps * 1e3:{width}.2f}" for _, total in profiles.values()))


# ------------------------------------------------------------------------------- main


def _thread_environment():
    return {k: os.environ[k] for k in _THREAD_ENV if k in os.environ}


def _wait_policy(env):
    """The OpenMP wait settings this process runs under, and who chose them."""
    from cnnfast.threads import WAIT_POLICY_VARS

    chosen = [f"{k}={os.environ[k]}" for k in WAIT_POLICY_VARS if k in os.environ]
    if not chosen:
        return "the runtime's default"
    who = "the user" if any(k in env for k in WAIT_POLICY_VARS) else "cnnfast"
    return f"{' '.join(chosen)} (set by {who})"


def _blas_threads():
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default=None, help="cnnfast backend (default: automatic)")
    ap.add_argument("--threads", type=int, default=2, help="threads for both (2)")
    ap.add_argument("--steps", type=int, default=20, help="training steps per round (20)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (3)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed warm-up steps (3)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--profile", action="store_true",
                    help="print each layer's time per step for every cnnfast arm")
    ap.add_argument("--profile-steps", type=int, default=None,
                    help="instrumented steps per arm for --profile (5; > 0 implies "
                         "--profile)")
    ap.add_argument("--free-blas", action="store_true",
                    help="add the docstring loop with the dense layers' BLAS left on its "
                         "default threads (cnnfast before issue 16)")
    ap.add_argument("--no-train", action="store_true", help="skip the Trainer arm")
    ap.add_argument("--no-torch", action="store_true", help="cnnfast only")
    ap.add_argument("--data", default=None, help="Fashion-MNIST folder")
    ap.add_argument("--json", action="store_true", help="also print one JSON line")
    args = ap.parse_args(argv)
    profile_steps = args.profile_steps if args.profile_steps is not None else (
        5 if args.profile else 0)

    env = _thread_environment()  # before anything is imported that might set one
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
    kinds = [LoopArm] + ([] if args.no_train else [TrainArm]) + (
        [FreeBlasArm] if args.free_blas else [])
    arms = [kind(args.backend, 0, args.batch_size) for kind in kinds]
    tsetup = _torch_setup(0) if torch is not None else None
    warm = batches[:max(args.warmup, 0)]
    for arm in arms:
        _cnnfast_run(arm, warm)  # JIT compilation, caches, allocator
    if tsetup:
        _torch_run(tsetup, warm)

    speeds = {arm.name: [] for arm in arms}
    theirs = []
    for _ in range(args.rounds):
        for arm in arms:
            time.sleep(_GAP_S)
            speeds[arm.name].append(_cnnfast_run(arm, batches))
        if tsetup:
            time.sleep(_GAP_S)
            theirs.append(_torch_run(tsetup, batches))
    med = {name: statistics.median(v) for name, v in speeds.items()}
    result = {"backend": args.backend or "auto", "threads": args.threads,
              "batch_size": args.batch_size, "steps": args.steps, "rounds": args.rounds,
              "data": source, "environment": env, "blas_threads": _blas_threads(),
              "wait_policy": _wait_policy(env),
              "cnnfast_img_s": med["loop"], "cnnfast_img_s_all": speeds["loop"],
              "arms": {name: {"img_s": med[name], "img_s_all": v}
                       for name, v in speeds.items()}}
    if theirs:
        torch_med = statistics.median(theirs)
        result.update(torch_img_s=torch_med, torch_img_s_all=theirs,
                      ratio=med["loop"] / torch_med, torch=torch.__version__)
        for name in speeds:
            result["arms"][name]["ratio"] = med[name] / torch_med

    print(f"cnn training step, batch {args.batch_size}, {args.threads} threads, "
          f"{args.steps} steps x {args.rounds} interleaved rounds ({source} data)")
    shown = " ".join(f"{k}={v}" for k, v in env.items()) or "none of " + ", ".join(
        _THREAD_ENV) + " set"
    print(f"  environment: {shown}; numpy BLAS threads {result['blas_threads']}; "
          f"OpenMP wait {result['wait_policy']} (cnnfast and torch share one "
          f"OpenMP runtime)")
    for name, v in speeds.items():
        ratio = f"  ratio to torch {med[name] / torch_med:.2f}" if theirs else ""
        print(f"  cnnfast {name:<16} [{result['backend']}]: {med[name]:7,.0f} images/s"
              f"{ratio}  (rounds: {', '.join(f'{s:,.0f}' for s in v)})")
    if theirs:
        print(f"  torch {torch.__version__} eager:{'':<10} {torch_med:7,.0f} images/s"
              f"{'':<20}(rounds: {', '.join(f'{s:,.0f}' for s in theirs)})")

    if profile_steps > 0:
        profiles = {arm.name: layer_profile(arm, batches[:profile_steps]) for arm in arms}
        result["profile_ms"] = {
            name: {f"{k[0]} {k[1]}".strip(): t / profile_steps * 1e3
                   for k, t in times.items()} for name, (times, _) in profiles.items()}
        _print_profile(profiles, profile_steps)

    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["peak_rss_mb"] = peak_mb
    print(f"  peak RSS of this process: {peak_mb:,.0f} MB")
    if args.json:
        print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
