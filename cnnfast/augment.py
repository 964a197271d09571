"""Data augmentation for image batches ``(N, C, H, W)``, numpy or cupy.

A :class:`Pipeline` applies its transforms in order, each with random parameters
drawn per sample from one seeded ``numpy.random.Generator``: the parameters are
drawn on the CPU (so a seed gives the same batch on numpy and cupy), the pixels
are computed with the array module of the input. The input is never modified;
every call returns a new array of the input's dtype.

Geometric transforms fill uncovered pixels with 0 (Fashion-MNIST's background).
Intensity transforms (brightness, contrast, noise) clip to ``clip`` (default
``(0, 1)``: images scaled to [0, 1]; pass ``clip=None`` for none).

>>> import numpy as np
>>> from cnnfast.augment import pipeline_from_spec
>>> aug = pipeline_from_spec("flip,translate=2,noise=0.05", seed=0)
>>> x = np.zeros((4, 1, 28, 28), np.float32)
>>> aug(x).shape
(4, 1, 28, 28)

Spec names (``--augment``): see :data:`TRANSFORMS`; ``name=value`` sets the main
parameter (``flip=0.5`` the probability, ``rotate=15`` the maximum angle in
degrees, ``translate=3`` / ``crop=4`` pixels, ``zoom=0.1`` the relative scale
range, ``brightness=0.1`` / ``contrast=0.2`` / ``noise=0.05`` the strength).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import numpy as np

from .arrays import Array, array_module

#: ``(low, high)`` bounds of an intensity transform's result, or None for none.
Clip = Optional[Tuple[float, float]]


def _check_batch(x: Any) -> None:
    if not hasattr(x, "ndim") or x.ndim != 4:
        raise ValueError(f"augmentation expects a batch (N, C, H, W), got shape "
                         f"{getattr(x, 'shape', type(x).__name__)}")
    if x.dtype.kind != "f":
        raise TypeError(f"augmentation expects a float batch, got dtype {x.dtype} "
                        f"(scale uint8 images to [0, 1] first)")


def _positive(value: float, name: str, allow_zero: bool = True) -> float:
    value = float(value)
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        kind = "non-negative" if allow_zero else "positive"
        raise ValueError(f"{name}={value!r} must be a {kind} finite number")
    return value


def _clip(y: Array, clip: Clip) -> Array:
    if clip is None:
        return y
    lo, hi = clip
    xp = array_module(y)
    return xp.clip(y, y.dtype.type(lo), y.dtype.type(hi))


def _per_sample(values: Any, xp: Any, dtype: Any) -> Array:
    """(N,) CPU values -> (N, 1, 1, 1) array on the input's device."""
    return xp.asarray(np.asarray(values, dtype=dtype).reshape(-1, 1, 1, 1))


def bilinear_sample(x: Array, sy: Array, sx: Array) -> Array:
    """Sample ``x`` (N, C, H, W) at fractional source coordinates ``sy``, ``sx``
    (N, H_out, W_out), bilinearly, with zeros outside the image. A coordinate with
    zero fractional part reads exactly one pixel (weights 1 and 0)."""
    xp = array_module(x)
    n, c, h, w = x.shape
    y0 = xp.floor(sy)
    x0 = xp.floor(sx)
    fy = (sy - y0).astype(x.dtype)[:, None]
    fx = (sx - x0).astype(x.dtype)[:, None]
    y0 = y0.astype(np.int64)
    x0 = x0.astype(np.int64)
    # Pad by one cell of zeros on each side so that every corner index is valid.
    xpad = xp.zeros((n, c, h + 2, w + 2), x.dtype)
    xpad[:, :, 1:-1, 1:-1] = x
    ni = xp.arange(n)[:, None, None, None]
    ci = xp.arange(c)[None, :, None, None]

    def corner(yy: Array, xx: Array) -> Array:
        inside = (yy >= -1) & (yy <= h) & (xx >= -1) & (xx <= w)
        yy = xp.clip(yy, -1, h) + 1
        xx = xp.clip(xx, -1, w) + 1
        vals = xpad[ni, ci, yy[:, None], xx[:, None]]
        return vals * inside[:, None].astype(x.dtype)

    top = corner(y0, x0) * (1 - fx) + corner(y0, x0 + 1) * fx
    bottom = corner(y0 + 1, x0) * (1 - fx) + corner(y0 + 1, x0 + 1) * fx
    return (top * (1 - fy) + bottom * fy).astype(x.dtype, copy=False)


def affine_warp(x: Array, matrices: Any) -> Array:
    """Warp each image of ``x`` (N, C, H, W) by the inverse map ``matrices``
    (N, 2, 3), in pixel coordinates centred on the image centre: the output pixel
    at (row, col) reads the input at ``A @ (row - cy, col - cx) + t + (cy, cx)``."""
    xp = array_module(x)
    n, _, h, w = x.shape
    m = np.asarray(matrices, dtype=np.float64).reshape(n, 2, 3)
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    rows = np.arange(h, dtype=np.float64)[None, :, None] - cy
    cols = np.arange(w, dtype=np.float64)[None, None, :] - cx
    a = m[:, :, :, None, None]
    sy = a[:, 0, 0] * rows + a[:, 0, 1] * cols + a[:, 0, 2] + cy
    sx = a[:, 1, 0] * rows + a[:, 1, 1] * cols + a[:, 1, 2] + cx
    return bilinear_sample(x, xp.asarray(sy), xp.asarray(sx))


def shift_images(x: Array, dy: Any, dx: Any) -> Array:
    """Move image ``i`` by ``dy[i]`` rows and ``dx[i]`` columns (integers), zero
    fill: exact (a pure copy of pixels)."""
    xp = array_module(x)
    n, c, h, w = x.shape
    dy = np.asarray(dy, dtype=np.int64).reshape(n)
    dx = np.asarray(dx, dtype=np.int64).reshape(n)
    py = int(np.abs(dy).max()) if n else 0
    px = int(np.abs(dx).max()) if n else 0
    xpad = xp.zeros((n, c, h + 2 * py, w + 2 * px), x.dtype)
    xpad[:, :, py:py + h, px:px + w] = x
    rows = xp.asarray(np.arange(h)[None, :] - dy[:, None] + py)  # (N, H)
    cols = xp.asarray(np.arange(w)[None, :] - dx[:, None] + px)  # (N, W)
    ni = xp.arange(n)[:, None, None, None]
    ci = xp.arange(c)[None, :, None, None]
    return xpad[ni, ci, rows[:, None, :, None], cols[:, None, None, :]]


# ----------------------------------------------------------------------------- transforms


class Transform:
    """One augmentation: ``transform(x, rng)`` returns a new batch."""

    name = ""

    def __call__(self, x: Array, rng: np.random.Generator) -> Array:
        raise NotImplementedError

    def spec(self) -> str:
        """``name=value``: the ``--augment`` entry that rebuilds this transform."""
        return f"{self.name}={self._value():g}"

    def _value(self) -> float:  # the main parameter, for spec()
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._value()!r})"


class Flip(Transform):
    """Horizontal flip (mirror the width axis) of each sample with probability ``p``."""

    name = "flip"

    def __init__(self, p: float = 0.5) -> None:
        self.p = _positive(p, "p")
        if self.p > 1:
            raise ValueError(f"p={p!r} must lie in [0, 1]")

    def _value(self) -> float:
        return self.p

    def __call__(self, x: Array, rng: np.random.Generator) -> Array:
        xp = array_module(x)
        mask = _per_sample(rng.random(x.shape[0]) < self.p, xp, bool)
        return xp.where(mask, x[..., ::-1], x)


class Rotate(Transform):
    """Rotation about the image centre by an angle uniform in
    ``[-max_degrees, max_degrees]``, bilinear, zero fill."""

    name = "rotate"

    def __init__(self, max_degrees: float = 10.0) -> None:
        self.max_degrees = _positive(max_degrees, "max_degrees")

    def _value(self) -> float:
        return self.max_degrees

    def __call__(self, x: Array, rng: np.random.Generator) -> Array:
        angles = np.deg2rad(rng.uniform(-self.max_degrees, self.max_degrees, x.shape[0]))
        return rotate(x, angles)


def rotate(x: Array, angles: Any) -> Array:
    """Rotate image ``i`` by ``angles[i]`` radians (counter-clockwise as displayed,
    rows downwards), bilinear, zero fill. An angle of 0 returns the image exactly."""
    c, s = np.cos(angles), np.sin(angles)
    # Inverse map: rotate output coordinates by -angle to find the source.
    m = np.zeros((len(angles), 2, 3))
    m[:, 0, 0], m[:, 0, 1] = c, s
    m[:, 1, 0], m[:, 1, 1] = -s, c
    return affine_warp(x, m)


class Translate(Transform):
    """Shift by whole pixels, uniform in ``[-max_shift, max_shift]`` per axis, zero
    fill (exact: no interpolation)."""

    name = "translate"

    def __init__(self, max_shift: int = 2) -> None:
        if int(max_shift) != max_shift or max_shift < 0:
            raise ValueError(f"max_shift={max_shift!r} must be a non-negative int")
        self.max_shift = int(max_shift)

    def _value(self) -> float:
        return self.max_shift

    def __call__(self, x: Array, rng: np.random.Generator) -> Array:
        k = self.max_shift
        dy = rng.integers(-k, k + 1, x.shape[0])
        dx = rng.integers(-k, k + 1, x.shape[0])
        return shift_images(x, dy, dx)


class RandomCrop(Transform):
    """Pad by ``padding`` zeros on every side, then crop a random window of the
    original size (torchvision's ``RandomCrop(size, padding)``)."""

    name = "crop"

    def __init__(self, padding: int = 2) -> None:
        if int(padding) != padding or padding < 0:
            raise ValueError(f"padding={padding!r} must be a non-negative int")
        self.padding = int(padding)

    def _value(self) -> float:
        return self.padding

    def __call__(self, x: Array, rng: np.random.Generator) -> Array:
        p = self.padding
        # The window's top-left corner in the padded image is uniform in [0, 2p];
        # that is a shift of p - corner.
        top = rng.integers(0, 2 * p + 1, x.shape[0])
        left = rng.integers(0, 2 * p + 1, x.shape[0])
        return shift_images(x, p - top, p - left)


class Zoom(Transform):
    """Scale about the centre by a factor uniform in ``[1 - amount, 1 + amount]``
    (> 1 enlarges), bilinear, zero fill."""

    name = "zoom"

    def __init__(self, amount: float = 0.1) -> None:
        self.amount = _positive(amount, "amount")
        if self.amount >= 1:
            raise ValueError(f"amount={amount!r} must be < 1")

    def _value(self) -> float:
        return self.amount

    def __call__(self, x: Array, rng: np.random.Generator) -> Array:
        scale = rng.uniform(1 - self.amount, 1 + self.amount, x.shape[0])
        m = np.zeros((x.shape[0], 2, 3))
        m[:, 0, 0] = m[:, 1, 1] = 1.0 / scale
        return affine_warp(x, m)


class Brightness(Transform):
    """Add an offset uniform in ``[-delta, delta]`` to each sample, then clip."""

    name = "brightness"

    def __init__(self, delta: float = 0.1, clip: Clip = (0.0, 1.0)) -> None:
        self.delta = _positive(delta, "delta")
        self.clip = clip

    def _value(self) -> float:
        return self.delta

    def __call__(self, x: Array, rng: np.random.Generator) -> Array:
        xp = array_module(x)
        off = _per_sample(rng.uniform(-self.delta, self.delta, x.shape[0]), xp, x.dtype)
        return _clip(x + off, self.clip)


class Contrast(Transform):
    """Scale each sample's deviation from its mean by a factor uniform in
    ``[1 - amount, 1 + amount]``, then clip."""

    name = "contrast"

    def __init__(self, amount: float = 0.2, clip: Clip = (0.0, 1.0)) -> None:
        self.amount = _positive(amount, "amount")
        if self.amount >= 1:
            raise ValueError(f"amount={amount!r} must be < 1")
        self.clip = clip

    def _value(self) -> float:
        return self.amount

    def __call__(self, x: Array, rng: np.random.Generator) -> Array:
        xp = array_module(x)
        f = _per_sample(rng.uniform(1 - self.amount, 1 + self.amount, x.shape[0]), xp,
                        x.dtype)
        mean = x.mean(axis=(1, 2, 3), keepdims=True)
        return _clip((x - mean) * f + mean, self.clip)


class GaussianNoise(Transform):
    """Add independent normal noise of standard deviation ``std``, then clip."""

    name = "noise"

    def __init__(self, std: float = 0.05, clip: Clip = (0.0, 1.0)) -> None:
        self.std = _positive(std, "std")
        self.clip = clip

    def _value(self) -> float:
        return self.std

    def __call__(self, x: Array, rng: np.random.Generator) -> Array:
        xp = array_module(x)
        # Drawn on the CPU so that a seed gives the same noise on every device.
        noise = rng.standard_normal(x.shape, dtype=np.float64) * self.std
        return _clip(x + xp.asarray(noise.astype(x.dtype)), self.clip)


# name -> class; the class takes the main parameter as its one positional argument.
TRANSFORMS: Dict[str, Callable[..., Transform]] = {
    cls.name: cls for cls in (Flip, Rotate, Translate, RandomCrop, Zoom, Brightness,
                              Contrast, GaussianNoise)}


class Pipeline:
    """Transforms applied in order with one seeded generator. ``pipeline(x)``
    returns a new augmented batch; the same seed gives the same sequence of
    batches. ``reseed(seed)`` restarts the sequence."""

    def __init__(self, transforms: Iterable[Transform] = (),
                 seed: Optional[int] = None) -> None:
        self.transforms: List[Transform] = list(transforms)
        for t in self.transforms:
            if not isinstance(t, Transform):
                raise TypeError(f"{t!r} is not an augmentation Transform")
        self.seed = seed
        self.rng = np.random.default_rng(seed)

    def reseed(self, seed: Optional[int]) -> "Pipeline":
        """Restart the sequence from ``seed``; returns the pipeline."""
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        return self

    def get_state(self) -> Dict[str, Any]:
        """The generator's state (JSON-able after numpy ints become ints): save it
        in a checkpoint to resume the exact sequence of augmented batches."""
        return dict(self.rng.bit_generator.state)

    def set_state(self, state: Dict[str, Any]) -> "Pipeline":
        """Continue the sequence from a :meth:`get_state`; returns the pipeline."""
        self.rng.bit_generator.state = state
        return self

    def __call__(self, x: Array) -> Array:
        _check_batch(x)
        y = x.copy()  # an empty pipeline still hands back a fresh array
        for t in self.transforms:
            y = t(y, self.rng)
        return y

    def __len__(self) -> int:
        return len(self.transforms)

    @property
    def spec(self) -> str:
        """The ``--augment`` string that rebuilds this pipeline."""
        return ",".join(t.spec() for t in self.transforms)

    def __repr__(self) -> str:
        return f"Pipeline({self.transforms!r}, seed={self.seed!r})"


def pipeline_from_spec(spec: Optional[str], seed: Optional[int] = None) -> Pipeline:
    """A pipeline from ``"flip,translate,noise=0.1"``: comma-separated transform
    names (:data:`TRANSFORMS`), each optionally ``=value`` for its main parameter.
    ``None``, ``""`` and ``"none"`` give an empty pipeline."""
    transforms: List[Transform] = []
    if spec is not None and spec.strip().lower() not in ("", "none"):
        for item in spec.split(","):
            item = item.strip()
            if not item:
                raise ValueError(f"--augment {spec!r}: empty entry")
            name, _, value = item.partition("=")
            name = name.strip().lower()
            if name not in TRANSFORMS:
                raise ValueError(f"--augment {spec!r}: unknown transform {name!r}; "
                                 f"expected any of {', '.join(TRANSFORMS)}")
            cls = TRANSFORMS[name]
            if not value.strip():
                transforms.append(cls())
                continue
            try:
                number = float(value)
            except ValueError:
                raise ValueError(f"--augment {spec!r}: {name}={value!r} is not a number") \
                    from None
            if cls in (Translate, RandomCrop):
                if number != int(number):
                    raise ValueError(f"--augment {spec!r}: {name} takes whole pixels, "
                                     f"got {value!r}")
                number = int(number)
            transforms.append(cls(number))
    return Pipeline(transforms, seed=seed)
