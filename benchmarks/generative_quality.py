"""The quality of a class-conditional generator's checkpoint (``cnnfast train --model
dcgan`` or ``--model diffusion``), judged by the project's own trained classifier
(``cnnfast train --model cnn``; no pretrained Inception network, no internet):
``cnnfast.nn.generative_quality``.

* recognised: the fraction of ``--n`` class-balanced samples that the classifier labels
  as the class they were drawn for, per class and overall;
* the Fréchet distance in the cnn classifier's features (its penultimate layer)
  between the samples and ``--n`` test images, and the real-vs-real floor (the same
  distance between the next ``--n`` test images and those): it is not an FID.

    cnnfast train --model cnn --epochs 5 --backend cpp --out runs/cnn
    cnnfast train --model dcgan --epochs 10 --backend cpp --out runs/dcgan
    python benchmarks/generative_quality.py runs/dcgan/checkpoint.npz \\
        --classifier runs/cnn/checkpoint.npz [--n 1000] [--json out.json]
    cnnfast train --model diffusion --epochs 16 --schedule cosine --backend cpp \\
        --out runs/diffusion
    python benchmarks/generative_quality.py runs/diffusion/checkpoint.npz \\
        --classifier runs/cnn/checkpoint.npz --steps 50 --guidance 1

A diffusion model samples with DDIM in ``--steps`` steps (DDPM when it is the model's
T; default min(50, T)) and classifier-free guidance ``--guidance`` (default 0).
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
    parser.add_argument("checkpoint",
                        help="a checkpoint of cnnfast train --model dcgan or diffusion")
    parser.add_argument("--classifier", required=True,
                        help="a checkpoint of cnnfast train --model cnn (the judge)")
    parser.add_argument("--n", type=int, default=1000,
                        help="samples, and test images per half (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    parser.add_argument("--steps", type=int, default=None,
                        help="diffusion: DDIM steps (DDPM when T; default min(50, T))")
    parser.add_argument("--guidance", type=float, default=0.0,
                        help="diffusion: classifier-free guidance weight (default 0)")
    parser.add_argument("--data", default=None, help="Fashion-MNIST folder")
    parser.add_argument("--backend", default=None, help="kernel backend (default: auto)")
    parser.add_argument("--json", default=None, metavar="PATH",
                        help="also write the figures as JSON ('-': stdout only)")
    args = parser.parse_args(argv)

    from cnnfast.nn.checkpoint import load_checkpoint
    from cnnfast.nn.data import CLASS_NAMES, load_fashion_mnist
    from cnnfast.nn.diffusion import DiffusionSampler, is_diffusion_checkpoint
    from cnnfast.nn.generative_quality import evaluate_generator, load_generator
    from cnnfast.nn.tasks import evaluate
    from cnnfast.threads import single_threaded_blas

    if args.n < 2:
        parser.error(f"--n {args.n}: at least 2")
    try:
        model, extra = load_generator(args.checkpoint, backend=args.backend)
        classifier, _, _ = load_checkpoint(args.classifier, backend=args.backend)
        test_x, test_y = load_fashion_mnist("test", args.data)
    except (OSError, ValueError) as exc:
        parser.error(" ".join(str(exc).split()))
    diffusion = is_diffusion_checkpoint(extra)
    sampling = {}
    if diffusion:
        steps = args.steps or min(50, model.schedule.steps)
        if not 1 <= steps <= model.schedule.steps or args.guidance < 0:
            parser.error(f"--steps {steps} must lie in [1, {model.schedule.steps}] and "
                         f"--guidance {args.guidance:g} be >= 0")
        sampling = {"steps": steps, "guidance": args.guidance,
                    "method": "DDPM" if steps == model.schedule.steps else "DDIM"}
        model = DiffusionSampler(model, steps=steps, guidance=args.guidance)
    elif args.steps is not None or args.guidance:
        parser.error(f"--steps and --guidance apply to diffusion checkpoints; "
                     f"{args.checkpoint} holds a GAN")
    history = extra.get("trainer", {}).get("history", [])
    t0 = time.perf_counter()
    with single_threaded_blas():
        try:
            result = evaluate_generator(model, classifier, test_x, n=args.n, seed=args.seed)
        except ValueError as exc:
            parser.error(str(exc))
        judge = evaluate(classifier, test_x, test_y)["accuracy"]
    result.update(classifier_test_accuracy=judge, epochs=len(history),
                  train_seconds=sum(m.get("train_time_s", 0.0) for m in history),
                  seconds=time.perf_counter() - t0, checkpoint=args.checkpoint,
                  model="diffusion" if diffusion else "dcgan", classifier=args.classifier,
                  **sampling)
    if args.json != "-":
        how = (f"; {sampling['method']}, {sampling['steps']} steps, guidance "
               f"{sampling['guidance']:g}" if diffusion else "")
        print(f"{args.checkpoint}: {len(history)} epoch(s), "
              f"{result['train_seconds']:,.0f} s of training{how}; judge "
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
