"""The quality of a class-conditional GAN checkpoint (``cnnfast train --model dcgan``),
judged by the project's own trained classifier (``cnnfast train --model cnn``; no
pretrained Inception network, no internet): ``cnnfast.nn.generative_quality``.

* recognised: the fraction of ``--n`` class-balanced samples that the classifier labels
  as the class they were drawn for, per class and overall;
* the Fréchet distance in the cnn classifier's features (its penultimate layer)
  between the samples and ``--n`` test images, and the real-vs-real floor (the same
  distance between the next ``--n`` test images and those): it is not an FID.

    cnnfast train --model cnn --epochs 5 --backend cpp --out runs/cnn
    cnnfast train --model dcgan --epochs 10 --backend cpp --out runs/dcgan
    python benchmarks/generative_quality.py runs/dcgan/checkpoint.npz \\
        --classifier runs/cnn/checkpoint.npz [--n 1000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("gan", help="a checkpoint of cnnfast train --model dcgan")
    parser.add_argument("--classifier", required=True,
                        help="a checkpoint of cnnfast train --model cnn (the judge)")
    parser.add_argument("--n", type=int, default=1000,
                        help="samples, and test images per half (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    parser.add_argument("--data", default=None, help="Fashion-MNIST folder")
    parser.add_argument("--backend", default=None, help="kernel backend (default: auto)")
    parser.add_argument("--json", default=None, metavar="PATH",
                        help="also write the figures as JSON ('-': stdout only)")
    args = parser.parse_args(argv)

    from cnnfast.nn.checkpoint import load_checkpoint
    from cnnfast.nn.data import CLASS_NAMES, load_fashion_mnist
    from cnnfast.nn.gan import load_gan
    from cnnfast.nn.generative_quality import evaluate_generator
    from cnnfast.nn.tasks import evaluate
    from cnnfast.threads import single_threaded_blas

    if args.n < 2:
        parser.error(f"--n {args.n}: at least 2")
    try:
        gan, _, _, extra = load_gan(args.gan, backend=args.backend)
        classifier, _, _ = load_checkpoint(args.classifier, backend=args.backend)
        test_x, test_y = load_fashion_mnist("test", args.data)
    except (OSError, ValueError) as exc:
        parser.error(" ".join(str(exc).split()))
    history = extra.get("trainer", {}).get("history", [])
    t0 = time.perf_counter()
    with single_threaded_blas():
        try:
            result = evaluate_generator(gan, classifier, test_x, n=args.n, seed=args.seed)
        except ValueError as exc:
            parser.error(str(exc))
        judge = evaluate(classifier, test_x, test_y)["accuracy"]
    result.update(classifier_test_accuracy=judge, gan_epochs=len(history),
                  gan_train_seconds=sum(m.get("train_time_s", 0.0) for m in history),
                  seconds=time.perf_counter() - t0, gan=args.gan,
                  classifier=args.classifier)
    if args.json != "-":
        print(f"{args.gan}: {len(history)} epoch(s), "
              f"{result['gan_train_seconds']:,.0f} s of training; judge "
              f"{args.classifier} ({judge:.4f} on the {len(test_x):,} test images)")
        print(f"recognised: {result['recognised']:.3f} of {args.n} class-balanced samples")
        for name, frac in zip(CLASS_NAMES, result["per_class"]):
            print(f"  {name:<12} {frac:.3f}")
        print(f"{result['name']}: {result['frechet']:.3f} (samples vs {args.n} test "
              f"images); real-vs-real floor {result['frechet_floor']:.3f}; ratio "
              f"{result['frechet_ratio']:.2f}")
    if args.json:
        text = json.dumps(result, indent=1)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
