"""How good a class-conditional generator is, measured with the project's own
classifier (no internet, no pretrained Inception network):

* **recognisability** (:func:`recognisability`): a trained ``cnn`` classifier
  (``cnnfast train --model cnn``, ~91% on real test images) labels the samples; the
  fraction labelled as the class they were generated for, per class and overall;
* **the Fréchet distance in the cnn classifier's features**
  (:func:`frechet_distance` of :func:`penultimate_features`): the distance between
  Gaussians fitted to the classifier's penultimate activations (the input of its last
  layer) of the samples and of test images. It is the FID formula in another network's
  features, so its values do not compare with published FIDs; it is biased upwards by
  the finite sample, hence the **real-vs-real floor**: the same distance between two
  disjoint halves of the test set, of the same size.

:func:`evaluate_generator` runs all three on ``n`` class-balanced samples;
:func:`load_generator` reads either kind of checkpoint (a DCGAN or a diffusion model).
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional, Tuple

import numpy as np

from .base import to_numpy
from .checkpoint import PathLike
from .checkpoint_file import read_arrays
from .model import Sequential
from .tasks import as_float

#: The name the figure is reported under (it is not an FID: other features).
FRECHET_NAME = "Fréchet distance in the cnn classifier's features"


def _check_classifier(classifier: Sequential, image_shape: Any,
                      classes: Optional[int] = None) -> int:
    out = tuple(classifier.output_shape or ())
    if len(out) != 1 or len(classifier.layers) < 2:
        raise ValueError(f"classifier: expected a classifier with a (classes,) output and "
                         f"a layer before its last, got output {out}")
    if tuple(classifier.input_shape or ()) != tuple(image_shape):
        raise ValueError(f"classifier: it takes {classifier.input_shape} images, the "
                         f"samples are {tuple(image_shape)}")
    if classes is not None and out[0] != classes:
        raise ValueError(f"classifier: it has {out[0]} classes, the generator {classes}")
    return out[0]


def penultimate_features(classifier: Sequential, images: Any,
                         batch_size: int = 500) -> np.ndarray:
    """The input of ``classifier``'s last layer (for the ``cnn``: the 128 ReLU
    activations after its first dense layer) for ``images`` (uint8, or floats in
    [0, 1]), evaluation mode, as float64 ``(N, features)``."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be >= 1")
    x_all = as_float(images, classifier.dtype, classifier.xp)
    out = []
    for i in range(0, len(x_all), batch_size):
        x = x_all[i:i + batch_size]
        for layer in classifier.layers[:-1]:
            x = layer.forward(x, training=False)
        out.append(np.asarray(to_numpy(x), np.float64).reshape(len(x), -1))
    if not out:
        raise ValueError("penultimate_features: no images")
    return np.concatenate(out)


def recognisability(classifier: Sequential, images: Any, intended: Any,
                    batch_size: int = 500) -> Dict[str, Any]:
    """The fraction of ``images`` that ``classifier`` labels as ``intended`` (int
    (N,)): ``{"overall", "per_class": [fraction per class], "counts": [samples per
    class], "predicted": (N,) labels}`` (a class without samples: NaN)."""
    intended = np.asarray(intended)
    classes = _check_classifier(classifier, np.shape(images)[1:])
    if intended.shape != (len(images),) or intended.dtype.kind not in "iu":
        raise ValueError(f"intended must be integer labels (N,) = ({len(images)},), got "
                         f"{intended.dtype} {intended.shape}")
    if len(intended) == 0:
        raise ValueError("recognisability: no images")
    if intended.min() < 0 or intended.max() >= classes:
        raise ValueError(f"intended labels must lie in [0, {classes})")
    logits = to_numpy(classifier.predict(as_float(images, classifier.dtype, classifier.xp),
                                         batch_size))
    predicted = np.asarray(logits).argmax(axis=1)
    hit = predicted == intended
    counts = np.bincount(intended, minlength=classes)
    per_class = np.bincount(intended, weights=hit, minlength=classes) / np.where(
        counts, counts, np.nan)
    return {"overall": float(hit.mean()), "per_class": per_class.tolist(),
            "counts": counts.tolist(), "predicted": predicted}


def _sqrt_psd(c: np.ndarray) -> np.ndarray:
    """The symmetric square root of a symmetric positive semi-definite matrix
    (eigenvalues that rounding made slightly negative count as 0)."""
    w, v = np.linalg.eigh(c)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(a: Any, b: Any) -> float:
    """``|mu_a - mu_b|^2 + tr(C_a + C_b - 2 (C_a^1/2 C_b C_a^1/2)^1/2)``: the Fréchet
    (2-Wasserstein) distance between Gaussians fitted to feature rows ``a`` (N, F)
    and ``b`` (M, F) (sample covariances, N - 1). ``tr((C_a C_b)^1/2)`` is computed
    as the trace of the symmetric form's root, which needs no complex arithmetic.

    Examples
    --------
    >>> import numpy as np
    >>> from cnnfast.nn.generative_quality import frechet_distance
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((500, 3))
    >>> round(frechet_distance(x, x), 9), round(frechet_distance(x, x + 2), 6)
    (0.0, 12.0)
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"frechet_distance needs two (N, F) feature sets of the same F "
                         f"and at least 2 rows each, got {a.shape} and {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("frechet_distance: the features hold NaN or inf")
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    ra = _sqrt_psd(ca)
    cross = np.trace(_sqrt_psd(ra @ cb @ ra))
    diff = a.mean(axis=0) - b.mean(axis=0)
    return float(max(diff @ diff + np.trace(ca) + np.trace(cb) - 2 * cross, 0.0))


def balanced_labels(n: int, classes: int) -> np.ndarray:
    """``n`` labels cycling through ``0 .. classes - 1`` (as balanced as ``n`` allows)."""
    return np.arange(int(n)) % int(classes)


def evaluate_generator(gan: Any, classifier: Sequential, test_images: Any, n: int = 1000,
                       seed: int = 0, batch_size: int = 500) -> Dict[str, Any]:
    """Recognisability, the Fréchet distance in ``classifier``'s features and its
    real-vs-real floor, for ``n`` class-balanced samples of ``gan`` (anything with
    ``classes``, ``image_shape`` and ``sample(labels, rng)`` giving images in [0, 1]).

    ``test_images`` (uint8 or [0, 1] floats) must hold ``2 n``: the samples are
    compared with ``test_images[:n]``, and so is ``test_images[n:2n]`` (the floor).
    Returns ``{"n", "recognised", "per_class", "frechet", "frechet_floor",
    "frechet_ratio", "name"}``.
    """
    n = int(n)
    if n < 2:
        raise ValueError(f"n={n!r} must be >= 2")
    if len(test_images) < 2 * n:
        raise ValueError(f"the floor needs 2 n = {2 * n} test images, got "
                         f"{len(test_images)}")
    _check_classifier(classifier, gan.image_shape, gan.classes)
    labels = balanced_labels(n, gan.classes)
    samples = gan.sample(labels, np.random.default_rng(np.random.SeedSequence([int(seed),
                                                                                8])))
    samples = samples.astype(classifier.dtype, copy=False)
    rec = recognisability(classifier, samples, labels, batch_size)
    f_samples = penultimate_features(classifier, samples, batch_size)
    f_ref = penultimate_features(classifier, test_images[:n], batch_size)
    f_other = penultimate_features(classifier, test_images[n:2 * n], batch_size)
    fd, floor = frechet_distance(f_samples, f_ref), frechet_distance(f_other, f_ref)
    return {"n": n, "recognised": rec["overall"], "per_class": rec["per_class"],
            "frechet": fd, "frechet_floor": floor,
            "frechet_ratio": fd / floor if floor > 0 else float("inf"),
            "name": FRECHET_NAME}


def load_generator(path: PathLike, backend: Optional[str] = None) -> Tuple[Any, dict]:
    """``(model, extra)`` from a ``cnnfast train --model dcgan`` or ``--model
    diffusion`` checkpoint: a ``DCGAN`` or a ``Diffusion`` (both have ``classes``,
    ``image_shape`` and ``sample(labels, rng, ...)``) and the checkpoint's metadata.
    Every problem is an ``OSError`` or a ``CheckpointError`` (a ``ValueError``); a
    classifier's checkpoint is refused by the GAN loader's message."""
    from .diffusion import is_diffusion_checkpoint, load_diffusion
    from .gan import load_gan

    path = os.fspath(path)
    try:
        meta = read_arrays(path).get("__meta__")
    except (OSError, ValueError):
        meta = None  # the loader below reports the problem
    if isinstance(meta, dict) and is_diffusion_checkpoint(meta.get("extra")):
        diffusion, _, extra = load_diffusion(path, backend=backend)
        return diffusion, extra
    gan, _, _, extra = load_gan(path, backend=backend)
    return gan, extra
