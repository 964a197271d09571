"""``cnnfast visualize CHECKPOINT --out DIR``: PNG pictures of a trained model.

Writes into DIR: ``filters.png`` (first-layer filters), ``features_NN_<layer>.png``
(the feature maps of every convolution for one test image), ``curves.png`` (loss
and accuracy per epoch, from ``metrics.jsonl`` next to the checkpoint or the
history stored in it), and for a classifier ``gradcam.png`` (Grad-CAM heatmaps of
the predicted or chosen class) and ``confusion.png``; for an encoder-decoder
model ``denoising.png`` (noisy / output / clean).

For a GAN or diffusion checkpoint (``cnnfast train --model dcgan|diffusion``):
``samples.png`` (a row of samples per class, the picture ``cnnfast sample --n
8*classes --seed S`` draws), ``curves.png`` (the GAN's losses and D(real)/D(fake),
the diffusion model's noise-prediction MSE), and for a diffusion model
``forward_noising.png`` (test image ``--image``, or a sample when no data is
installed, then noised at t = 0, T/10, T/4, T/2, 3T/4, T-1) and
``reverse_process.png`` (the sampler's x_t from noise to image, a row per sample,
the last column the sample; ``--steps S``: DDIM in S steps, ``--guidance W``:
classifier-free guidance, as in ``cnnfast sample``). ``--seed`` fixes their noise. Needs matplotlib
(``pip install cnnfast[viz]``). The paths written go to stdout; the library's
messages (a picture skipped), logged to ``cnnfast.viz``, to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, cast

from .common import (CliError, check_model_fits_data, load_data, load_model,
                     non_negative_float, non_negative_int, positive_int, prepare_out,
                     random_seed, require_backend, stored_noise)

HELP = ("draw filters, feature maps, Grad-CAM, curves and the confusion matrix of a "
        "checkpoint; samples, noising and curves of a GAN or diffusion model")
SAMPLES_PER_CLASS = 8  # columns of samples.png
TRAJECTORY_SAMPLES = 4  # rows of reverse_process.png (at most one per class)
TRAJECTORY_FRAMES = 8  # columns of reverse_process.png
logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a checkpoint.npz written by cnnfast train")
    parser.add_argument("--out", required=True, help="folder for the PNG files")
    parser.add_argument("--image", type=non_negative_int, default=0,
                        help="index of the test image for feature maps and Grad-CAM (0); "
                             "Grad-CAM and the denoising grid show it and the next 7")
    parser.add_argument("--class", dest="class_index", type=non_negative_int, default=None,
                        help="explain this class in Grad-CAM (default: the predicted one)")
    parser.add_argument("--metrics", default=None,
                        help="metrics JSON-lines file (default: metrics.jsonl next to the "
                             "checkpoint, else the history stored in the checkpoint)")
    parser.add_argument("--data", default=None,
                        help="Fashion-MNIST folder (else $CNNFAST_DATA, else "
                             "/usr/share/datasets/fashion-mnist)")
    parser.add_argument("--limit", type=positive_int, default=None,
                        help="use the first N test images only (confusion matrix)")
    parser.add_argument("--noise", type=non_negative_float, default=None,
                        help="noise std for the denoising grid (default: the one stored "
                             "in the checkpoint, else 0.3)")
    parser.add_argument("--backend", default=None, help="kernel backend (default: automatic)")
    parser.add_argument("--seed", type=random_seed, default=0,
                        help="GAN and diffusion checkpoints: seed of the samples and the "
                             "noise (default 0)")
    parser.add_argument("--steps", type=positive_int, default=None, metavar="S",
                        help="diffusion: sample with DDIM in S steps, DDPM when S is the "
                             "model's timesteps T (default min(50, T))")
    parser.add_argument("--guidance", type=non_negative_float, default=None, metavar="W",
                        help="diffusion: classifier-free guidance weight of the samples "
                             "and the reverse process (default 0)")


def _history(args: argparse.Namespace, extra: Dict[str, Any]) -> List[Any]:
    from ..viz import read_metrics

    path = args.metrics or os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)),
                                        "metrics.jsonl")
    if os.path.exists(path):
        try:
            history = read_metrics(path)
        except (OSError, ValueError) as exc:
            raise CliError(f"--metrics: {exc}" if args.metrics else str(exc)) from exc
        if history:
            return history
    elif args.metrics:
        raise CliError(f"--metrics {args.metrics!r} does not exist")
    from ..nn.runs import checkpoint_history

    history = checkpoint_history(extra) or extra.get("history") or []
    return list(history) if isinstance(history, list) else []


@contextlib.contextmanager
def log_to_stderr(name: str = "cnnfast") -> Iterator[None]:
    """Show the INFO messages of logger ``name`` on stderr for the duration."""
    logger = logging.getLogger(name)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    old_level = logger.level
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def run(args: argparse.Namespace) -> int:
    from ..nn import encdec, resample  # noqa: F401  (registers Upsample, SkipConcat, ...)
    from ..nn.data import CLASS_NAMES
    from ..viz import require_matplotlib, visualize

    try:
        require_matplotlib()
    except ImportError as exc:
        raise CliError(str(exc)) from exc
    device = "gpu" if args.backend == "cupy" else "cpu"
    require_backend(args.backend, device)
    prepare_out(args.out)
    model, _, extra = load_model(args.checkpoint, backend=args.backend,
                                 device=device)
    if isinstance(extra, dict) and extra.get("task") in ("gan", "diffusion"):
        with log_to_stderr():
            paths = _generative(args, extra)
        for p in paths:
            print(p)
        return 0
    for flag, value in (("--steps", args.steps), ("--guidance", args.guidance)):
        if value is not None:
            raise CliError(f"{flag} applies to diffusion checkpoints; {args.checkpoint} "
                           f"holds a {extra.get('task') or 'classify'} model")
    _, (images, labels) = load_data("test", args.data, args.limit)
    check_model_fits_data(model, images, args.checkpoint)
    history = _history(args, extra)
    noise = args.noise if args.noise is not None else stored_noise(extra, args.checkpoint)
    out_shape = cast(Tuple[int, ...], model.output_shape)  # built: a checkpoint's model
    k = int(out_shape[0]) if len(out_shape) == 1 else None
    if args.class_index is not None and (k is None or not 0 <= args.class_index < k):
        raise CliError(f"--class {args.class_index} needs a classifier with classes "
                       f"0..{(k or 1) - 1}")
    if args.image >= len(images):
        raise CliError(f"--image {args.image}: the test set has {len(images)} images")
    try:
        with log_to_stderr():
            paths = visualize(model, images, args.out, labels=labels,
                              image_index=args.image, class_index=args.class_index,
                              history=history,
                              class_names=CLASS_NAMES if k == len(CLASS_NAMES) else None,
                              noise_std=noise)
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    for p in paths:
        print(p)
    return 0


def _test_image(args: argparse.Namespace, shape: Sequence[int]) -> Optional[Any]:
    """Test image ``--image`` (uint8 (C, H, W)) for the forward-noising picture; None
    when no ``--data`` was given and no data set is installed."""
    from ..nn.data import find_fashion_mnist

    if args.data is None:
        try:
            find_fashion_mnist(None)
        except (OSError, ValueError):
            return None
    _, (images, _) = load_data("test", args.data, args.limit)
    if args.image >= len(images):
        raise CliError(f"--image {args.image}: the test set has {len(images)} images")
    if tuple(images.shape[1:]) != tuple(shape):
        raise CliError(f"the test images are {tuple(images.shape[1:])}; "
                       f"{args.checkpoint} draws {tuple(shape)} images")
    return images[args.image]


def _generative(args: argparse.Namespace, extra: Dict[str, Any]) -> List[str]:
    """The pictures of a GAN or diffusion checkpoint (see the module docstring); the
    paths written."""
    import numpy as np

    from ..nn.diffusion import is_diffusion_checkpoint
    from ..nn.gan import image_grid
    from ..nn.generative_quality import load_generator
    from ..viz import (forward_noising, forward_timesteps, generative_panels,
                       plot_generative_curves, reverse_trajectory)
    from .sample import DEFAULT_DIFFUSION_STEPS, save_png

    diffusion = is_diffusion_checkpoint(extra)
    owner = "a diffusion model" if diffusion else "a GAN"
    for flag, value in (("--class", args.class_index), ("--noise", args.noise),
                        ("--steps", None if diffusion else args.steps),
                        ("--guidance", None if diffusion else args.guidance)):
        if value is not None:
            applies = "diffusion" if flag in ("--steps", "--guidance") \
                else "classifier and denoiser"
            raise CliError(f"{flag} applies to {applies} checkpoints; {args.checkpoint} "
                           f"holds {owner}")
    model: Any  # a Diffusion or a DCGAN: both have classes and sample()
    try:
        model, _ = load_generator(args.checkpoint, backend=args.backend)
    except (OSError, ValueError) as exc:  # CheckpointError
        raise CliError(" ".join(str(exc).split())) from exc
    steps = None
    if diffusion:
        total = model.schedule.steps
        steps = args.steps or min(DEFAULT_DIFFUSION_STEPS, total)
        if steps > total:
            raise CliError(f"--steps {steps}: the model has {total} timesteps (at most "
                           f"that many steps)")
        if args.guidance and model.p_uncond == 0:
            raise CliError(f"--guidance {args.guidance:g}: {args.checkpoint} was trained "
                           f"with --p-uncond 0, so it has no unconditional prediction")
    # every user error before the sampling
    task = "diffusion" if diffusion else "gan"
    history = _history(args, extra)
    if history:
        try:
            generative_panels(history, task)
        except ValueError as exc:  # a history without this model's metrics
            raise CliError(str(exc)) from exc
    image = _test_image(args, model.image_shape) if diffusion else None

    out = args.out
    paths: List[str] = []
    labels = np.repeat(np.arange(model.classes), SAMPLES_PER_CLASS)  # a row per class
    rng = np.random.default_rng(args.seed)  # as cnnfast sample --seed: the same grid
    guidance = args.guidance or 0.0
    samples = (model.sample(labels, rng, steps=steps, guidance=guidance) if diffusion
               else model.sample(labels, rng))
    paths.append(save_png(image_grid(samples, SAMPLES_PER_CLASS),
                          os.path.join(out, "samples.png")))
    if diffusion:
        if image is None:
            logger.info("no test images installed: forward_noising.png noises a sample")
            image = samples[0]
        times = forward_timesteps(model.schedule.steps)
        tiles = forward_noising(model, image, times, np.random.default_rng([args.seed, 1]))
        paths.append(save_png(image_grid(tiles, len(tiles)),
                              os.path.join(out, "forward_noising.png")))
        rows = np.arange(min(model.classes, TRAJECTORY_SAMPLES))
        _, frames = reverse_trajectory(model, rows, np.random.default_rng([args.seed, 2]),
                                       steps, TRAJECTORY_FRAMES, guidance)
        paths.append(save_png(image_grid(frames.reshape((-1,) + frames.shape[2:]),
                                         frames.shape[1]),
                              os.path.join(out, "reverse_process.png")))
    if history:
        paths.append(plot_generative_curves(history, task, os.path.join(out, "curves.png")))
    else:
        logger.info("no metrics history: curves.png skipped")
    return paths
