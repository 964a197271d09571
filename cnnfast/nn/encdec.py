"""Encoder-decoder models and a denoising training routine.

* :func:`autoencoder`: a convolutional denoising autoencoder -- strided (or
  max-pooled) convolutions down, ``ConvTranspose2d`` up, a ``Sigmoid`` output in
  [0, 1].
* :func:`unet`: a small U-Net, built recursively from ``SkipConcat`` blocks
  (``cnnfast.nn.resample``); the decoder upsamples with ``ConvTranspose2d`` or
  ``Upsample`` + convolution.
* :func:`train_denoiser`: trains either on (noisy -> clean) pairs with the mean
  squared error and Adam (the one ``Trainer`` with a ``DenoisingTask``), and
  reports the PSNR of noisy and denoised held-out images (:func:`psnr`).

``psnr``, ``add_noise`` and ``evaluate_denoiser`` are defined with the denoising
task in ``cnnfast.nn.tasks`` and importable from here too.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, cast

from .base import Layer
from .layers import Conv2d, ConvTranspose2d, MaxPool2d, ReLU, Sigmoid
from .model import Sequential
from .optim import Adam
from .resample import SkipConcat, Upsample
from .tasks import DenoisingTask, add_noise, evaluate_denoiser, psnr  # noqa: F401
from .training import Trainer

ENCDEC_MODELS = ("autoencoder", "unet")


def _check_shape(input_shape: Iterable[int], levels: int, what: str) -> Tuple[int, ...]:
    shape = tuple(int(v) for v in input_shape)
    if len(shape) != 3:
        raise ValueError(f"{what}: input_shape={input_shape!r} must be (C, H, W)")
    f = 2 ** levels
    if shape[1] % f or shape[2] % f:
        raise ValueError(f"{what}: H and W of {shape} must be divisible by {f} "
                         f"({levels} halvings)")
    return shape


def autoencoder(input_shape: Sequence[int] = (1, 28, 28), channels: Iterable[int] = (16, 32),
                downsample: str = "stride", *, dtype: Any = "float32",
                seed: Optional[int] = None,
                backend: Optional[str] = None) -> Sequential:
    """A convolutional denoising autoencoder. Each entry of ``channels`` is one
    encoder stage halving H and W: a 3x3 convolution with stride 2
    (``downsample="stride"``) or a 3x3 convolution and a 2x2 max-pool
    (``"maxpool"``), then ReLU. The decoder mirrors it with 3x3 stride-2
    ``ConvTranspose2d`` (padding 1, output_padding 1: exactly doubles), and ends
    in ``input_shape[0]`` channels and a Sigmoid.

    28x28 with ``channels=(16, 32)``: 28 -> 14 -> 7 -> 14 -> 28.

    Parameters
    ----------
    input_shape : tuple of int
        ``(C, H, W)``; H and W divisible by ``2 ** len(channels)``.
    channels : iterable of int
        Output channels of the encoder stages.
    downsample : str
        ``'stride'`` or ``'maxpool'``.
    dtype, seed, backend
        As ``Sequential``.

    Returns
    -------
    Sequential
        The built model.

    Raises
    ------
    ValueError
        For an unknown ``downsample``, no or non-positive channels, or a shape that
        does not halve ``len(channels)`` times.

    Examples
    --------
    >>> from cnnfast import nn
    >>> nn.autoencoder((1, 28, 28), channels=(16, 32), seed=0).output_shape
    (1, 28, 28)
    """
    if downsample not in ("stride", "maxpool"):
        raise ValueError(f"downsample={downsample!r}: expected 'stride' or 'maxpool'")
    channels = tuple(int(c) for c in channels)
    if not channels or min(channels) < 1:
        raise ValueError(f"channels={channels!r} must be positive ints, at least one")
    shape = _check_shape(input_shape, len(channels), "autoencoder")
    layers: List[Layer] = []
    for c in channels:
        if downsample == "stride":
            layers += [Conv2d(c, 3, stride=2, padding=1), ReLU()]
        else:
            layers += [Conv2d(c, 3, padding=1), ReLU(), MaxPool2d(2)]
    ups = list(channels[-2::-1]) + [shape[0]]
    for i, c in enumerate(ups):
        layers.append(ConvTranspose2d(c, 3, stride=2, padding=1, output_padding=1))
        layers.append(ReLU() if i < len(ups) - 1 else Sigmoid())
    return Sequential(layers, input_shape=shape, dtype=dtype, seed=seed,
                      name="autoencoder", backend=backend)


def unet(input_shape: Sequence[int] = (1, 28, 28), base_channels: int = 16, depth: int = 2,
         up: str = "transpose", *, dtype: Any = "float32", seed: Optional[int] = None,
         backend: Optional[str] = None) -> Sequential:
    """A small U-Net: at each of ``depth`` levels, a 3x3 convolution + ReLU, then a
    ``SkipConcat`` whose inner chain is 2x2 max-pool, the next level, and an
    upsampling back (``up="transpose"``: 2x2 stride-2 ``ConvTranspose2d``;
    ``"bilinear"`` / ``"nearest"``: ``Upsample`` then a 3x3 convolution); after the
    concatenation a 3x3 convolution + ReLU merges the skip and the upsampled
    features. The bottom level doubles the channels; the head is a 1x1
    convolution to ``input_shape[0]`` channels and a Sigmoid.

    Parameters
    ----------
    input_shape : tuple of int
        ``(C, H, W)``; H and W divisible by ``2 ** depth``.
    base_channels : int
        Channels of the top level (doubled at each level down).
    depth : int
        Number of halvings.
    up : str
        ``'transpose'``, ``'bilinear'`` or ``'nearest'``.
    dtype, seed, backend
        As ``Sequential``.

    Returns
    -------
    Sequential
        The built model.

    Raises
    ------
    ValueError
        For an unknown ``up``, a non-positive depth or width, or a shape that does not
        halve ``depth`` times.

    Examples
    --------
    >>> from cnnfast import nn
    >>> nn.unet((1, 16, 16), base_channels=4, depth=2, seed=0).output_shape
    (1, 16, 16)
    """
    if up not in ("transpose", "bilinear", "nearest"):
        raise ValueError(f"up={up!r}: expected 'transpose', 'bilinear' or 'nearest'")
    if int(depth) < 1 or int(base_channels) < 1:
        raise ValueError(f"depth={depth!r} and base_channels={base_channels!r} must be "
                         f"positive ints")
    depth, base = int(depth), int(base_channels)
    shape = _check_shape(input_shape, depth, "unet")

    def upsample(c: int) -> List[Layer]:
        if up == "transpose":
            return [ConvTranspose2d(c, 2, stride=2)]
        return [Upsample(2, mode=up), Conv2d(c, 3, padding=1)]

    def level(d: int) -> List[Layer]:
        c = base * 2 ** d
        if d == depth:  # the bottleneck
            return [Conv2d(c, 3, padding=1), ReLU()]
        inner = [MaxPool2d(2)] + level(d + 1) + upsample(c) + [ReLU()]
        return [Conv2d(c, 3, padding=1), ReLU(), SkipConcat(inner),
                Conv2d(c, 3, padding=1), ReLU()]

    layers = level(0) + [Conv2d(shape[0], 1), Sigmoid()]
    return Sequential(layers, input_shape=shape, dtype=dtype, seed=seed, name="unet",
                      backend=backend)


def build_encdec(name: str, input_shape: Sequence[int] = (1, 28, 28),
                 **kwargs: Any) -> Sequential:
    """``autoencoder`` or ``unet`` by name (what ``cnnfast train --model`` uses).

    Parameters
    ----------
    name : str
        ``'autoencoder'`` or ``'unet'``.
    input_shape : tuple of int
        ``(C, H, W)``.
    **kwargs
        Passed to the builder.

    Returns
    -------
    Sequential
        The built model.

    Raises
    ------
    ValueError
        For an unknown ``name`` (or the builder's arguments).

    Examples
    --------
    >>> from cnnfast import nn
    >>> nn.build_encdec("unet", (1, 8, 8), base_channels=2, depth=1).name
    'unet'
    """
    if name == "autoencoder":
        return autoencoder(input_shape, **kwargs)
    if name == "unet":
        return unet(input_shape, **kwargs)
    raise ValueError(f"model {name!r}: expected one of {', '.join(ENCDEC_MODELS)}")


def is_encdec(model: Sequential) -> bool:
    """True for a model whose output has its input's shape (an image-to-image model).

    Parameters
    ----------
    model : Sequential
        Any model; an unbuilt one is not an encoder-decoder.

    Returns
    -------
    bool
        Whether it maps images to images of the same shape.

    Examples
    --------
    >>> from cnnfast import nn
    >>> from cnnfast.nn.encdec import is_encdec
    >>> is_encdec(nn.autoencoder((1, 8, 8), channels=(2,)))
    True
    """
    # A built model (input_shape set) has its output_shape set too.
    return model.input_shape is not None and tuple(
        cast(Tuple[int, ...], model.output_shape)) == tuple(model.input_shape)


def train_denoiser(model: Sequential, images: Any, epochs: int = 1, batch_size: int = 64,
                   lr: float = 1e-3, noise_std: float = 0.3, seed: int = 0,
                   backend: Optional[str] = None, progress: Optional[Callable] = None,
                   *, test_images: Any = None, augment: Any = None,
                   optimizer: Any = None) -> Dict[str, Any]:
    """Train ``model`` to map ``clip(x + noise_std * N(0,1), 0, 1)`` to ``x`` with the
    mean squared error and Adam (``lr``), ``epochs`` passes over ``images`` (uint8
    or float in [0, 1], (N, C, H, W) or (N, H, W)) in shuffled batches.

    ``backend`` (when not None) is set on the model's layers. ``augment`` is an
    optional ``cnnfast.augment.Pipeline`` applied to the clean batch before the
    noise. ``progress(step, steps, loss)`` is called after every step.
    ``test_images`` default to the last 10% of ``images``, which are then left
    out of training. Returns ``{"history": [mean loss per epoch], "psnr_noisy",
    "psnr_denoised", "mse_denoised", "seconds", "steps", "train_images",
    "test_images"}`` (PSNR in dB, on the test images, noise seeded by ``seed``).

    Raises
    ------
    ValueError
        If the model's output shape differs from its input's, ``epochs < 0``,
        ``batch_size < 1``, or fewer than 2 images are given without ``test_images``.

    Examples
    --------
    >>> import numpy as np
    >>> from cnnfast import nn
    >>> model = nn.autoencoder((1, 8, 8), channels=(2,), seed=0)
    >>> images = np.random.default_rng(0).random((6, 8, 8)).astype(np.float32)
    >>> result = nn.train_denoiser(model, images, epochs=1, batch_size=4)
    >>> result["steps"], result["train_images"], result["test_images"]
    (2, 5, 1)
    """
    if not is_encdec(model):
        raise ValueError(f"train_denoiser needs an image-to-image model; this one maps "
                         f"{model.input_shape} to {model.output_shape}")
    if epochs < 0 or batch_size < 1:
        raise ValueError(f"epochs={epochs!r} must be >= 0 and batch_size={batch_size!r} >= 1")
    if backend is not None:
        model.set_backend(backend)
    n_all = len(images)
    if test_images is None:
        n_test = max(1, n_all // 10)
        if n_all - n_test < 1:
            raise ValueError(f"need at least 2 images to hold some out, got {n_all}")
        test_images, images = images[n_all - n_test:], images[:n_all - n_test]
    opt = optimizer if optimizer is not None else Adam(lr=lr)
    # One generator, seeded with ``seed``, shuffles and draws the noise for the run.
    trainer = Trainer(model, opt, batch_size=batch_size, seed=seed, augment=augment,
                      task=DenoisingTask(noise_std, seeding="run"))
    steps_per_epoch = -(-len(images) // batch_size)
    steps = epochs * steps_per_epoch
    history = []
    t0 = time.perf_counter()
    for e in range(epochs):
        on_step = None if progress is None else (
            lambda b, nb, loss, done=e * steps_per_epoch: progress(done + b, steps, loss))
        history.append(trainer.train_epoch(images, progress=False,
                                           on_step=on_step)["train_loss"])
    seconds = time.perf_counter() - t0
    result = evaluate_denoiser(model, test_images, noise_std, seed=seed + 1)
    result.update(history=history, seconds=seconds, steps=steps, train_images=len(images),
                  test_images=len(test_images))
    return result
