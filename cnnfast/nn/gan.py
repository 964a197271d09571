"""A class-conditional DCGAN, autograd-free like the rest of ``cnnfast.nn``.

* :func:`dcgan_generator`: ``(z, one-hot label)`` -> Dense -> BatchNorm -> ReLU ->
  ``Reshape`` to ``(c0, H/4, W/4)`` -> 4x4 stride-2 ``ConvTranspose2d`` -> BatchNorm ->
  ReLU -> 4x4 stride-2 ``ConvTranspose2d`` -> Tanh: images in [-1, 1].
* :func:`dcgan_discriminator`: the image with the label as ``classes`` constant
  one-hot channels -> two 4x4 stride-2 ``Conv2d`` + LeakyReLU(0.2) -> Dense: one logit.
  No batch normalisation, so a batch of real and fake images together is exactly two
  separate passes with their parameter gradients summed (one pass: larger products).
* :class:`DCGAN`: the two networks and the conditioning; :func:`train_step` is one
  alternating update with the non-saturating loss (binary cross-entropy with logits):
  the discriminator on real (target ``1 - label_smoothing``) and fake (target 0)
  images, then the generator through the *updated* discriminator, whose backward
  returns the gradient with respect to its input (``input_gradient``: the
  discriminator frozen, so its parameters get no gradient and keep their values).
* :class:`GanTask`, :class:`GanTrainer`, :class:`GanRun`: the GAN in the one training
  loop (``cnnfast.nn.training.Trainer``, ``cnnfast.nn.runs.fit``): ``cnnfast train
  --model dcgan``. The noise ``z`` comes from the trainer's data generator, seeded
  per epoch (``SeedSequence([seed, 6, epoch])``), so a run resumes at epoch boundaries
  exactly.

The checkpoint is a ``cnnfast.nn.checkpoint`` file whose model and optimizer are the
generator's (``load_checkpoint`` returns the generator), with the discriminator's
weights and Adam state stored beside them as ``discriminator/param/...``,
``discriminator/optim/...`` and its configuration in the metadata::

    extra = {"schema": 2, "task": "gan", "model": "dcgan", "trainer": ..., "data": ...,
             "seed": S, "augment": null,
             "gan": {"z_dim": Z, "classes": K, "label_smoothing": s},
             "discriminator": <Sequential.config()>,
             "discriminator_optimizer": <Optimizer.config()>}

:func:`load_gan` reads it back, checking the discriminator's arrays against its
configuration before anything is allocated, as ``load_checkpoint`` does.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple

import numpy as np

from .base import Array
from .checkpoint import (PathLike, _optimizer_problems, _shape_problems, load_checkpoint,
                         save_checkpoint)
from .checkpoint_file import CheckpointError, read_arrays
from .fusion import plan
from .layers import (BatchNorm, Conv2d, ConvTranspose2d, Dense, Flatten, LeakyReLU, ReLU,
                     Reshape, Tanh)
from .losses import binary_cross_entropy_with_logits
from .model import Sequential
from .optim import Adam, Optimizer, Schedule, make_optimizer, make_schedule
from .runs import SCHEMA, TrainingRun
from .tasks import Task, as_float
from .training import Trainer

GAN_MODELS = ("dcgan",)
DISC_PREFIX = "discriminator/"
#: DCGAN's Adam: lr 2e-4, beta1 0.5 (Radford et al.).
DEFAULT_LR = 2e-4
DEFAULT_BETAS = (0.5, 0.999)


# ----------------------------------------------------------------------------- networks


def _check_image_shape(image_shape: Sequence[int]) -> Tuple[int, int, int]:
    shape = tuple(int(v) for v in image_shape)
    if len(shape) != 3 or min(shape) < 1 or shape[1] % 4 or shape[2] % 4:
        raise ValueError(f"image_shape={tuple(image_shape)!r} must be (C, H, W) with H "
                         f"and W divisible by 4 (two stride-2 stages)")
    return shape[0], shape[1], shape[2]


def _check_channels(channels: Sequence[int], what: str) -> Tuple[int, int]:
    ch = tuple(int(c) for c in channels)
    if len(ch) != 2 or min(ch) < 1:
        raise ValueError(f"{what}={tuple(channels)!r} must be two positive ints")
    return ch[0], ch[1]


def dcgan_generator(z_dim: int = 64, classes: int = 10,
                    image_shape: Sequence[int] = (1, 28, 28),
                    channels: Sequence[int] = (64, 32), *, dtype: Any = "float32",
                    seed: Optional[int] = None, backend: Optional[str] = None) -> Sequential:
    """The generator: input ``(z_dim + classes,)`` (noise, then the one-hot label),
    output ``image_shape`` in [-1, 1]. ``channels``: the feature maps at H/4 and H/2.

    Examples
    --------
    >>> from cnnfast.nn.gan import dcgan_generator
    >>> g = dcgan_generator(8, 3, (1, 8, 8), channels=(4, 2), seed=0)
    >>> g.input_shape, g.output_shape
    ((11,), (1, 8, 8))
    """
    c, h, w = _check_image_shape(image_shape)
    c0, c1 = _check_channels(channels, "channels")
    if int(z_dim) < 1 or int(classes) < 1:
        raise ValueError(f"z_dim={z_dim!r} and classes={classes!r} must be positive ints")
    layers = [Dense(c0 * (h // 4) * (w // 4), use_bias=False), BatchNorm(), ReLU(),
              Reshape((c0, h // 4, w // 4)),
              ConvTranspose2d(c1, 4, stride=2, padding=1, use_bias=False), BatchNorm(),
              ReLU(), ConvTranspose2d(c, 4, stride=2, padding=1), Tanh()]
    return Sequential(layers, input_shape=(int(z_dim) + int(classes),), dtype=dtype,
                      seed=seed, name="dcgan_generator", backend=backend)


def dcgan_discriminator(classes: int = 10, image_shape: Sequence[int] = (1, 28, 28),
                        channels: Sequence[int] = (64, 128), *, dtype: Any = "float32",
                        seed: Optional[int] = None,
                        backend: Optional[str] = None) -> Sequential:
    """The discriminator: input ``(C + classes, H, W)`` (the image, then the label as
    one-hot constant channels), output one logit ``(1,)``.

    Examples
    --------
    >>> from cnnfast.nn.gan import dcgan_discriminator
    >>> d = dcgan_discriminator(3, (1, 8, 8), channels=(2, 4), seed=0)
    >>> d.input_shape, d.output_shape
    ((4, 8, 8), (1,))
    """
    c, h, w = _check_image_shape(image_shape)
    c0, c1 = _check_channels(channels, "channels")
    if int(classes) < 1:
        raise ValueError(f"classes={classes!r} must be a positive int")
    layers = [Conv2d(c0, 4, stride=2, padding=1), LeakyReLU(0.2),
              Conv2d(c1, 4, stride=2, padding=1), LeakyReLU(0.2), Flatten(), Dense(1)]
    return Sequential(layers, input_shape=(c + int(classes), h, w), dtype=dtype, seed=seed,
                      name="dcgan_discriminator", backend=backend)


def one_hot(labels: Any, classes: int, dtype: Any, xp: Any = np) -> Array:
    """``(N, classes)`` one-hot rows of integer ``labels`` (ValueError outside
    ``[0, classes)``)."""
    labels = np.asarray(labels.get() if hasattr(labels, "get") else labels)
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be integers of shape (N,), got {labels.dtype} "
                         f"{labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        raise ValueError(f"labels must lie in [0, {classes})")
    out = np.zeros((len(labels), classes), dtype)
    out[np.arange(len(labels)), labels] = 1
    return xp.asarray(out)


@contextlib.contextmanager
def frozen(model: Sequential) -> Iterator[None]:
    """Every layer of ``model`` frozen for the duration (their flags restored)."""
    flags = [layer.trainable for layer in model.layers]
    for layer in model.layers:
        layer.trainable = False
    try:
        yield
    finally:
        for layer, flag in zip(model.layers, flags):
            layer.trainable = flag


def input_gradient(model: Sequential, x: Array, loss_fn: Any) -> Tuple[float, Array, Array]:
    """``(loss, output, d loss / d x)`` of ``loss_fn(model(x))`` (``loss_fn`` returns
    ``(loss, grad)``), in training mode with every layer frozen: no parameter
    gradient is computed and none is left behind. ``Sequential.backward`` skips the
    layers before the first trainable one; here the gradient reaches the input (the
    generator's gradient flows through the discriminator's backward pass).

    ``ValueError`` for a model with ``BatchNorm``: frozen, it would use its running
    statistics, not the batch's (the DCGAN discriminator has none).
    """
    if any(isinstance(layer, BatchNorm) for layer in model.layers):
        raise ValueError(f"input_gradient: {model.name} has batch normalisation, which "
                         f"a frozen model runs with its running statistics")
    with frozen(model):
        steps = plan(model.layers, model.fuse)
        y = x
        for step in steps:
            y = step.forward(y, True)
        loss, grad = loss_fn(y)
        for step in reversed(steps):
            grad = step.backward(grad, need_input_grad=True)
    return loss, y, grad


class DCGAN:
    """A class-conditional GAN: ``generator`` maps ``(z, one-hot label)`` to images in
    [-1, 1], ``discriminator`` maps ``(image, one-hot channels)`` to a logit.

    ``label_smoothing`` s: the discriminator's target for real images is ``1 - s``
    (one-sided smoothing; 0: none).

    Examples
    --------
    >>> import numpy as np
    >>> from cnnfast.nn.gan import DCGAN
    >>> gan = DCGAN.build(z_dim=4, classes=3, image_shape=(1, 8, 8),
    ...                   g_channels=(4, 2), d_channels=(2, 4), seed=0)
    >>> gan.sample(np.array([0, 2]), np.random.default_rng(0)).shape
    (2, 1, 8, 8)
    """

    def __init__(self, generator: Sequential, discriminator: Sequential, z_dim: int,
                 classes: int, label_smoothing: float = 0.0):
        self.generator, self.discriminator = generator, discriminator
        self.z_dim, self.classes = int(z_dim), int(classes)
        if not 0 <= float(label_smoothing) < 1:
            raise ValueError(f"label_smoothing={label_smoothing!r} must lie in [0, 1)")
        self.label_smoothing = float(label_smoothing)
        g_in, g_out = generator.input_shape, generator.output_shape
        d_in = discriminator.input_shape
        if g_in != (self.z_dim + self.classes,):
            raise ValueError(f"the generator takes {g_in}; z_dim + classes is "
                             f"{self.z_dim + self.classes}")
        wanted = None if g_out is None else (g_out[0] + self.classes,) + tuple(g_out[1:])
        if wanted is None or d_in != wanted or discriminator.output_shape != (1,):
            raise ValueError(f"the discriminator maps {d_in} to "
                             f"{discriminator.output_shape}; expected {wanted} to (1,)")
        self.image_shape: Tuple[int, ...] = tuple(g_out or ())

    @classmethod
    def build(cls, z_dim: int = 64, classes: int = 10,
              image_shape: Sequence[int] = (1, 28, 28),
              g_channels: Sequence[int] = (64, 32), d_channels: Sequence[int] = (64, 128),
              label_smoothing: float = 0.0, *, dtype: Any = "float32", seed: int = 0,
              backend: Optional[str] = None) -> "DCGAN":
        """New networks (``dcgan_generator``, ``dcgan_discriminator``); the
        discriminator's weights come from ``seed + 1``. The discriminator is twice as
        wide as the generator: with (32, 64) it sat at chance (loss 2 ln 2) from the
        first epoch and the samples stalled at 6x the Fréchet floor; (64, 128) reached
        4.5x in the same 8 epochs (README, Generative models)."""
        g = dcgan_generator(z_dim, classes, image_shape, g_channels, dtype=dtype, seed=seed,
                            backend=backend)
        d = dcgan_discriminator(classes, image_shape, d_channels, dtype=dtype,
                                seed=int(seed) + 1, backend=backend)
        return cls(g, d, z_dim, classes, label_smoothing)

    def config(self) -> Dict[str, Any]:
        return {"z_dim": self.z_dim, "classes": self.classes,
                "label_smoothing": self.label_smoothing}

    def set_backend(self, backend: Optional[str]) -> "DCGAN":
        self.generator.set_backend(backend)
        self.discriminator.set_backend(backend)
        return self

    # -- inputs ---------------------------------------------------------------------
    def generator_input(self, z: Array, labels: Any) -> Array:
        """``concat(z, one_hot(labels))``: (N, z_dim + classes)."""
        g = self.generator
        return g.xp.concatenate([z.astype(g.dtype, copy=False),
                                 one_hot(labels, self.classes, g.dtype, g.xp)], axis=1)

    def discriminator_input(self, images: Array, labels: Any) -> Array:
        """``images`` (N, C, H, W) in [-1, 1] with ``classes`` one-hot channels after
        them: (N, C + classes, H, W)."""
        d = self.discriminator
        hot = one_hot(labels, self.classes, d.dtype, d.xp)
        n, _, h, w = images.shape
        planes = d.xp.broadcast_to(hot[:, :, None, None], (n, self.classes, h, w))
        return d.xp.concatenate([images.astype(d.dtype, copy=False), planes], axis=1)

    def noise(self, n: int, rng: np.random.Generator) -> Array:
        """``n`` standard normal codes ``(n, z_dim)`` drawn on the CPU from ``rng``."""
        g = self.generator
        return g.xp.asarray(rng.standard_normal((int(n), self.z_dim)).astype(g.dtype))

    # -- sampling -------------------------------------------------------------------
    def generate(self, z: Array, labels: Any, batch_size: int = 256) -> Array:
        """The generator's images for codes ``z`` and ``labels`` in evaluation mode
        (BatchNorm's running statistics), in [-1, 1]."""
        return self.generator.predict(self.generator_input(z, labels), batch_size)

    def sample(self, labels: Any, rng: np.random.Generator, batch_size: int = 256) -> Array:
        """One image per label, in [0, 1] (N, C, H, W), codes drawn from ``rng``."""
        labels = np.asarray(labels)
        if len(labels) == 0:
            return self.generator.xp.zeros((0,) + self.image_shape, self.generator.dtype)
        x = self.generate(self.noise(len(labels), rng), labels, batch_size)
        xp = self.generator.xp
        return xp.clip((x + 1) * x.dtype.type(0.5), 0, 1)

    def logits(self, images: Array, labels: Any, batch_size: int = 256) -> Array:
        """The discriminator's logits (N,) for ``images`` in [-1, 1], evaluation mode
        (the label channels built a batch at a time: they are ``classes`` times the
        images' size)."""
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} must be >= 1")
        d = self.discriminator
        labels = np.asarray(labels)
        out = [d.forward(self.discriminator_input(images[i:i + batch_size],
                                                  labels[i:i + batch_size]))[:, 0]
               for i in range(0, len(images), batch_size)]
        return d.xp.concatenate(out) if out else d.xp.zeros(0, d.dtype)

    # -- losses ---------------------------------------------------------------------
    def discriminator_loss(self, real: Array, fake: Array, labels: Any,
                           training: bool = True) -> Tuple[float, Optional[Array]]:
        """``mean BCE(D(real), 1 - s) + mean BCE(D(fake), 0)`` on one batch of both
        (see the module docstring); with ``training``, the forward is kept and the
        gradient with respect to the logits returned."""
        d = self.discriminator
        x = d.xp.concatenate([self.discriminator_input(real, labels),
                              self.discriminator_input(fake, labels)])
        logits = d.forward(x, training=training)
        n = len(real)
        targets = d.xp.zeros(logits.shape, d.dtype)
        targets[:n] = 1 - self.label_smoothing
        loss, grad = binary_cross_entropy_with_logits(logits, targets)
        # each half's mean, summed: twice the mean over both
        return 2 * loss, grad * d.dtype.type(2)

    def generator_loss(self, fake: Array, labels: Any) -> Tuple[float, Array]:
        """The non-saturating generator loss ``mean BCE(D(fake), 1)`` and its gradient
        with respect to ``fake`` (the discriminator frozen, see ``input_gradient``)."""
        d = self.discriminator
        x = self.discriminator_input(fake, labels)

        def loss_fn(y: Array) -> Tuple[float, Array]:
            return binary_cross_entropy_with_logits(y, d.xp.ones(y.shape, d.dtype))

        loss, _, grad = input_gradient(d, x, loss_fn)
        return loss, grad[:, :fake.shape[1]]  # the label channels are constants


def train_step(gan: DCGAN, g_optimizer: Optimizer, d_optimizer: Optimizer, real: Array,
               labels: Any, z: Array) -> Tuple[float, float]:
    """One alternating update on real images (in [-1, 1]) with their labels and codes
    ``z`` (the fakes take the real batch's labels): the discriminator first, then the
    generator through the updated discriminator. Returns ``(d_loss, g_loss)``."""
    g, d = gan.generator, gan.discriminator
    fake = g.forward(gan.generator_input(z, labels), training=True)
    d_loss, grad = gan.discriminator_loss(real, fake, labels)
    d.backward(grad)
    d_optimizer.step(d)
    g_loss, grad_fake = gan.generator_loss(fake, labels)
    g.backward(grad_fake)
    g_optimizer.step(g)
    return d_loss, g_loss


def evaluate_gan(gan: DCGAN, images: Any, labels: Any, seed: int = 0,
                 batch_size: int = 256) -> Dict[str, float]:
    """The discriminator's mean probability of "real" on ``images`` (uint8 or [0, 1]
    floats, evaluation mode) and on as many generated images of the same labels
    (codes from ``SeedSequence([seed, 7])``, the same every epoch): ``{"d_real",
    "d_fake"}``."""
    xp = gan.generator.xp
    real = as_float(images, gan.discriminator.dtype, xp) * 2 - 1
    labels = np.asarray(labels)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 7]))
    fake = gan.generate(gan.noise(len(labels), rng), labels, batch_size)

    def prob(x):
        logit = gan.logits(x, labels, batch_size)
        return float((1 / (1 + xp.exp(-logit))).mean()) if len(logit) else float("nan")

    return {"d_real": prob(real), "d_fake": prob(fake)}


# ----------------------------------------------------------------------------- training


class GanTask(Task):
    """Real images (with their labels) against generated ones; see the module
    docstring. An epoch's noise comes from a generator of its own, so a stop request
    ends training after the epoch in progress and a run resumes at epoch boundaries."""

    name = "gan"
    stops_mid_epoch = False
    schedule_per_batch = False
    eval_batch_size = 256
    FIELDS = ("epoch", "d_loss", "g_loss", "d_real", "d_fake", "images_per_s",
              "train_time_s", "eval_time_s", "lr", "peak_rss_mb")
    stop_point = "this epoch (GANs resume at epoch boundaries)"

    loss = staticmethod(binary_cross_entropy_with_logits)

    def __init__(self, z_dim: int):
        self.z_dim = int(z_dim)

    def epoch_seed(self, seed, epoch):
        return int(np.random.SeedSequence([int(seed), 6, int(epoch)]).generate_state(1)[0])

    def to_float(self, images, model):
        return as_float(images, model.dtype, model.xp)

    def pair(self, x, labels, rng, xp):
        """Real images in [-1, 1], and ``(labels, z)``."""
        if labels is None:
            raise ValueError("a conditional GAN trains on labelled images")
        z = xp.asarray(rng.standard_normal((len(x), self.z_dim)).astype(x.dtype))
        return x * x.dtype.type(2) - 1, (np.asarray(labels), z)

    def correct(self, outputs, target) -> int:
        return 0

    def train_metrics(self, running):
        seen = max(running["seen"], 1)
        return {"d_loss": running.get("d_loss_sum", 0.0) / seen,
                "g_loss": running["loss_sum"] / seen}

    def progress_text(self, running):
        m = self.train_metrics(running)
        return f"D {m['d_loss']:.3f} G {m['g_loss']:.3f}"

    def test_metrics(self, result):
        return {"d_real": result["d_real"], "d_fake": result["d_fake"]}

    def epoch_line(self, m):
        return (f"D loss {m['d_loss']:.4f} G loss {m['g_loss']:.4f} | test D(real) "
                f"{m['d_real']:.3f} D(fake) {m['d_fake']:.3f} | "
                f"{m['images_per_s']:,.0f} img/s")

    def summary(self, history, test_size):
        last = history[-1]
        return (f"D loss {last['d_loss']:.4f}, G loss {last['g_loss']:.4f}; on {test_size} "
                f"test images D(real) {last['d_real']:.3f}, D(fake) {last['d_fake']:.3f} "
                f"(sample with: cnnfast sample CHECKPOINT)")


class GanTrainer(Trainer):
    """``Trainer`` for a :class:`DCGAN`: the model and optimizer it knows are the
    generator's (what the checkpoint's model is); ``d_optimizer`` updates the
    discriminator at the same learning rate (the schedule sets both)."""

    def __init__(self, gan: DCGAN, optimizer: Optimizer, d_optimizer: Optimizer,
                 schedule: Optional[Schedule] = None, batch_size: int = 64, seed: int = 0,
                 augment: Any = None):
        super().__init__(gan.generator, optimizer, schedule, batch_size=batch_size,
                         seed=seed, augment=augment, task=GanTask(gan.z_dim))
        self.gan, self.d_optimizer = gan, d_optimizer

    def train_step(self, x, y):
        labels, z = y
        self.d_optimizer.lr = self.optimizer.lr
        d_loss, g_loss = train_step(self.gan, self.optimizer, self.d_optimizer, x, labels, z)
        self.running["d_loss_sum"] = self.running.get("d_loss_sum", 0.0) + d_loss * len(x)
        return g_loss, 0

    def evaluate(self, images, labels=None, batch_size=None, classes=None):
        return evaluate_gan(self.gan, images, labels, seed=self.seed,
                            batch_size=batch_size or self.task.eval_batch_size)


class GanRun(TrainingRun):
    """A ``TrainingRun`` of a :class:`GanTrainer`: its checkpoint holds both networks
    (see the module docstring)."""

    trainer: GanTrainer

    @property
    def gan(self) -> DCGAN:
        return self.trainer.gan

    def extra(self) -> dict:
        t = self.trainer
        return {**super().extra(), "gan": self.gan.config(),
                "discriminator": self.gan.discriminator.config(),
                "discriminator_optimizer": t.d_optimizer.config()}

    def save(self, path) -> str:
        return save_gan(path, self.gan, self.trainer.optimizer, self.trainer.d_optimizer,
                        self.extra())

    @classmethod
    def load(cls, path: PathLike, backend: Optional[str] = None) -> "GanRun":
        """The run a GAN checkpoint continues (``CheckpointError`` for one that holds
        no GAN training state)."""
        gan, g_opt, d_opt, extra = load_gan(path, backend)
        try:
            if g_opt is None or d_opt is None:
                raise KeyError("optimizer")
            state = extra["trainer"]
            trainer = GanTrainer(gan, g_opt, d_opt, make_schedule(state["schedule"]),
                                 batch_size=int(state["batch_size"]),
                                 seed=int(extra.get("seed", 0)))
            trainer.restore(state)
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{os.fspath(path)!r}: no usable GAN training state "
                                  f"({type(exc).__name__}: {exc})") from exc
        data = extra.get("data") if isinstance(extra.get("data"), dict) else None
        return cls(trainer, model_name=str(extra.get("model", "dcgan")),
                   seed=trainer.seed, data=data)


def new_run(model_name: str = "dcgan", *, seed: int = 0, lr: float = DEFAULT_LR,
            batch_size: int = 64, schedule: Optional[Schedule] = None,
            dtype: Any = "float32", backend: Optional[str] = None, augment: Any = None,
            **gan_options: Any) -> GanRun:
    """A new ``cnnfast train --model dcgan`` run: ``DCGAN.build(**gan_options)`` and
    DCGAN's Adam (``lr``, betas (0.5, 0.999)) for both networks."""
    if model_name not in GAN_MODELS:
        raise ValueError(f"model {model_name!r}: expected one of {', '.join(GAN_MODELS)}")
    gan = DCGAN.build(seed=seed, dtype=dtype, backend=backend, **gan_options)
    trainer = GanTrainer(gan, Adam(lr, DEFAULT_BETAS), Adam(lr, DEFAULT_BETAS),
                         schedule or Schedule(lr), batch_size=batch_size, seed=seed,
                         augment=augment)
    return GanRun(trainer, model_name=model_name, seed=seed)


# ----------------------------------------------------------------------------- files


def save_gan(path: PathLike, gan: DCGAN, g_optimizer: Optional[Optimizer] = None,
             d_optimizer: Optional[Optimizer] = None, extra: Optional[dict] = None) -> str:
    """Write both networks (and optimizers) to one checkpoint, atomically."""
    meta = {"schema": SCHEMA, "task": "gan", "model": "dcgan", **(extra or {}),
            "gan": gan.config(), "discriminator": gan.discriminator.config(),
            "discriminator_optimizer": d_optimizer.config() if d_optimizer else None}
    arrays = {DISC_PREFIX + k: v for k, v in gan.discriminator.state_dict().items()}
    if d_optimizer is not None:
        arrays.update({f"{DISC_PREFIX}optim/{k}": np.asarray(v)
                       for k, v in d_optimizer.state_dict().items()})
    return save_checkpoint(path, gan.generator, g_optimizer, meta, arrays=arrays)


def is_gan_checkpoint(extra: dict) -> bool:
    """Whether a checkpoint's metadata says it holds a GAN."""
    return isinstance(extra, dict) and extra.get("task") == "gan"


def load_gan(path: PathLike, backend: Optional[str] = None
             ) -> Tuple[DCGAN, Optional[Optimizer], Optional[Optimizer], dict]:
    """``(gan, generator optimizer, discriminator optimizer, extra)`` from a file
    :func:`save_gan` wrote. Every problem is a ``CheckpointError`` (a ``ValueError``);
    a checkpoint of another task says so."""
    path = os.fspath(path)
    generator, g_opt, extra = load_checkpoint(path, backend=backend)
    if not is_gan_checkpoint(extra):
        raise CheckpointError(f"{path!r} holds a {extra.get('task') or 'classify'} model, "
                              f"not a GAN (train one with cnnfast train --model dcgan)")
    arrays = read_arrays(path)
    disc = {k[len(DISC_PREFIX):]: v for k, v in arrays.items() if k.startswith(DISC_PREFIX)}
    try:
        cfg = extra["discriminator"]
        discriminator = Sequential.from_config(cfg, backend=backend, build=False)
        expected = discriminator.state_shapes(cfg["input_shape"])
        d_opt = (make_optimizer(extra["discriminator_optimizer"])
                 if extra.get("discriminator_optimizer") else None)
        options = extra["gan"]
        z_dim, classes = int(options["z_dim"]), int(options["classes"])
        smoothing = float(options.get("label_smoothing", 0.0))
    except (KeyError, TypeError, ValueError, AttributeError, NotImplementedError,
            OverflowError, RecursionError) as exc:
        raise CheckpointError(f"{path!r}: invalid GAN configuration "
                              f"({type(exc).__name__}: {exc})") from exc
    problems = _shape_problems(expected, disc)
    if d_opt is not None:
        problems += _optimizer_problems(expected, disc, d_opt)
    if problems:
        raise CheckpointError(f"{path!r}: the discriminator's arrays do not match its "
                              f"configuration: {'; '.join(problems[:5])}")
    discriminator.build(cfg["input_shape"])
    discriminator.load_state_dict(disc, strict=True)
    if d_opt is not None:
        d_opt.load_state_dict({k[len("optim/"):]: v for k, v in disc.items()
                               if k.startswith("optim/")})
    try:
        gan = DCGAN(generator, discriminator, z_dim, classes, smoothing)
    except ValueError as exc:
        raise CheckpointError(f"{path!r}: {exc}") from exc
    return gan, g_opt, d_opt, extra


# ----------------------------------------------------------------------------- pictures


def image_grid(images: Any, cols: int = 10, pad: int = 1) -> np.ndarray:
    """``(N, C, H, W)`` images in [0, 1] tiled row by row into one float array
    ``(rows * (H + pad) - pad, cols * (W + pad) - pad)`` (first channel; the gaps
    are 1, white)."""
    imgs = np.asarray(images.get() if hasattr(images, "get") else images)
    if imgs.ndim != 4 or len(imgs) == 0:
        raise ValueError(f"images must be a non-empty (N, C, H, W) batch, got "
                         f"{imgs.shape}")
    n, _, h, w = imgs.shape
    cols = max(1, min(int(cols), n))
    rows = -(-n // cols)
    out = np.ones((rows * (h + pad) - pad, cols * (w + pad) - pad), np.float32)
    for i in range(n):
        r, c = divmod(i, cols)
        out[r * (h + pad):r * (h + pad) + h, c * (w + pad):c * (w + pad) + w] = imgs[i, 0]
    return out
