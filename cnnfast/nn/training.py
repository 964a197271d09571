"""The training loop: mini-batch training and evaluation, with a state that a
checkpoint captures exactly (weights, optimizer, both RNGs, position in the epoch),
so that an interrupted or resumed run continues bit for bit where it stopped.

Two generators: the model's (initial weights, then dropout masks) and the data
one (the per-epoch shuffle). The data generator's state is recorded at the start
of each epoch; resuming mid-epoch restores it and redraws the same permutation.
An optional augmentation pipeline (``cnnfast.augment``) has a third generator; its
state is recorded after every batch (the batches already trained are not
redrawn on resume, so the next batch continues its sequence).
"""

from __future__ import annotations

import math
import sys
import time
from typing import Callable, Optional

import numpy as np

from . import layers as L
from .data import to_float
from .losses import softmax_cross_entropy
from .model import Sequential
from .optim import Schedule


# ----------------------------------------------------------------------------- models


def cnn_model(input_shape=(1, 28, 28), classes=10, seed=0, dtype="float32", backend=None):
    """Conv 64 3x3 -> ReLU -> MaxPool 2 -> Conv 64 3x3 -> ReLU -> MaxPool 2 ->
    Flatten -> Dense 128 -> ReLU -> Dense ``classes``."""
    return Sequential([
        L.Conv2d(64, 3), L.ReLU(), L.MaxPool2d(2),
        L.Conv2d(64, 3), L.ReLU(), L.MaxPool2d(2),
        L.Flatten(), L.Dense(128), L.ReLU(), L.Dense(classes),
    ], input_shape, seed=seed, dtype=dtype, backend=backend, name="cnn")


def dense_model(input_shape=(1, 28, 28), classes=10, seed=0, dtype="float32", backend=None):
    """Flatten -> Dense 128 -> ReLU -> Dense ``classes``."""
    return Sequential([L.Flatten(), L.Dense(128), L.ReLU(), L.Dense(classes)],
                      input_shape, seed=seed, dtype=dtype, backend=backend, name="dense")


MODELS = {"cnn": cnn_model, "dense": dense_model}  # the classifiers


def augment_seed(seed: int) -> int:
    """The augmentation pipeline's seed for training seed ``seed`` (a stream
    independent of the weight, shuffle and noise generators)."""
    return int(np.random.SeedSequence([int(seed), 3]).generate_state(1)[0])


# ----------------------------------------------------------------------------- progress


class Progress:
    """A small progress bar on stderr: redrawn in place on a terminal (at most ten
    times a second), a line per tenth of the epoch otherwise (logs stay short)."""

    def __init__(self, total: int, desc: str = "", stream=None, width: int = 24):
        self.total, self.desc, self.width = max(int(total), 1), desc, width
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last_draw = 0.0
        self._last_decile = -1

    def update(self, done: int, text: str = "", final: bool = False):
        frac = min(done / self.total, 1.0)
        now = time.perf_counter()
        if self.tty:
            if not final and now - self._last_draw < 0.1:
                return
            self._last_draw = now
            fill = int(frac * self.width)
            bar = "#" * fill + "." * (self.width - fill)
            self.stream.write(f"\r{self.desc} [{bar}] {done}/{self.total} {text}\x1b[K")
            if final:
                self.stream.write("\n")
        else:
            decile = int(frac * 10)
            if decile == self._last_decile and not final:
                return
            if final and decile == self._last_decile == 10:
                return
            self._last_decile = decile
            self.stream.write(f"{self.desc} {done}/{self.total} {text}\n")
        self.stream.flush()


# ----------------------------------------------------------------------------- trainer


class Trainer:
    """Mini-batch training of ``model`` with ``optimizer`` under ``schedule``.

    ``images`` are uint8 (N, C, H, W) scaled per batch to the model dtype in
    [0, 1]; ``labels`` int (N,). Set ``stop_requested = True`` (e.g. from a SIGINT
    handler) to end the epoch after the current batch; ``fit`` then returns early
    and ``position`` says where it stopped.

    ``augment`` (a ``cnnfast.augment.Pipeline``, optional) transforms every float
    training batch (never evaluation batches); its generator state is part of
    :meth:`state`, so a resumed run draws the same augmentations.
    """

    def __init__(self, model: Sequential, optimizer, schedule: Optional[Schedule] = None,
                 batch_size: int = 64, seed: int = 0, loss: Callable = softmax_cross_entropy,
                 augment=None):
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} must be positive")
        if augment is not None and not all(hasattr(augment, a) for a in
                                           ("__call__", "spec", "get_state", "set_state")):
            raise TypeError(f"augment={augment!r} must be a cnnfast.augment.Pipeline")
        self.model, self.optimizer, self.loss = model, optimizer, loss
        # An empty pipeline is no augmentation (and records none).
        self.augment = augment if augment is not None and augment.spec else None
        self.schedule = schedule or Schedule(optimizer.lr)
        self.batch_size = int(batch_size)
        self.data_rng = np.random.default_rng([int(seed), 1])
        self.epoch = 0  # the epoch in progress (or next)
        self.batch = 0  # the next batch within it
        self._epoch_rng_state = self.data_rng.bit_generator.state
        self.running = {"loss_sum": 0.0, "correct": 0, "seen": 0, "time": 0.0}
        self.history = []
        self.stop_requested = False

    # -- state ----------------------------------------------------------------------
    def state(self) -> dict:
        """JSON-able training state (everything but weights and optimizer arrays)."""
        return {"epoch": self.epoch, "batch": self.batch,
                "epoch_rng_state": _jsonable_state(self._epoch_rng_state),
                "model_rng_state": _jsonable_state(self.model.rng.bit_generator.state),
                "running": dict(self.running), "history": list(self.history),
                "batch_size": self.batch_size, "schedule": self.schedule.config(),
                "augment": self.augment.spec if self.augment is not None else None,
                "augment_state": (_jsonable_state(self.augment.get_state())
                                  if self.augment is not None else None)}

    def restore(self, state: dict):
        """Continue from ``state`` (see :meth:`state`). A state with augmentation
        builds the pipeline from its spec when this trainer has none."""
        spec = state.get("augment")
        if spec and self.augment is None:
            from ..augment import pipeline_from_spec

            self.augment = pipeline_from_spec(spec)
        elif not spec and self.augment is not None:
            raise ValueError(f"the state has no augmentation but this trainer has "
                             f"{self.augment.spec!r}")
        elif spec and self.augment.spec != spec:
            raise ValueError(f"the state's augmentation {spec!r} differs from this "
                             f"trainer's {self.augment.spec!r}")
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])
        self._epoch_rng_state = state["epoch_rng_state"]  # train_epoch restores it
        self.model.rng.bit_generator.state = state["model_rng_state"]
        if self.augment is not None:
            self.augment.set_state(state["augment_state"])
        self.running = dict(state["running"])
        self.history = list(state["history"])

    # -- one step -------------------------------------------------------------------
    def train_step(self, x, y):
        """Forward, loss, backward, update; returns (loss, correct count)."""
        logits = self.model.forward(x, training=True)
        loss, grad = self.loss(logits, y)
        self.model.backward(grad)
        self.optimizer.step(self.model)
        correct = int((logits.argmax(axis=1) == y).sum()) if y.ndim == 1 else 0
        return loss, correct

    def train_epoch(self, images, labels, progress: bool = True, stream=None) -> dict:
        """Train the rest of epoch ``self.epoch``; returns its metrics (or a partial
        result with ``"interrupted": True`` when ``stop_requested`` is set)."""
        xp, model = self.model.xp, self.model
        n = len(images)
        nb = math.ceil(n / self.batch_size)
        # The permutation comes from the state at the start of the epoch, so a
        # mid-epoch resume redraws the same one.
        self.data_rng.bit_generator.state = self._epoch_rng_state
        perm = self.data_rng.permutation(n)
        bar = Progress(nb, f"epoch {self.epoch + 1}", stream) if progress else None
        start = time.perf_counter()
        base_time = self.running["time"]
        while self.batch < nb:
            if self.stop_requested:
                self.running["time"] = base_time + time.perf_counter() - start
                return {"interrupted": True}
            idx = np.sort(perm[self.batch * self.batch_size:(self.batch + 1) * self.batch_size])
            x = to_float(images[idx], model.dtype, xp)
            if self.augment is not None:
                x = self.augment(x)
            y = xp.asarray(labels[idx])
            self.optimizer.lr = self.schedule(self.epoch + self.batch / nb)
            loss, correct = self.train_step(x, y)
            r = self.running
            r["loss_sum"] += loss * len(idx)
            r["correct"] += correct
            r["seen"] += len(idx)
            self.batch += 1
            if bar:
                elapsed = base_time + time.perf_counter() - start
                bar.update(self.batch, f"loss {r['loss_sum'] / r['seen']:.4f} "
                                       f"acc {r['correct'] / r['seen']:.4f} "
                                       f"{r['seen'] / max(elapsed, 1e-9):,.0f} img/s",
                           final=self.batch == nb)
        r = self.running
        elapsed = base_time + time.perf_counter() - start
        metrics = {"epoch": self.epoch + 1, "train_loss": r["loss_sum"] / max(r["seen"], 1),
                   "train_acc": r["correct"] / max(r["seen"], 1),
                   "images_per_s": r["seen"] / max(elapsed, 1e-9), "train_time_s": elapsed,
                   "lr": self.optimizer.lr}
        # Epoch boundary: the next epoch starts from the generator as it is now.
        self.epoch += 1
        self.batch = 0
        self._epoch_rng_state = self.data_rng.bit_generator.state
        self.running = {"loss_sum": 0.0, "correct": 0, "seen": 0, "time": 0.0}
        return metrics

    def evaluate(self, images, labels, batch_size: int = 500, classes: Optional[int] = None):
        return evaluate(self.model, images, labels, batch_size, classes)


def evaluate(model: Sequential, images, labels, batch_size: int = 500,
             classes: Optional[int] = None) -> dict:
    """Loss, accuracy and confusion matrix (rows: true class, columns: predicted)
    of ``model`` on uint8 ``images`` and int ``labels``."""
    if batch_size < 1:  # range() would silently skip every image
        raise ValueError(f"batch_size={batch_size!r} must be >= 1")
    xp = model.xp
    classes = classes or int(model.output_shape[0])
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


def _jsonable_state(state):
    """A bit-generator state dict with numpy scalars/arrays made JSON-able."""
    if isinstance(state, dict):
        return {k: _jsonable_state(v) for k, v in state.items()}
    if isinstance(state, np.ndarray):
        return state.tolist()
    if isinstance(state, np.integer):
        return int(state)
    return state
