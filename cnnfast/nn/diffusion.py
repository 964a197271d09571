"""Pieces of a denoising diffusion model (DDPM, Ho et al. 2020; DDIM, Song et al. 2021),
independent of the network that predicts the noise:

* :class:`NoiseSchedule`: the variances ``beta_t`` of the forward process, linear or
  cosine (Nichol & Dhariwal 2021), with ``alpha_bar_t = prod(1 - beta_s, s <= t)``;
  :meth:`NoiseSchedule.q_sample` draws ``x_t = sqrt(alpha_bar_t) x_0 +
  sqrt(1 - alpha_bar_t) eps`` (the forward noising, in one jump).
* :func:`ddpm_step` and :func:`ddim_step`: one reverse step from the predicted noise;
  :func:`sample` runs the reverse process with any noise predictor
  ``eps_model(x_t, t, labels)`` (``labels`` None: unconditional) over all or a subset
  of the timesteps, with classifier-free guidance ``(1 + w) eps(x, t, y) - w eps(x, t,
  None)``.
* :class:`SinusoidalEmbedding`: the timestep embedding layer (sin and cos of ``t``
  at geometric frequencies); a ``Sequential`` of it, Dense, ReLU, Dense is the usual
  "sinusoidal + dense" timestep embedding.

Timesteps are 0-based here: ``t = 0 .. T - 1``, ``x_t`` has had ``t + 1`` noising
steps, and the reverse step from ``t = 0`` gives ``x_0`` (no noise added).

The model (see below the sampler):

* :class:`ConditionShift`: adds ``c @ weight.T + bias`` (one value per channel) to a
  feature map, ``c`` the per-sample conditioning vector set on the layer before the
  forward pass (:func:`set_condition`); its backward sums the gradient over space.
* :func:`noise_unet`: a U-Net of ``SkipConcat`` blocks (as ``encdec.unet``) whose every
  3x3 convolution is followed by a ``ConditionShift`` and ReLU; a 1x1 convolution head
  (no activation: it predicts the noise).
* :class:`Diffusion`: the network, the schedule and the conditioning ``c =
  [sinusoidal(t), one_hot(y)]`` with a "null" class ``y = classes`` for classifier-free
  guidance (the label is dropped with probability ``p_uncond`` in training). Each
  ``ConditionShift`` is thus "sinusoidal embedding -> dense" plus "one-hot -> dense",
  added per channel.
* :class:`DiffusionTask`, :class:`DiffusionTrainer`, :class:`DiffusionRun`: DDPM
  training (predict the noise, MSE) in the one training loop (``Trainer``,
  ``runs.fit``): ``cnnfast train --model diffusion``. The timesteps, noise and label
  drops come from the trainer's data generator, seeded per epoch (``SeedSequence([seed,
  8, epoch])``), so a run resumes at epoch boundaries exactly. The checkpoint is a
  ``cnnfast.nn.checkpoint`` file of the network and its optimizer, with ``"task":
  "diffusion"`` and ``"diffusion": Diffusion.config()`` in the metadata.
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from .base import Array, Layer, Shape, ShapeLike, array_module, register_layer
from .checkpoint import PathLike, load_checkpoint
from .checkpoint_file import CheckpointError
from .init import fans, get_initializer
from .layers import Conv2d, ConvTranspose2d, MaxPool2d, ReLU
from .losses import mse
from .model import Sequential
from .optim import Adam, Optimizer, Schedule, make_schedule
from .resample import SkipConcat
from .runs import TrainingRun
from .tasks import Task, as_float
from .training import Trainer

SCHEDULES = ("linear", "cosine")


class NoiseSchedule:
    """The forward process's variances for ``steps`` timesteps.

    ``"linear"``: ``beta`` from ``1e-4 * 1000 / steps`` to ``0.02 * 1000 / steps``
    (Ho et al.'s range for 1000 steps, scaled so that fewer steps noise as much);
    ``"cosine"``: ``alpha_bar(t) = f(t) / f(0)``, ``f(t) = cos((t / T + s) / (1 + s)
    * pi / 2) ** 2``, ``s = 0.008``, each ``beta`` clipped to 0.999.

    Examples
    --------
    >>> from cnnfast.nn.diffusion import NoiseSchedule
    >>> s = NoiseSchedule(1000, "linear")
    >>> float(s.betas[0]), float(s.betas[-1]), bool(s.alpha_bars[-1] < 1e-4)
    (0.0001, 0.02, True)
    """

    def __init__(self, steps: int = 1000, kind: str = "linear"):
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
            raise ValueError(f"steps={steps!r} must be a positive int")
        if kind not in SCHEDULES:
            raise ValueError(f"kind={kind!r}: expected one of {', '.join(SCHEDULES)}")
        self.steps, self.kind = int(steps), kind
        if kind == "linear":
            scale = 1000 / self.steps
            self.betas = np.linspace(1e-4 * scale, 0.02 * scale, self.steps,
                                     dtype=np.float64)
            self.betas = np.minimum(self.betas, 0.999)
        else:
            s = 0.008
            f = np.cos((np.arange(self.steps + 1) / self.steps + s) / (1 + s)
                       * math.pi / 2) ** 2
            self.betas = np.minimum(1 - f[1:] / f[:-1], 0.999)
        self.alphas = 1 - self.betas
        self.alpha_bars = np.cumprod(self.alphas)

    def config(self) -> Dict[str, Any]:
        return {"steps": self.steps, "kind": self.kind}

    def _check_t(self, t: Any) -> np.ndarray:
        t = np.asarray(t.get() if hasattr(t, "get") else t)
        if t.ndim != 1 or t.dtype.kind not in "iu" or (t.size and (
                t.min() < 0 or t.max() >= self.steps)):
            raise ValueError(f"t must be integer timesteps (N,) in [0, {self.steps}), "
                             f"got {t.dtype} {t.shape}")
        return t

    def q_sample(self, x0: Array, t: Any, noise: Array) -> Array:
        """``sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise`` per sample (``t``
        int (N,)), in the dtype and array module of ``x0``."""
        t = self._check_t(t)
        if tuple(noise.shape) != tuple(x0.shape) or len(t) != len(x0):
            raise ValueError(f"x0 {tuple(x0.shape)}, noise {tuple(noise.shape)} and t "
                             f"({len(t)},) must agree")
        xp = array_module(x0)
        shape = (-1,) + (1,) * (x0.ndim - 1)
        a = xp.asarray(np.sqrt(self.alpha_bars[t]).astype(x0.dtype)).reshape(shape)
        b = xp.asarray(np.sqrt(1 - self.alpha_bars[t]).astype(x0.dtype)).reshape(shape)
        return a * x0 + b * noise

    def alpha_bar_prev(self, t: int) -> float:
        """``alpha_bar`` one step before ``t`` (1 before the first)."""
        return float(self.alpha_bars[t - 1]) if t > 0 else 1.0


def ddpm_step(schedule: NoiseSchedule, x_t: Array, t: int, eps: Array,
              noise: Optional[Array] = None) -> Array:
    """``x_{t-1}`` from ``x_t`` and the predicted noise ``eps`` (all samples at one
    timestep ``t``): the posterior mean ``(x_t - beta_t / sqrt(1 - alpha_bar_t) eps)
    / sqrt(alpha_t)`` plus ``sqrt(beta~_t) noise``, ``beta~_t = beta_t (1 -
    alpha_bar_{t-1}) / (1 - alpha_bar_t)`` (no noise at ``t = 0``)."""
    beta, abar = schedule.betas[t], schedule.alpha_bars[t]
    dt = x_t.dtype.type
    mean = (x_t - dt(beta / math.sqrt(1 - abar)) * eps) * dt(1 / math.sqrt(1 - beta))
    if t == 0:
        return mean
    if noise is None:
        raise ValueError("ddpm_step needs noise for t > 0")
    var = beta * (1 - schedule.alpha_bar_prev(t)) / (1 - abar)
    return mean + dt(math.sqrt(var)) * noise


def ddim_step(schedule: NoiseSchedule, x_t: Array, t: int, t_prev: int, eps: Array,
              eta: float = 0.0, noise: Optional[Array] = None) -> Array:
    """``x_{t_prev}`` from ``x_t`` (``t_prev < t``; ``-1``: the clean image): the
    predicted ``x_0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)`` moved to
    ``t_prev`` along ``eps``, with ``sigma = eta sqrt((1 - a') / (1 - a)) sqrt(1 - a /
    a')`` fresh noise (``eta = 0``: deterministic; ``eta = 1``: DDPM's variance)."""
    if not -1 <= t_prev < t:
        raise ValueError(f"t_prev={t_prev!r} must lie in [-1, t={t})")
    a = float(schedule.alpha_bars[t])
    a_prev = float(schedule.alpha_bars[t_prev]) if t_prev >= 0 else 1.0
    dt = x_t.dtype.type
    x0 = (x_t - dt(math.sqrt(1 - a)) * eps) * dt(1 / math.sqrt(a))
    sigma = eta * math.sqrt((1 - a_prev) / (1 - a)) * math.sqrt(1 - a / a_prev)
    out = dt(math.sqrt(a_prev)) * x0 + dt(math.sqrt(max(1 - a_prev - sigma ** 2, 0.0))) * eps
    if sigma > 0:
        if noise is None:
            raise ValueError("ddim_step needs noise when eta > 0")
        out = out + dt(sigma) * noise
    return out


def sample(eps_model: Callable[[Array, np.ndarray, Optional[np.ndarray]], Array],
           schedule: NoiseSchedule, shape: Sequence[int], rng: np.random.Generator, *,
           labels: Optional[Any] = None, steps: Optional[int] = None,
           method: str = "ddpm", eta: float = 0.0, guidance: float = 0.0,
           dtype: Any = np.float32, xp: Any = np) -> Array:
    """Run the reverse process from pure noise ``(N, *shape[1:])`` (``shape[0] = N``).

    ``method="ddpm"`` visits every timestep (``steps`` must be None or
    ``schedule.steps``); ``"ddim"`` visits ``steps`` evenly spaced ones (default all).
    ``guidance`` w > 0 (with ``labels``): classifier-free guidance, two predictions per
    step. The noise comes from ``rng`` (drawn on the CPU).
    """
    if method not in ("ddpm", "ddim"):
        raise ValueError(f"method={method!r}: expected 'ddpm' or 'ddim'")
    total = schedule.steps
    steps = total if steps is None else int(steps)
    if not 1 <= steps <= total or (method == "ddpm" and steps != total):
        raise ValueError(f"steps={steps!r}: ddpm runs all {total} timesteps, ddim 1 to "
                         f"{total}")
    if guidance < 0 or (guidance > 0 and labels is None):
        raise ValueError(f"guidance={guidance!r} must be >= 0 and needs labels")
    dtype = np.dtype(dtype)
    n = int(shape[0])

    def draw():
        return xp.asarray(rng.standard_normal(tuple(shape)).astype(dtype))

    def predict(x, t):
        tt = np.full(n, t, np.int64)
        eps = eps_model(x, tt, labels)
        if guidance > 0:
            free = eps_model(x, tt, None)  # the unconditional prediction
            eps = dtype.type(1 + guidance) * eps - dtype.type(guidance) * free
        return eps

    x = draw()
    if method == "ddpm":
        for t in range(total - 1, -1, -1):
            x = ddpm_step(schedule, x, t, predict(x, t), draw() if t > 0 else None)
        return x
    times = np.unique(np.linspace(0, total - 1, steps).round().astype(int))[::-1]
    for i, t in enumerate(times):
        t_prev = int(times[i + 1]) if i + 1 < len(times) else -1
        x = ddim_step(schedule, x, int(t), t_prev, predict(x, int(t)), eta,
                      draw() if eta > 0 and t_prev >= 0 else None)
    return x


@register_layer
class SinusoidalEmbedding(Layer):
    """Timesteps ``t`` (N, 1) as ``[sin(t f_0) .. sin(t f_{h-1}), cos(t f_0) ..
    cos(t f_{h-1})]``, ``f_i = max_period ** (-i / h)``, ``h = dim / 2``. No
    parameters; ``backward`` returns the derivative with respect to ``t``.

    Parameters
    ----------
    dim : int
        Output features, even.
    max_period : float
        The longest period.
    name : str, optional
        The layer's name.

    Examples
    --------
    >>> import numpy as np
    >>> from cnnfast.nn.diffusion import SinusoidalEmbedding
    >>> SinusoidalEmbedding(4).forward(np.array([[0.0]]))
    array([[0., 0., 1., 1.]])
    """

    def __init__(self, dim: int, max_period: float = 10000.0,
                 name: Optional[str] = None) -> None:
        super().__init__(name)
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 2 \
                or dim % 2:
            raise ValueError(f"dim={dim!r} must be an even int >= 2")
        if not (math.isfinite(max_period) and max_period > 1):
            raise ValueError(f"max_period={max_period!r} must be a finite number > 1")
        self.dim, self.max_period = int(dim), float(max_period)

    def output_shape(self, input_shape: ShapeLike) -> Shape:
        if tuple(input_shape) != (1,):
            raise ValueError(f"{self.name or 'SinusoidalEmbedding'} expects per-sample "
                             f"input (1,) (the timestep), got {tuple(input_shape)}")
        return (self.dim,)

    def build(self, input_shape: ShapeLike, rng: np.random.Generator, dtype: Any) -> None:
        self.output_shape(input_shape)
        super().build(input_shape, rng, dtype)

    def _freqs(self, x: Array) -> Array:
        half = self.dim // 2
        f = np.exp(-math.log(self.max_period) * np.arange(half) / half)
        return array_module(x).asarray(f.astype(x.dtype))

    def forward(self, x: Array, training: bool = False) -> Array:
        xp = array_module(x)
        arg = x * self._freqs(x)  # (N, 1) * (h,) -> (N, h)
        if training:
            self._cache = x
        return xp.concatenate([xp.sin(arg), xp.cos(arg)], axis=1)

    def backward(self, grad: Array, need_input_grad: bool = True) -> Optional[Array]:
        x = self._need_cache()
        if not need_input_grad:
            return None
        xp = array_module(x)
        f = self._freqs(x)
        arg = x * f
        h = self.dim // 2
        return ((grad[:, :h] * xp.cos(arg) - grad[:, h:] * xp.sin(arg)) * f).sum(
            axis=1, keepdims=True)

    def config(self) -> Dict[str, Any]:
        return {"dim": self.dim, "max_period": self.max_period}


# ----------------------------------------------------------------------------- the model


@register_layer
class ConditionShift(Layer):
    """``x + (c @ weight.T + bias)`` broadcast over the spatial axes: one shift per
    sample and channel from the per-sample conditioning vector ``c`` (N, cond_dim),
    which :meth:`set_condition` (or :func:`set_condition` on a whole model) gives the
    layer before each forward pass. Backward: the input gradient is the output's; the
    weight's is ``sum_space(grad).T @ c``. ``weight`` (C, cond_dim) starts
    Glorot-uniform, ``bias`` at zero.

    Parameters
    ----------
    cond_dim : int
        Length of the conditioning vector.
    name : str, optional
        The layer's name.

    Examples
    --------
    >>> import numpy as np
    >>> from cnnfast.nn.diffusion import ConditionShift
    >>> layer = ConditionShift(3)
    >>> layer.build((2, 4, 4), np.random.default_rng(0), np.float64)
    >>> layer.set_condition(np.zeros((5, 3)))
    >>> layer.forward(np.ones((5, 2, 4, 4))).shape
    (5, 2, 4, 4)
    """

    def __init__(self, cond_dim: int, name: Optional[str] = None) -> None:
        super().__init__(name)
        if isinstance(cond_dim, bool) or not isinstance(cond_dim, (int, np.integer)) \
                or cond_dim < 1:
            raise ValueError(f"cond_dim={cond_dim!r} must be a positive int")
        self.cond_dim = int(cond_dim)
        self.condition: Optional[Array] = None

    def param_shapes(self, input_shape: ShapeLike) -> Dict[str, Shape]:
        if len(input_shape) < 1:
            raise ValueError(f"{self.name or 'ConditionShift'} expects per-sample input "
                             f"(C, ...), got {tuple(input_shape)}")
        c = int(input_shape[0])
        return {"weight": (c, self.cond_dim), "bias": (c,)}

    def build(self, input_shape: ShapeLike, rng: np.random.Generator, dtype: Any) -> None:
        shapes = self.param_shapes(input_shape)
        fan_in, fan_out = fans(shapes["weight"])
        self.params["weight"] = get_initializer("glorot_uniform")(
            shapes["weight"], fan_in, fan_out, rng, dtype)
        self.params["bias"] = np.zeros(shapes["bias"], dtype)
        super().build(input_shape, rng, dtype)

    def set_condition(self, c: Optional[Array]) -> None:
        """The conditioning vectors (N, cond_dim) of the next forward passes."""
        self.condition = c

    def forward(self, x: Array, training: bool = False) -> Array:
        self._require_built()
        c, w = self.condition, self.params["weight"]
        if c is None:
            raise RuntimeError(f"{self.name or 'ConditionShift'}: no condition set "
                               f"(set_condition before forward)")
        if c.ndim != 2 or tuple(c.shape) != (len(x), self.cond_dim) or c.dtype != w.dtype:
            raise ValueError(f"{self.name or 'ConditionShift'}: condition "
                             f"{c.dtype} {tuple(c.shape)}, expected {w.dtype} "
                             f"({len(x)}, {self.cond_dim}) for this batch")
        shift = c @ w.T + self.params["bias"]  # (N, C)
        if training:
            self._cache = (c, x.ndim)
        return x + shift.reshape(shift.shape + (1,) * (x.ndim - 2))

    def backward(self, grad: Array, need_input_grad: bool = True) -> Optional[Array]:
        c, ndim = self._need_cache()
        if self.trainable:
            g = grad.sum(axis=tuple(range(2, ndim))) if ndim > 2 else grad  # (N, C)
            self.grads["weight"] = g.T @ c
            self.grads["bias"] = g.sum(axis=0)
        return grad if need_input_grad else None

    def to(self, xp: Any) -> "ConditionShift":
        self.condition = None
        return super().to(xp)  # type: ignore[return-value]

    def config(self) -> Dict[str, Any]:
        return {"cond_dim": self.cond_dim}


def _condition_layers(layers: Iterable[Layer]) -> List[ConditionShift]:
    out: List[ConditionShift] = []
    for layer in layers:
        if isinstance(layer, ConditionShift):
            out.append(layer)
        inner = layer.__dict__.get("layers")  # SkipConcat, Residual
        if inner:
            out += _condition_layers(inner)
    return out


def set_condition(model: Sequential, c: Optional[Array]) -> int:
    """Give every ``ConditionShift`` of ``model`` (nested blocks included) the
    conditioning vectors ``c``; returns how many there are."""
    layers = _condition_layers(model.layers)
    for layer in layers:
        layer.set_condition(c)
    return len(layers)


def noise_unet(image_shape: Sequence[int] = (1, 28, 28), cond_dim: int = 43,
               base_channels: int = 32, depth: int = 2, *, dtype: Any = "float32",
               seed: Optional[int] = None, backend: Optional[str] = None) -> Sequential:
    """The noise predictor: ``encdec.unet``'s shape (3x3 convolutions, 2x2 max-pool
    down, 2x2 stride-2 ``ConvTranspose2d`` up, ``SkipConcat`` skips, channels doubled
    per level) with a ``ConditionShift(cond_dim)`` between every 3x3 convolution and
    its ReLU, and a linear 1x1 convolution head to ``image_shape[0]`` channels.

    Examples
    --------
    >>> from cnnfast.nn.diffusion import noise_unet
    >>> noise_unet((1, 8, 8), cond_dim=5, base_channels=2, depth=2, seed=0).output_shape
    (1, 8, 8)
    """
    shape = tuple(int(v) for v in image_shape)
    depth, base = int(depth), int(base_channels)
    if depth < 1 or base < 1:
        raise ValueError(f"depth={depth!r} and base_channels={base!r} must be positive")
    if len(shape) != 3 or shape[1] % 2 ** depth or shape[2] % 2 ** depth:
        raise ValueError(f"image_shape={tuple(image_shape)!r} must be (C, H, W) with H "
                         f"and W divisible by {2 ** depth}")

    def block(c: int) -> List[Layer]:
        return [Conv2d(c, 3, padding=1), ConditionShift(cond_dim), ReLU()]

    def level(d: int) -> List[Layer]:
        c = base * 2 ** d
        if d == depth:  # the bottleneck
            return block(c)
        inner = [MaxPool2d(2)] + level(d + 1) + [ConvTranspose2d(c, 2, stride=2), ReLU()]
        return block(c) + [SkipConcat(inner)] + block(c)

    return Sequential(level(0) + [Conv2d(shape[0], 1)], input_shape=shape, dtype=dtype,
                      seed=seed, name="noise_unet", backend=backend)


class Diffusion:
    """A class-conditional diffusion model: the noise predictor ``net`` (a
    ``Sequential`` image -> image with ``ConditionShift`` layers of ``cond_dim =
    embed_dim + classes + 1``), its ``schedule``, and ``p_uncond``, the probability that
    training drops a label (to the null class ``classes``).

    Examples
    --------
    >>> import numpy as np
    >>> from cnnfast.nn.diffusion import Diffusion
    >>> d = Diffusion.build((1, 8, 8), classes=3, steps=10, base_channels=2, seed=0)
    >>> d.sample(np.array([0, 2]), np.random.default_rng(0), steps=4).shape
    (2, 1, 8, 8)
    """

    def __init__(self, net: Sequential, schedule: NoiseSchedule, classes: int,
                 embed_dim: int = 32, p_uncond: float = 0.1):
        self.net, self.schedule = net, schedule
        self.classes, self.embed_dim = int(classes), int(embed_dim)
        if self.classes < 1:
            raise ValueError(f"classes={classes!r} must be a positive int")
        if not 0 <= float(p_uncond) < 1:
            raise ValueError(f"p_uncond={p_uncond!r} must lie in [0, 1)")
        self.p_uncond = float(p_uncond)
        self.embedding = SinusoidalEmbedding(self.embed_dim)
        if net.input_shape is None or \
                tuple(net.output_shape or ()) != tuple(net.input_shape):
            raise ValueError(f"the noise predictor maps {net.input_shape} to "
                             f"{net.output_shape}; it must keep the image's shape")
        dims = {layer.cond_dim for layer in _condition_layers(net.layers)}
        if dims != {self.cond_dim}:
            raise ValueError(f"the noise predictor's ConditionShift layers take "
                             f"{sorted(dims) or 'no'} conditions; embed_dim + classes + 1 "
                             f"is {self.cond_dim}")
        self.image_shape: Tuple[int, ...] = tuple(net.input_shape)

    @property
    def cond_dim(self) -> int:
        return self.embed_dim + self.classes + 1

    @classmethod
    def build(cls, image_shape: Sequence[int] = (1, 28, 28), classes: int = 10,
              steps: int = 1000, schedule: str = "linear", p_uncond: float = 0.1,
              base_channels: int = 32, depth: int = 2, embed_dim: int = 32, *,
              dtype: Any = "float32", seed: int = 0,
              backend: Optional[str] = None) -> "Diffusion":
        """A new model (``noise_unet``, ``NoiseSchedule(steps, schedule)``)."""
        net = noise_unet(image_shape, int(embed_dim) + int(classes) + 1, base_channels,
                         depth, dtype=dtype, seed=seed, backend=backend)
        return cls(net, NoiseSchedule(steps, schedule), classes, embed_dim, p_uncond)

    def config(self) -> Dict[str, Any]:
        return {"classes": self.classes, "embed_dim": self.embed_dim,
                "p_uncond": self.p_uncond, "schedule": self.schedule.config()}

    def set_backend(self, backend: Optional[str]) -> "Diffusion":
        self.net.set_backend(backend)
        return self

    def condition(self, t: Any, labels: Any) -> Array:
        """``[sinusoidal(t), one_hot(labels)]`` (N, cond_dim) in the network's dtype
        and array module; ``labels`` None: the null class for every sample, else ints in
        ``[0, classes]`` (``classes``: the null class)."""
        t = self.schedule._check_t(t)
        if labels is None:
            labels = np.full(len(t), self.classes)
        labels = np.asarray(labels.get() if hasattr(labels, "get") else labels)
        if labels.shape != t.shape or labels.dtype.kind not in "iu" or (labels.size and (
                labels.min() < 0 or labels.max() > self.classes)):
            raise ValueError(f"labels must be ({len(t)},) ints in [0, {self.classes}] "
                             f"({self.classes}: none), got {labels.dtype} {labels.shape}")
        dtype = self.net.dtype
        emb = self.embedding.forward(t[:, None].astype(dtype))
        hot = np.zeros((len(t), self.classes + 1), dtype)
        hot[np.arange(len(t)), labels] = 1
        return self.net.xp.asarray(np.concatenate([emb, hot], axis=1))

    def predict_noise(self, x_t: Array, t: Any, labels: Any,
                      training: bool = False) -> Array:
        """The network's noise prediction for ``x_t`` at timesteps ``t`` (N,) and
        ``labels`` (see :meth:`condition`)."""
        set_condition(self.net, self.condition(t, labels))
        return self.net.forward(x_t, training=training)

    def sample(self, labels: Any, rng: np.random.Generator, steps: Optional[int] = None,
               guidance: float = 0.0, eta: float = 0.0, batch_size: int = 256) -> Array:
        """One image per label (ints in ``[0, classes)``), in [0, 1] (N, C, H, W):
        DDPM over all timesteps when ``steps`` is None or ``schedule.steps``, else DDIM
        with ``steps`` steps; ``guidance`` w: classifier-free guidance. Batches of
        ``batch_size`` labels, each from the next draws of ``rng``."""
        labels = np.asarray(labels)
        if labels.ndim != 1 or (labels.size and (labels.dtype.kind not in "iu" or
                                                 labels.min() < 0 or
                                                 labels.max() >= self.classes)):
            raise ValueError(f"labels must be ints in [0, {self.classes})")
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} must be >= 1")
        total = self.schedule.steps
        method = "ddpm" if steps is None or int(steps) == total else "ddim"
        xp, dtype = self.net.xp, self.net.dtype
        out = []
        for i in range(0, len(labels), batch_size):
            part = labels[i:i + batch_size]
            x = sample(self.predict_noise, self.schedule, (len(part),) + self.image_shape,
                       rng, labels=part, steps=steps, method=method, eta=eta,
                       guidance=guidance, dtype=dtype, xp=xp)
            out.append(xp.clip((x + 1) * dtype.type(0.5), 0, 1))
        return xp.concatenate(out) if out else xp.zeros((0,) + self.image_shape, dtype)


class DiffusionSampler:
    """``diffusion`` with its sampling settings fixed: ``classes``, ``image_shape``
    and ``sample(labels, rng)`` as a DCGAN has them (what
    ``generative_quality.evaluate_generator`` takes).

    Examples
    --------
    >>> import numpy as np
    >>> from cnnfast.nn.diffusion import Diffusion, DiffusionSampler
    >>> d = Diffusion.build((1, 8, 8), classes=3, steps=10, base_channels=2, seed=0)
    >>> s = DiffusionSampler(d, steps=4, guidance=1.0)
    >>> s.classes, s.image_shape, s.sample(np.array([1]), np.random.default_rng(0)).shape
    (3, (1, 8, 8), (1, 1, 8, 8))
    """

    def __init__(self, diffusion: Diffusion, steps: Optional[int] = None,
                 guidance: float = 0.0, eta: float = 0.0):
        self.diffusion, self.steps, self.guidance, self.eta = diffusion, steps, guidance, eta
        self.classes, self.image_shape = diffusion.classes, diffusion.image_shape

    def sample(self, labels: Any, rng: np.random.Generator, batch_size: int = 256) -> Array:
        return self.diffusion.sample(labels, rng, steps=self.steps, guidance=self.guidance,
                                     eta=self.eta, batch_size=batch_size)


def evaluate_diffusion(diffusion: Diffusion, images: Any, labels: Any, seed: int = 0,
                       batch_size: int = 256) -> Dict[str, float]:
    """The noise-prediction MSE on ``images`` (uint8 or [0, 1] floats) with their
    labels, evaluation mode, at timesteps and noise from ``SeedSequence([seed, 9])``
    (the same every epoch): ``{"loss"}``."""
    net = diffusion.net
    x0 = as_float(images, net.dtype, np) * net.dtype.type(2) - 1
    labels = np.asarray(labels)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 9]))
    t = rng.integers(0, diffusion.schedule.steps, len(x0))
    noise = rng.standard_normal(x0.shape).astype(net.dtype)
    total = 0.0
    for i in range(0, len(x0), batch_size):
        s = slice(i, i + batch_size)
        eps = net.xp.asarray(noise[s])
        x_t = diffusion.schedule.q_sample(net.xp.asarray(x0[s]), t[s], eps)
        loss, _ = mse(diffusion.predict_noise(x_t, t[s], labels[s]), eps)
        total += loss * len(x_t)
    return {"loss": total / len(x0) if len(x0) else float("nan")}


# ----------------------------------------------------------------------------- training


class DiffusionTask(Task):
    """DDPM's objective: ``x_t = q_sample(2x - 1, t, eps)`` at uniform timesteps,
    the label dropped to the null class with probability ``p_uncond``, the network
    trained to predict ``eps`` (MSE). See the module docstring for the seeding."""

    name = "diffusion"
    stops_mid_epoch = False
    schedule_per_batch = False
    eval_batch_size = 256
    FIELDS = ("epoch", "train_loss", "test_loss", "images_per_s", "train_time_s",
              "eval_time_s", "lr", "peak_rss_mb")
    stop_point = "this epoch (diffusion models resume at epoch boundaries)"

    loss = staticmethod(mse)

    def __init__(self, diffusion: Diffusion):
        self.diffusion = diffusion

    def epoch_seed(self, seed, epoch):
        return int(np.random.SeedSequence([int(seed), 8, int(epoch)]).generate_state(1)[0])

    def to_float(self, images, model):
        return as_float(images, model.dtype, model.xp)

    def pair(self, x, labels, rng, xp):
        """``x_t`` and ``(t, labels with drops, eps)``."""
        if labels is None:
            raise ValueError("a class-conditional diffusion model trains on labelled "
                             "images")
        d = self.diffusion
        n = len(x)
        t = rng.integers(0, d.schedule.steps, n)
        eps = xp.asarray(rng.standard_normal(tuple(x.shape)).astype(x.dtype))
        labels = np.where(rng.random(n) < d.p_uncond, d.classes, np.asarray(labels))
        x_t = d.schedule.q_sample(x * x.dtype.type(2) - 1, t, eps)
        return x_t, (t, labels, eps)

    def correct(self, outputs, target) -> int:
        return 0

    def train_metrics(self, running):
        return {"train_loss": running["loss_sum"] / max(running["seen"], 1)}

    def progress_text(self, running):
        return f"loss {self.train_metrics(running)['train_loss']:.4f}"

    def test_metrics(self, result):
        return {"test_loss": result["loss"]}

    def epoch_line(self, m):
        return (f"train loss {m['train_loss']:.4f} | test loss {m['test_loss']:.4f} | "
                f"{m['images_per_s']:,.0f} img/s")

    def summary(self, history, test_size):
        last = history[-1]
        return (f"noise-prediction MSE {last['train_loss']:.4f} (train), "
                f"{last['test_loss']:.4f} on {test_size} test images (sample with: "
                f"cnnfast sample CHECKPOINT)")


class DiffusionTrainer(Trainer):
    """``Trainer`` of a :class:`Diffusion` model's noise predictor."""

    def __init__(self, diffusion: Diffusion, optimizer: Optimizer,
                 schedule: Optional[Schedule] = None, batch_size: int = 64, seed: int = 0,
                 augment: Any = None):
        super().__init__(diffusion.net, optimizer, schedule, batch_size=batch_size,
                         seed=seed, augment=augment, task=DiffusionTask(diffusion))
        self.diffusion = diffusion

    def train_step(self, x, y):
        t, labels, eps = y
        out = self.diffusion.predict_noise(x, t, labels, training=True)
        loss, grad = mse(out, eps)
        self.model.backward(grad)
        self.optimizer.step(self.model)
        return loss, 0

    def evaluate(self, images, labels=None, batch_size=None, classes=None):
        return evaluate_diffusion(self.diffusion, images, labels, seed=self.seed,
                                  batch_size=batch_size or self.task.eval_batch_size)


class DiffusionRun(TrainingRun):
    """A ``TrainingRun`` of a :class:`DiffusionTrainer`; the checkpoint adds
    ``"diffusion": Diffusion.config()`` to the metadata."""

    trainer: DiffusionTrainer

    @property
    def diffusion(self) -> Diffusion:
        return self.trainer.diffusion

    def extra(self) -> dict:
        return {**super().extra(), "diffusion": self.diffusion.config()}

    @classmethod
    def load(cls, path: PathLike, backend: Optional[str] = None) -> "DiffusionRun":
        """The run a diffusion checkpoint continues (``CheckpointError`` for one that
        holds no diffusion training state)."""
        diffusion, opt, extra = load_diffusion(path, backend)
        try:
            if opt is None:
                raise KeyError("optimizer")
            state = extra["trainer"]
            trainer = DiffusionTrainer(diffusion, opt, make_schedule(state["schedule"]),
                                       batch_size=int(state["batch_size"]),
                                       seed=int(extra.get("seed", 0)))
            trainer.restore(state)
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{os.fspath(path)!r}: no usable diffusion training "
                                  f"state ({type(exc).__name__}: {exc})") from exc
        data = extra.get("data") if isinstance(extra.get("data"), dict) else None
        return cls(trainer, model_name=str(extra.get("model", "diffusion")),
                   seed=trainer.seed, data=data)


DIFFUSION_MODELS = ("diffusion",)


def new_run(model_name: str = "diffusion", *, seed: int = 0, optimizer: Optional[Optimizer]
            = None, batch_size: int = 64, schedule: Optional[Schedule] = None,
            dtype: Any = "float32", backend: Optional[str] = None, augment: Any = None,
            steps: int = 1000, noise_schedule: str = "linear", p_uncond: float = 0.1,
            **options: Any) -> DiffusionRun:
    """A new ``cnnfast train --model diffusion`` run: ``Diffusion.build(steps=steps,
    schedule=noise_schedule, p_uncond=p_uncond, **options)`` trained with
    ``optimizer`` (default ``Adam(1e-3)``) under the learning-rate ``schedule``."""
    if model_name not in DIFFUSION_MODELS:
        raise ValueError(f"model {model_name!r}: expected one of "
                         f"{', '.join(DIFFUSION_MODELS)}")
    diffusion = Diffusion.build(steps=steps, schedule=noise_schedule, p_uncond=p_uncond,
                                seed=seed, dtype=dtype, backend=backend, **options)
    optimizer = optimizer if optimizer is not None else Adam(1e-3)
    trainer = DiffusionTrainer(diffusion, optimizer, schedule or Schedule(optimizer.lr),
                               batch_size=batch_size, seed=seed, augment=augment)
    return DiffusionRun(trainer, model_name=model_name, seed=seed)


def is_diffusion_checkpoint(extra: Any) -> bool:
    """Whether a checkpoint's metadata says it holds a diffusion model."""
    return isinstance(extra, dict) and extra.get("task") == "diffusion"


def load_diffusion(path: PathLike, backend: Optional[str] = None
                   ) -> Tuple[Diffusion, Optional[Optimizer], dict]:
    """``(diffusion, optimizer, extra)`` from a checkpoint a :class:`DiffusionRun`
    wrote. Every problem is a ``CheckpointError`` (a ``ValueError``)."""
    path = os.fspath(path)
    net, opt, extra = load_checkpoint(path, backend=backend)
    if not is_diffusion_checkpoint(extra):
        raise CheckpointError(f"{path!r} holds a {extra.get('task') or 'classify'} model, "
                              f"not a diffusion model (train one with cnnfast train "
                              f"--model diffusion)")
    try:
        cfg = extra["diffusion"]
        sched = NoiseSchedule(int(cfg["schedule"]["steps"]), str(cfg["schedule"]["kind"]))
        diffusion = Diffusion(net, sched, int(cfg["classes"]), int(cfg["embed_dim"]),
                              float(cfg["p_uncond"]))
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
        raise CheckpointError(f"{path!r}: invalid diffusion configuration "
                              f"({type(exc).__name__}: {exc})") from exc
    return diffusion, opt, extra
