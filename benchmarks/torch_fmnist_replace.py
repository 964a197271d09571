"""End to end: the seed CNN as a torch model trained on Fashion-MNIST with torch's own
kernels and, from the same initial weights on the same batches, after
``cnnfast.torch.replace`` (torch's Adam and cross-entropy unchanged in both).

Both models take each batch in turn (interleaved: the same machine load); the script
reports each one's test accuracy after every epoch, the final training loss, the
seconds spent in its steps and images/s, and how far the two test accuracies are apart
against the binomial noise of the test set (2 standard errors).

    # the claim of issue 17: one epoch over the 60,000 training images, 10,000 tests
    python benchmarks/torch_fmnist_replace.py --threads 2
    # CI (tests/test_torch_fmnist.py): the shipped slice
    python benchmarks/torch_fmnist_replace.py --data tests/data/fashion-mnist-slice --json -
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from torch_swap import VARIANTS, seed_cnn  # noqa: E402


def _images(data, split, limit):
    import numpy as np

    from cnnfast.nn.data import load_fashion_mnist

    x, y = load_fashion_mnist(split, data=data, limit=limit)
    return (x.reshape(-1, 1, 28, 28).astype(np.float32) / 255.0), y.astype(np.int64)


def accuracy(model, x, y, batch=1000):
    import torch

    model.eval()
    right = 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            out = model(torch.from_numpy(x[i:i + batch]))
            right += int((out.argmax(1).numpy() == y[i:i + batch]).sum())
    model.train()
    return right / len(x)


def run(data=None, limit=None, test_limit=None, epochs=1, batch=64, lr=1e-3, seed=0,
        variant="all", threads=None):
    """Train the two models; a dict of the results (see the module docstring)."""
    import numpy as np
    import torch

    from cnnfast.torch import replace

    if threads:
        torch.set_num_threads(threads)
        import cnnfast
        cnnfast.set_num_threads(threads)
    x, y = _images(data, "train", limit)
    xt, yt = _images(data, "test", test_limit)
    torch.manual_seed(seed)
    native = seed_cnn(torch.nn)
    swapped = replace(copy.deepcopy(native), ops=VARIANTS[variant])
    models = {"torch": native, f"cnnfast ({variant})": swapped}
    opts = {k: torch.optim.Adam(m.parameters(), lr=lr) for k, m in models.items()}
    seconds = dict.fromkeys(models, 0.0)
    losses = {k: [] for k in models}
    acc = {k: [] for k in models}
    order = np.random.default_rng(seed)
    for _ in range(epochs):
        perm = order.permutation(len(x))
        for i in range(0, len(x), batch):
            idx = perm[i:i + batch]
            xb, yb = torch.from_numpy(x[idx]), torch.from_numpy(y[idx])
            for k, m in models.items():
                t = time.perf_counter()
                opts[k].zero_grad()
                loss = torch.nn.functional.cross_entropy(m(xb), yb)
                loss.backward()
                opts[k].step()
                seconds[k] += time.perf_counter() - t
                losses[k].append(float(loss.detach()))
        for k, m in models.items():
            acc[k].append(accuracy(m, xt, yt))
    a, b = (acc[k][-1] for k in models)
    noise = 2 * math.sqrt(max(a * (1 - a), 1e-4) / len(xt))  # 2 standard errors
    return {"train_images": len(x), "test_images": len(xt), "epochs": epochs,
            "batch": batch, "threads": torch.get_num_threads(),
            "models": {k: {"test_accuracy": acc[k], "final_loss": losses[k][-1],
                           "step_seconds": seconds[k],
                           "images_per_s": epochs * len(x) / seconds[k]}
                       for k in models},
            "accuracy_gap": abs(a - b), "two_standard_errors": noise}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="a Fashion-MNIST folder (default: the installed one)")
    ap.add_argument("--limit", type=int, help="training images (default: all)")
    ap.add_argument("--test-limit", type=int, help="test images (default: all)")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, help="torch and cnnfast threads")
    ap.add_argument("--variant", choices=[v for v in VARIANTS if v != "torch"],
                    default="all", help="which ops replace swaps (default: all)")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON ('-': "
                                                   "stdout, instead of the table)")
    args = ap.parse_args(argv)
    r = run(args.data, args.limit, args.test_limit, args.epochs, args.batch,
            seed=args.seed, variant=args.variant, threads=args.threads)
    if args.json == "-":
        print(json.dumps(r))
        return
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=1))
    print(f"seed CNN, {r['train_images']} training images x {r['epochs']} epoch(s), batch "
          f"{r['batch']}, {r['threads']} thread(s); {r['test_images']} test images\n")
    print("| model | test accuracy | final loss | step time (s) | images/s |")
    print("|---|---|---|---|---|")
    for k, m in r["models"].items():
        print(f"| {k} | {m['test_accuracy'][-1]:.2%} | {m['final_loss']:.3f} | "
              f"{m['step_seconds']:.1f} | {m['images_per_s']:,.0f} |")
    print(f"\naccuracy gap {r['accuracy_gap']:.2%} (2 standard errors of the test set: "
          f"{r['two_standard_errors']:.2%})")


if __name__ == "__main__":
    main()
