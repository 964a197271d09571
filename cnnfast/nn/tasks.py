"""What a model learns, for the one training loop (``cnnfast.nn.training.Trainer``):
classification (images -> class labels) and denoising (noisy images -> clean ones).

A task says how a training batch is formed from the shuffled images (labels, or a
noisy/clean pair drawn with the trainer's data generator), the loss, the statistics
of a step, how a model is evaluated, and which metrics an epoch records:

* :class:`ClassificationTask`: softmax cross-entropy on integer labels; accuracy
  and a confusion matrix (:func:`evaluate`). The learning-rate schedule steps per
  batch; training can stop after any batch and resume there exactly.
* :class:`DenoisingTask`: ``clip(x + noise_std * N(0, 1), 0, 1) -> x`` with the mean
  squared error; PSNR of noisy and denoised images (:func:`evaluate_denoiser`). The
  schedule steps per epoch and training stops (and resumes) at epoch boundaries.

The evaluation helpers live here, below both the trainer and the model builders
(``cnnfast.nn.training`` and ``cnnfast.nn.encdec`` re-export them).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from .base import Array, array_module
from .data import to_float
from .losses import mse, softmax_cross_entropy

if TYPE_CHECKING:  # for the annotations only
    from .model import Sequential

TASK_NAMES = ("classify", "denoise")
DEFAULT_NOISE = 0.3


# ------------------------------------------------------------------------- classification


def evaluate(model: Sequential, images: Any, labels: Any, batch_size: int = 500,
             classes: Optional[int] = None) -> Dict[str, Any]:
    """Loss, accuracy and confusion matrix (rows: true class, columns: predicted)
    of ``model`` on uint8 ``images`` and int ``labels``."""
    if batch_size < 1:  # range() would silently skip every image
        raise ValueError(f"batch_size={batch_size!r} must be >= 1")
    xp = model.xp
    if not classes:
        if model.output_shape is None:
            raise RuntimeError("the model is not built: pass input_shape or call build()")
        classes = int(model.output_shape[0])
    confusion = np.zeros((classes, classes), np.int64)
    loss_sum = 0.0
    for i in range(0, len(images), batch_size):
        x = to_float(images[i:i + batch_size], model.dtype, xp)
        y = labels[i:i + batch_size]
        logits = model.forward(x, training=False)
        loss, _ = softmax_cross_entropy(logits, xp.asarray(y))
        loss_sum += loss * len(y)
        pred = logits.argmax(axis=1)
        pred = pred.get() if hasattr(pred, "get") else pred
        np.add.at(confusion, (y, pred), 1)
    n = max(len(images), 1)
    per_class = confusion.diagonal() / np.maximum(confusion.sum(axis=1), 1)
    return {"loss": loss_sum / n, "accuracy": float(confusion.trace() / n),
            "per_class": per_class.tolist(), "confusion": confusion}


# ----------------------------------------------------------------------------- denoising


def psnr(a: Array, b: Array, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB: ``10 log10(data_range^2 / mean((a-b)^2))``
    over all elements (``inf`` for identical arrays)."""
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(f"psnr: shapes {tuple(a.shape)} and {tuple(b.shape)} differ")
    xp = array_module(a)
    diff = a.astype(np.float64) - xp.asarray(b).astype(np.float64)
    m = float((diff * diff).mean())
    if m == 0:
        return math.inf
    return 10.0 * math.log10(float(data_range) ** 2 / m)


def add_noise(clean: Array, std: float, rng: np.random.Generator) -> Array:
    """``clip(clean + std * N(0, 1), 0, 1)``, noise drawn on the CPU (seeded, the
    same on every device); returns a new array of ``clean``'s module and dtype."""
    xp = array_module(clean)
    noise = rng.standard_normal(clean.shape).astype(clean.dtype) * clean.dtype.type(std)
    return xp.clip(clean + xp.asarray(noise), 0, 1)


def as_float(images: Any, dtype: Any, xp: Any) -> Array:
    """Images as floats in [0, 1] of array module ``xp``: uint8 is scaled by 1/255,
    floats are taken as they are; (N, H, W) gets a channel axis."""
    images = np.asarray(images) if array_module(images) is np else images
    if images.ndim == 3:
        images = images[:, None]
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W) or (N, H, W), got shape "
                         f"{tuple(images.shape)}")
    if images.dtype == np.uint8:
        return xp.asarray(images).astype(dtype) / dtype.type(255)
    return xp.asarray(images).astype(dtype, copy=False)


def evaluate_denoiser(model: Sequential, clean: Any, noise_std: float, seed: int = 0,
                      batch_size: int = 256) -> Dict[str, Any]:
    """PSNR of noisy and of denoised ``clean`` images (float in [0, 1]; noise from
    ``seed``): ``{"psnr_noisy", "psnr_denoised", "mse_denoised"}``."""
    xp = model.xp
    clean = as_float(clean, model.dtype, xp)
    noisy = add_noise(clean, noise_std, np.random.default_rng(seed))
    out = model.predict(noisy, batch_size)
    return {"psnr_noisy": psnr(noisy, clean), "psnr_denoised": psnr(out, clean),
            "mse_denoised": float(((out - clean) ** 2).mean())}


# ----------------------------------------------------------------------------- tasks


class Task:
    """What the tasks share; a subclass sets the class attributes and the loss and
    overrides what differs. ``name`` is the checkpoint's ``task`` field,
    ``stops_mid_epoch`` whether a stop request ends the epoch after the current
    batch (else after the epoch), ``schedule_per_batch`` whether the learning rate
    follows the schedule at fractional epochs (else at whole ones), ``FIELDS`` the
    keys of an epoch's record in order, ``stop_point`` where a stop request takes
    effect, in words."""

    name = ""
    stops_mid_epoch = True
    schedule_per_batch = True
    eval_batch_size = 500
    FIELDS: Tuple[str, ...] = ()
    stop_point = "this batch"
    #: ``loss(outputs, target) -> (loss, grad of outputs)``, set by each task.
    loss: Callable[[Array, Array], Tuple[float, Array]]

    def config(self) -> Dict[str, Any]:
        """What a checkpoint records beyond the name (keywords of ``make_task``)."""
        return {}

    def data_rng(self, seed: int) -> np.random.Generator:
        """The trainer's data generator for training seed ``seed``."""
        return np.random.default_rng([int(seed), 1])

    def epoch_seed(self, seed: int, epoch: int) -> Optional[int]:
        """The seed of epoch ``epoch``'s data generator, or None: the generator
        continues from the previous epoch."""
        return None

    def to_float(self, images: Any, model: Sequential) -> Array:
        """A batch of stored images as the model's float inputs."""
        return to_float(images, model.dtype, model.xp)

    def describe(self) -> str:
        """Extra words for the run's header line ('' for none)."""
        return ""

    # What each task defines (the trainer calls these; see ClassificationTask).
    def pair(self, x: Array, labels: Any, rng: np.random.Generator,
             xp: Any) -> Tuple[Array, Array]:
        """``(input, target)`` of a training batch from its float images ``x``."""
        raise NotImplementedError

    def correct(self, outputs: Array, target: Array) -> int:
        """Correctly predicted samples of a batch (0 where that has no meaning)."""
        raise NotImplementedError

    def train_metrics(self, running: Dict[str, Any]) -> Dict[str, float]:
        """An epoch's training fields from the trainer's running sums."""
        raise NotImplementedError

    def progress_text(self, running: Dict[str, Any]) -> str:
        """The figures the progress bar shows beside the bar."""
        raise NotImplementedError

    def evaluate(self, model: Sequential, images: Any, labels: Any = None,
                 batch_size: Optional[int] = None, classes: Optional[int] = None,
                 seed: int = 0) -> Dict[str, Any]:
        """The task's evaluation of ``model`` on the test images."""
        raise NotImplementedError

    def test_metrics(self, result: Dict[str, Any]) -> Dict[str, float]:
        """An evaluation result as the epoch record's test fields."""
        raise NotImplementedError

    def epoch_line(self, m: Dict[str, Any]) -> str:
        """The line printed after an epoch, from its record ``m``."""
        raise NotImplementedError

    def summary(self, history: List[Dict[str, Any]], test_size: int) -> str:
        """The closing line of a run, from its epoch records."""
        raise NotImplementedError


class ClassificationTask(Task):
    """Images -> class labels (int, (N,)), softmax cross-entropy.

    The data generator (shuffles only) is seeded once, ``[seed, 1]``, and continues
    from epoch to epoch; the learning rate follows the schedule at fractional
    epochs (per batch); a stop request ends the epoch after the current batch."""

    name = "classify"
    stops_mid_epoch = True
    schedule_per_batch = True
    eval_batch_size = 500
    # The keys of an epoch's record, in the order metrics.jsonl has always had them.
    FIELDS = ("epoch", "train_loss", "train_acc", "images_per_s", "train_time_s", "lr",
              "test_loss", "test_acc", "eval_time_s", "peak_rss_mb")
    stop_point = "this batch"

    loss = staticmethod(softmax_cross_entropy)

    # -- data -----------------------------------------------------------------------
    def pair(self, x: Array, labels: Any, rng: np.random.Generator,
             xp: Any) -> Tuple[Array, Array]:
        """``(input, target)`` of a training batch from its float images ``x``."""
        return x, xp.asarray(labels)

    def correct(self, outputs: Array, target: Array) -> int:
        """Correctly classified samples of a batch (0 for soft labels)."""
        return int((outputs.argmax(axis=1) == target).sum()) if target.ndim == 1 else 0

    # -- metrics --------------------------------------------------------------------
    def train_metrics(self, running: Dict[str, Any]) -> Dict[str, float]:
        seen = max(running["seen"], 1)
        return {"train_loss": running["loss_sum"] / seen,
                "train_acc": running["correct"] / seen}

    def progress_text(self, running: Dict[str, Any]) -> str:
        seen = max(running["seen"], 1)
        return f"loss {running['loss_sum'] / seen:.4f} acc {running['correct'] / seen:.4f}"

    def evaluate(self, model: Sequential, images: Any, labels: Any = None,
                 batch_size: Optional[int] = None, classes: Optional[int] = None,
                 seed: int = 0) -> Dict[str, Any]:
        return evaluate(model, images, labels, batch_size or self.eval_batch_size, classes)

    def test_metrics(self, result: Dict[str, Any]) -> Dict[str, float]:
        return {"test_loss": result["loss"], "test_acc": result["accuracy"]}

    def epoch_line(self, m: Dict[str, Any]) -> str:
        return (f"train loss {m['train_loss']:.4f} acc {m['train_acc']:.4f} | test loss "
                f"{m['test_loss']:.4f} acc {m['test_acc']:.4f} | "
                f"{m['images_per_s']:,.0f} img/s")

    def summary(self, history: List[Dict[str, Any]], test_size: int) -> str:
        best = max(m["test_acc"] for m in history)
        return f"final test accuracy {history[-1]['test_acc']:.4f} (best {best:.4f})"


class DenoisingTask(Task):
    """Noisy images -> clean images, mean squared error; the labels are unused.

    The clean batch (augmented, if the trainer augments) gets
    ``clip(x + noise_std * N(0, 1), 0, 1)`` noise from the trainer's data generator,
    which also draws the shuffle. ``seeding="epoch"`` (``cnnfast train``) gives
    every epoch a generator of its own (``SeedSequence([seed, 4, epoch])``), so an
    epoch is reproducible from the seed alone; ``seeding="run"``
    (:func:`cnnfast.nn.encdec.train_denoiser`) seeds one generator with ``seed``
    for the whole run. The test noise comes from ``SeedSequence([seed, 5])``, the
    same every epoch, so the PSNRs compare.

    The schedule steps per epoch; a stop request ends training after the epoch in
    progress (a checkpoint resumes at an epoch boundary)."""

    name = "denoise"
    stops_mid_epoch = False
    schedule_per_batch = False
    eval_batch_size = 256
    FIELDS = ("epoch", "train_loss", "test_loss", "psnr_noisy", "psnr_denoised",
              "images_per_s", "train_time_s", "eval_time_s", "lr", "peak_rss_mb")
    stop_point = "this epoch (denoisers resume at epoch boundaries)"

    loss = staticmethod(mse)

    def __init__(self, noise_std: float = DEFAULT_NOISE, seeding: str = "epoch") -> None:
        noise_std = float(noise_std)
        if not (math.isfinite(noise_std) and noise_std >= 0):
            raise ValueError(f"noise_std={noise_std!r} must be a finite number >= 0")
        if seeding not in ("epoch", "run"):
            raise ValueError(f"seeding={seeding!r}: expected 'epoch' or 'run'")
        self.noise_std, self.seeding = noise_std, seeding

    def config(self) -> Dict[str, Any]:
        return {"noise_std": self.noise_std, **({"seeding": "run"} if self.seeding == "run"
                                                else {})}

    def data_rng(self, seed: int) -> np.random.Generator:
        return np.random.default_rng(int(seed)) if self.seeding == "run" else \
            super().data_rng(seed)

    def epoch_seed(self, seed: int, epoch: int) -> Optional[int]:
        if self.seeding == "run":
            return None
        return int(np.random.SeedSequence([int(seed), 4, int(epoch)]).generate_state(1)[0])

    def test_seed(self, seed: int) -> int:
        return int(np.random.SeedSequence([int(seed), 5]).generate_state(1)[0])

    def to_float(self, images: Any, model: Sequential) -> Array:
        return as_float(images, model.dtype, model.xp)

    def pair(self, x: Array, labels: Any, rng: np.random.Generator,
             xp: Any) -> Tuple[Array, Array]:
        return add_noise(x, self.noise_std, rng), x

    def correct(self, outputs: Array, target: Array) -> int:
        return 0

    def train_metrics(self, running: Dict[str, Any]) -> Dict[str, float]:
        return {"train_loss": running["loss_sum"] / max(running["seen"], 1)}

    def progress_text(self, running: Dict[str, Any]) -> str:
        return f"loss {running['loss_sum'] / max(running['seen'], 1):.5f}"

    def evaluate(self, model: Sequential, images: Any, labels: Any = None,
                 batch_size: Optional[int] = None, classes: Optional[int] = None,
                 seed: int = 0) -> Dict[str, Any]:
        return evaluate_denoiser(model, images, self.noise_std, seed=self.test_seed(seed),
                                 batch_size=batch_size or self.eval_batch_size)

    def test_metrics(self, result: Dict[str, Any]) -> Dict[str, float]:
        return {"test_loss": result["mse_denoised"], "psnr_noisy": result["psnr_noisy"],
                "psnr_denoised": result["psnr_denoised"]}

    def describe(self) -> str:
        return f"noise std {self.noise_std:g}"

    def epoch_line(self, m: Dict[str, Any]) -> str:
        return (f"train loss {m['train_loss']:.5f} | test loss {m['test_loss']:.5f} | "
                f"PSNR noisy {m['psnr_noisy']:.2f} dB -> denoised "
                f"{m['psnr_denoised']:.2f} dB | {m['images_per_s']:,.0f} img/s")

    def summary(self, history: List[Dict[str, Any]], test_size: int) -> str:
        last = history[-1]
        best = max(m["psnr_denoised"] for m in history)
        return (f"test PSNR noisy {last['psnr_noisy']:.2f} dB -> denoised "
                f"{last['psnr_denoised']:.2f} dB (best {best:.2f} dB) on {test_size} "
                f"images, noise std {self.noise_std:g}")


def make_task(name: str = "classify", **config: Any) -> Task:
    """The task named ``name`` (``TASK_NAMES``) with its ``config()`` keywords."""
    if name == "classify":
        if config:
            raise ValueError(f"the classify task takes no options, got {sorted(config)}")
        return ClassificationTask()
    if name == "denoise":
        return DenoisingTask(**config)
    raise ValueError(f"task {name!r}: expected one of {', '.join(TASK_NAMES)}")
