"""``cnnfast sample CHECKPOINT --out grid.png``: a PNG grid of class-conditional
samples from a GAN trained with ``cnnfast train --model dcgan`` or a diffusion model
trained with ``cnnfast train --model diffusion``.

Diffusion models take ``--steps S`` (DDIM with S steps; DDPM over every timestep when
S equals the model's T; default DDIM with min(50, T)) and ``--guidance W``
(classifier-free guidance, ``(1 + W) eps(x, y) - W eps(x)``; default 0).

Without ``--class``, the grid has one row per class (``ceil(n / classes)`` samples
each, in class order); with ``--class K``, ``n`` samples of class K. ``--seed`` fixes
the noise codes, so the same command draws the same picture.
"""

from __future__ import annotations

import argparse
import math
import os
import struct
import zlib
from typing import Any

from ..atomic_file import write_atomic
from .common import (CliError, non_negative_float, non_negative_int, positive_int,
                     random_seed, require_backend)

HELP = ("draw class-conditional samples of a GAN or diffusion checkpoint (cnnfast "
        "train --model dcgan|diffusion)")
DEFAULT_DIFFUSION_STEPS = 50
MAX_SAMPLES = 10_000  # 10,000 28x28 tiles: a 2,900-pixel-wide PNG already


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a checkpoint.npz written by cnnfast train "
                                           "--model dcgan or diffusion")
    parser.add_argument("--out", required=True, help="the PNG file to write")
    parser.add_argument("--n", type=positive_int, default=100,
                        help=f"number of samples (default 100, at most {MAX_SAMPLES:,})")
    parser.add_argument("--class", dest="class_index", type=non_negative_int, default=None,
                        metavar="K", help="draw class K only (default: every class, a row each)")
    parser.add_argument("--seed", type=random_seed, default=0,
                        help="seed of the noise codes (default 0)")
    parser.add_argument("--backend", default=None, help="kernel backend (default: automatic)")
    parser.add_argument("--steps", type=positive_int, default=None, metavar="S",
                        help=f"diffusion: DDIM with S steps, DDPM when S is the model's "
                             f"timesteps T (default min({DEFAULT_DIFFUSION_STEPS}, T))")
    parser.add_argument("--guidance", type=non_negative_float, default=None, metavar="W",
                        help="diffusion: classifier-free guidance weight (default 0)")


def _check_out(path: str) -> str:
    if not path.lower().endswith(".png"):
        raise CliError(f"--out {path}: expected a .png file name")
    if os.path.isdir(path):
        raise CliError(f"--out {path}: is a folder")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise CliError(f"--out {path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise CliError(f"--out {path}: the folder {folder} is not writable")
    return path


def png_bytes(image: Any) -> bytes:
    """Grey ``image`` (2-d, values in [0, 1]) as the bytes of an 8-bit greyscale PNG
    (written here with zlib: no imaging library needed)."""
    import numpy as np

    pixels = np.round(np.clip(np.asarray(image, np.float64), 0, 1) * 255).astype(np.uint8)
    h, w = pixels.shape

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    # each row: filter type 0 (none), then its bytes
    raw = np.concatenate([np.zeros((h, 1), np.uint8), pixels], axis=1).tobytes()
    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def save_png(image: Any, path: str) -> str:
    """``png_bytes(image)`` written to ``path`` atomically."""
    data = png_bytes(image)
    return write_atomic(path, lambda f: f.write(data), suffix=".png")


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from ..nn.diffusion import is_diffusion_checkpoint
    from ..nn.gan import image_grid
    from ..nn.generative_quality import load_generator

    if args.n > MAX_SAMPLES:
        raise CliError(f"--n {args.n}: at most {MAX_SAMPLES:,} samples")
    _check_out(args.out)
    require_backend(args.backend)
    model: Any  # a Diffusion or a DCGAN: both have classes and sample()
    try:
        model, extra = load_generator(args.checkpoint, backend=args.backend)
    except (OSError, ValueError) as exc:  # FileNotFoundError, CheckpointError
        raise CliError(" ".join(str(exc).split())) from exc
    diffusion = is_diffusion_checkpoint(extra)
    k = model.classes
    if diffusion:
        steps = args.steps or min(DEFAULT_DIFFUSION_STEPS, model.schedule.steps)
        if steps > model.schedule.steps:
            raise CliError(f"--steps {steps}: the model has {model.schedule.steps} "
                           f"timesteps (at most that many steps)")
        if args.guidance and model.p_uncond == 0:
            raise CliError(f"--guidance {args.guidance:g}: {args.checkpoint} was trained "
                           f"with --p-uncond 0, so it has no unconditional prediction")
    else:
        for flag, value in (("--steps", args.steps), ("--guidance", args.guidance)):
            if value is not None:
                raise CliError(f"{flag} applies to diffusion checkpoints; "
                               f"{args.checkpoint} holds a GAN")
    if args.class_index is not None and args.class_index >= k:
        owner = "diffusion model" if diffusion else "GAN"
        raise CliError(f"--class {args.class_index}: the {owner} has classes 0..{k - 1}")
    if args.class_index is None:
        cols = math.ceil(args.n / k)
        labels = np.repeat(np.arange(k), cols)[:args.n]  # a row per class
        what = f"{cols} per class, a row each" if args.n % k == 0 else "a row per class"
    else:
        cols = math.ceil(math.sqrt(args.n))
        labels = np.full(args.n, args.class_index)
        what = f"class {args.class_index}"
    rng = np.random.default_rng(args.seed)
    if diffusion:
        images = model.sample(labels, rng, steps=steps, guidance=args.guidance or 0.0)
        method = "DDPM" if steps == model.schedule.steps else "DDIM"
        what += f"; {method}, {steps} steps, guidance {args.guidance or 0:g}"
    else:
        images = model.sample(labels, rng)
    if args.class_index is None and args.n % k:
        # pad the short last rows so that each class keeps its own row
        padded = np.ones((k * cols,) + tuple(images.shape[1:]), images.dtype)
        counts = np.bincount(labels, minlength=k)
        for c in range(k):
            padded[c * cols:c * cols + counts[c]] = images[labels == c]
        images = padded
    save_png(image_grid(images, cols), args.out)
    print(f"{args.out}: {args.n} samples ({what}) from {args.checkpoint}")
    return 0
