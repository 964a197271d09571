"""``cnnfast evaluate CHECKPOINT``: test accuracy, per-class accuracy and the
confusion matrix of a model trained with ``cnnfast train``."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any, Dict, Optional, Sequence

from .common import (check_model_fits_data, load_data, load_model, positive_int,
                     refuse_gan, require_backend, stored_noise)

if TYPE_CHECKING:
    import numpy as np

    from ..nn.model import Sequential

HELP = "evaluate a checkpoint on the Fashion-MNIST test set (accuracy, confusion matrix)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a checkpoint.npz written by cnnfast train")
    parser.add_argument("--data", default=None,
                        help="Fashion-MNIST folder (else $CNNFAST_DATA, else "
                             "/usr/share/datasets/fashion-mnist)")
    parser.add_argument("--backend", default=None, help="kernel backend (default: automatic)")
    parser.add_argument("--device", choices=("cpu", "gpu"), default=None)
    parser.add_argument("--batch-size", type=positive_int, default=500, help="default 500")
    parser.add_argument("--limit", type=positive_int, default=None,
                        help="first N test images only")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")


def format_report(result: Dict[str, Any], class_names: Optional[Sequence[str]]) -> str:
    conf = result["confusion"]
    k = conf.shape[0]
    names = list(class_names) if class_names and len(class_names) == k else [
        str(i) for i in range(k)]
    lines = [f"accuracy: {result['accuracy']:.4f} ({int(conf.trace())}/{int(conf.sum())})  "
             f"loss: {result['loss']:.4f}", "", "per-class accuracy:"]
    width = max(len(n) for n in names)
    for i, (name, acc) in enumerate(zip(names, result["per_class"])):
        lines.append(f"  {i:>2} {name:<{width}}  {acc:.4f}  ({int(conf[i, i])}/"
                     f"{int(conf[i].sum())})")
    cell = max(len(str(int(conf.max()))) if conf.size else 1, 3) + 1
    lines += ["", "confusion matrix (rows: true class, columns: predicted):",
              " " * (width + 5) + "".join(f"{j:>{cell}}" for j in range(k))]
    for i in range(k):
        lines.append(f"  {i:>2} {names[i]:<{width}}" + "".join(
            f"{int(v):>{cell}}" for v in conf[i]))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from ..threads import single_threaded_blas

    with single_threaded_blas():  # as in cnnfast train
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from ..nn.data import CLASS_NAMES
    from ..nn.runs import checkpoint_history, checkpoint_task
    from ..nn.tasks import evaluate

    device = args.device or ("gpu" if args.backend == "cupy" else "cpu")
    require_backend(args.backend, device)
    model, _, extra = load_model(args.checkpoint, backend=args.backend,
                                 device=device)
    refuse_gan(extra, args.checkpoint)
    _, (images, labels) = load_data("test", args.data, args.limit)
    check_model_fits_data(model, images, args.checkpoint)
    if checkpoint_task(extra, model) == "denoise":
        return _report_denoiser(args, model, images, extra)
    result = evaluate(model, images, labels, args.batch_size)
    epochs = len(checkpoint_history(extra))
    if args.json:
        out = dict(result, confusion=result["confusion"].tolist(), epochs=epochs)
        print(json.dumps(out))
    else:
        print(f"{args.checkpoint}: model {model.name!r} after {epochs} epoch(s), "
              f"{len(images)} test images")
        print(format_report(result, CLASS_NAMES))
    return 0


def _report_denoiser(args: argparse.Namespace, model: Sequential, images: np.ndarray,
                     extra: Dict[str, Any]) -> int:
    """A denoising model has no classes: report the PSNR of noisy and denoised test
    images at the noise level it was trained with."""
    from ..nn.tasks import evaluate_denoiser

    noise = stored_noise(extra, args.checkpoint)
    result = evaluate_denoiser(model, images, noise, batch_size=args.batch_size)
    result = {k: float(v) for k, v in result.items()}
    if args.json:
        print(json.dumps(dict(result, noise_std=noise)))
    else:
        print(f"{args.checkpoint}: denoiser {model.name!r}, {len(images)} test images, "
              f"noise std {noise}")
        print(f"PSNR noisy {result['psnr_noisy']:.2f} dB -> denoised "
              f"{result['psnr_denoised']:.2f} dB (MSE {result['mse_denoised']:.5f})")
    return 0
