"""``cnnfast visualize CHECKPOINT --out DIR``: PNG pictures of a trained model.

Writes into DIR: ``filters.png`` (first-layer filters), ``features_NN_<layer>.png``
(the feature maps of every convolution for one test image), ``curves.png`` (loss
and accuracy per epoch, from ``metrics.jsonl`` next to the checkpoint or the
history stored in it), and for a classifier ``gradcam.png`` (Grad-CAM heatmaps of
the predicted or chosen class) and ``confusion.png``; for an encoder-decoder
model ``denoising.png`` (noisy / output / clean). Needs matplotlib
(``pip install cnnfast[viz]``). The paths written go to stdout; the library's
messages (a picture skipped), logged to ``cnnfast.viz``, to stderr.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys

from .common import (CliError, check_model_fits_data, load_data, load_model,
                     non_negative_float, non_negative_int, positive_int, prepare_out,
                     refuse_gan, require_backend, stored_noise)

HELP = "draw filters, feature maps, Grad-CAM, curves and the confusion matrix of a checkpoint"


def add_arguments(parser):
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


def _history(args, extra):
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
def log_to_stderr(name: str = "cnnfast"):
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


def run(args) -> int:
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
    refuse_gan(extra, args.checkpoint)
    _, (images, labels) = load_data("test", args.data, args.limit)
    check_model_fits_data(model, images, args.checkpoint)
    history = _history(args, extra)
    noise = args.noise if args.noise is not None else stored_noise(extra, args.checkpoint)
    k = int(model.output_shape[0]) if len(model.output_shape) == 1 else None
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
