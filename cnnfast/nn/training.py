"""The training loop: mini-batch training and evaluation of any task
(``cnnfast.nn.tasks``: classifiers, denoisers), with a state that a checkpoint
captures exactly (weights, optimizer, the RNGs, position in the epoch), so that an
interrupted or resumed run continues bit for bit where it stopped.

Two generators: the model's (initial weights, then dropout masks) and the data
one (the per-epoch shuffle, and a denoiser's noise). The data generator's state is
recorded at the start of each epoch (a task may instead seed each epoch's
generator itself); resuming mid-epoch restores it and redraws the same
permutation. An optional augmentation pipeline (``cnnfast.augment``) has a third
generator; its state is recorded after every batch (the batches already trained
are not redrawn on resume, so the next batch continues its sequence).

The epoch loop around it (evaluation, metrics file, checkpoints, Ctrl-C) is
``cnnfast.nn.runs``.
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import (TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Sequence,
                    Tuple, Type)

import numpy as np

from . import layers as L
from .base import Array
from .data import to_float  # noqa: F401  (part of this module's namespace)
from .losses import softmax_cross_entropy  # noqa: F401
from .model import Sequential
from .optim import Optimizer, Schedule
# evaluate is the classifiers' evaluation (defined with the tasks; public here too).
from .tasks import ClassificationTask, Task, evaluate  # noqa: F401

if TYPE_CHECKING:
    from ..augment import Pipeline


# ----------------------------------------------------------------------------- models


def cnn_model(input_shape: Sequence[int] = (1, 28, 28), classes: int = 10, seed: int = 0,
              dtype: Any = "float32", backend: Optional[str] = None) -> Sequential:
    """Conv 64 3x3 -> ReLU -> MaxPool 2 -> Conv 64 3x3 -> ReLU -> MaxPool 2 ->
    Flatten -> Dense 128 -> ReLU -> Dense ``classes``."""
    return Sequential([
        L.Conv2d(64, 3), L.ReLU(), L.MaxPool2d(2),
        L.Conv2d(64, 3), L.ReLU(), L.MaxPool2d(2),
        L.Flatten(), L.Dense(128), L.ReLU(), L.Dense(classes),
    ], input_shape, seed=seed, dtype=dtype, backend=backend, name="cnn")


def dense_model(input_shape: Sequence[int] = (1, 28, 28), classes: int = 10, seed: int = 0,
                dtype: Any = "float32", backend: Optional[str] = None) -> Sequential:
    """Flatten -> Dense 128 -> ReLU -> Dense ``classes``."""
    return Sequential([L.Flatten(), L.Dense(128), L.ReLU(), L.Dense(classes)],
                      input_shape, seed=seed, dtype=dtype, backend=backend, name="dense")


# The classifiers.
MODELS: Dict[str, Callable[..., Sequential]] = {"cnn": cnn_model, "dense": dense_model}


def augment_seed(seed: int) -> int:
    """The augmentation pipeline's seed for training seed ``seed`` (a stream
    independent of the weight, shuffle and noise generators)."""
    return int(np.random.SeedSequence([int(seed), 3]).generate_state(1)[0])


# ----------------------------------------------------------------------------- progress


def _tqdm_class() -> Optional[Type[Any]]:
    """``tqdm.auto.tqdm`` (a widget in a notebook, a text bar elsewhere), or None when
    tqdm is not installed."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm


def progress_disabled() -> bool:
    """True when the environment asks for no progress bars: ``TQDM_DISABLE`` set to
    anything but empty, 0, false, no or off (tqdm's own switch, honoured by the
    built-in bar too)."""
    value = os.environ.get("TQDM_DISABLE", "").strip().lower()
    return value not in ("", "0", "false", "no", "off")


class Progress:
    """Progress of ``total`` steps on ``stream`` (default stderr).

    With tqdm installed, tqdm's bar (rate, ETA, a widget in Jupyter, its ``TQDM_*``
    environment variables); without it, a small built-in bar: redrawn in place on a
    terminal (at most ten times a second), a line per tenth of the total otherwise
    (logs stay short). ``TQDM_DISABLE=1`` silences either. ``bar``: ``"auto"``
    (tqdm when installed), ``"tqdm"`` or ``"builtin"``. ``initial``: the steps
    already done (a resumed epoch), so the rate and ETA count only new ones.
    ``write(msg)`` prints a line without breaking the bar; ``kind`` says which bar
    draws ("tqdm" or "builtin")."""

    def __init__(self, total: int, desc: str = "", stream: Any = None, width: int = 24, *,
                 unit: str = "batch", initial: int = 0, bar: str = "auto") -> None:
        if bar not in ("auto", "tqdm", "builtin"):
            raise ValueError(f"bar={bar!r}: expected 'auto', 'tqdm' or 'builtin'")
        self.total, self.desc, self.width = max(int(total), 1), desc, width
        self.stream = stream if stream is not None else sys.stderr
        self.disabled = progress_disabled()
        tqdm = None if bar == "builtin" else _tqdm_class()
        if bar == "tqdm" and tqdm is None:
            raise ImportError("bar='tqdm' needs tqdm: pip install tqdm")
        self.kind = "builtin" if tqdm is None else "tqdm"
        self._bar = None
        if tqdm is not None:
            self._bar = tqdm(total=self.total, desc=desc or None, file=self.stream,
                             unit=unit, initial=int(initial), dynamic_ncols=True,
                             leave=True, disable=self.disabled)
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last_draw = 0.0
        self._last_decile = -1
        self._line = ""  # the built-in bar as last drawn on a terminal
        self._closed = False

    def update(self, done: int, text: str = "", final: bool = False) -> None:
        """``done`` steps of ``total`` so far; ``text``: the figures to show beside
        the bar; ``final``: the last update (the bar is closed)."""
        if self._closed:
            return
        if self._bar is not None:
            if text:
                self._bar.set_postfix_str(text, refresh=False)
            self._bar.update(int(done) - self._bar.n)
            if final:
                self.close()
            return
        if self.disabled:
            self._closed = final
            return
        frac = min(done / self.total, 1.0)
        now = time.perf_counter()
        if self.tty:
            if not final and now - self._last_draw < 0.1:
                return
            self._last_draw = now
            fill = int(frac * self.width)
            bar = "#" * fill + "." * (self.width - fill)
            self._line = f"{self.desc} [{bar}] {done}/{self.total} {text}"
            self.stream.write(f"\r{self._line}\x1b[K")
            if final:
                self.stream.write("\n")
                self._line, self._closed = "", True
        else:
            decile = int(frac * 10)
            if decile == self._last_decile and not final:
                return
            self._closed = final
            if final and decile == self._last_decile == 10:
                return
            self._last_decile = decile
            self.stream.write(f"{self.desc} {done}/{self.total} {text}\n")
        self.stream.flush()

    def write(self, msg: str) -> None:
        """Print the line ``msg`` above the bar (shown even when bars are disabled)."""
        if self._bar is not None:
            self._bar.write(msg, file=self.stream)
            return
        if self.tty and self._line:
            self.stream.write(f"\r\x1b[K{msg}\n{self._line}")
        else:
            self.stream.write(msg + "\n")
        self.stream.flush()

    def close(self) -> None:
        """End the bar (a newline after a built-in bar left unfinished)."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self.tty and self._line:
            self.stream.write("\n")
            self.stream.flush()


# ----------------------------------------------------------------------------- trainer


class Trainer:
    """Mini-batch training of ``model`` with ``optimizer`` under ``schedule``, for
    ``task`` (default: a ``ClassificationTask``; see ``cnnfast.nn.tasks``).

    ``images`` are uint8 (N, C, H, W) scaled per batch to the model dtype in
    [0, 1]; ``labels`` int (N,) (None for a denoiser). Set ``stop_requested = True``
    (e.g. from a SIGINT handler) to end the epoch after the current batch (the
    task's ``stops_mid_epoch``; else after the epoch); ``train_epoch`` then returns
    early and ``epoch``/``batch`` say where it stopped. ``loss`` replaces the
    task's loss.

    ``augment`` (a ``cnnfast.augment.Pipeline``, optional) transforms every float
    training batch (never evaluation batches; a denoiser's clean batch, before
    the noise); its generator state is part of :meth:`state`, so a resumed run
    draws the same augmentations.
    """

    def __init__(self, model: Sequential, optimizer: Optimizer,
                 schedule: Optional[Schedule] = None, batch_size: int = 64, seed: int = 0,
                 loss: Optional[Callable[[Array, Array], Tuple[float, Array]]] = None,
                 augment: Optional[Pipeline] = None, *, task: Optional[Task] = None
                 ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} must be positive")
        if augment is not None and not all(hasattr(augment, a) for a in
                                           ("__call__", "spec", "get_state", "set_state")):
            raise TypeError(f"augment={augment!r} must be a cnnfast.augment.Pipeline")
        self.task: Task = task if task is not None else ClassificationTask()
        self.model, self.optimizer = model, optimizer
        self.loss = loss if loss is not None else self.task.loss
        # An empty pipeline is no augmentation (and records none).
        self.augment: Optional[Pipeline] = (augment if augment is not None and augment.spec
                                            else None)
        self.schedule = schedule or Schedule(optimizer.lr)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.data_rng = self.task.data_rng(self.seed)
        self.epoch = 0  # the epoch in progress (or next)
        self.batch = 0  # the next batch within it
        # None where the task seeds each epoch's generator itself.
        self._epoch_rng_state: Optional[Mapping[str, Any]] = (
            None if self._reseeds() else self.data_rng.bit_generator.state)
        self.running: Dict[str, Any] = {"loss_sum": 0.0, "correct": 0, "seen": 0,
                                        "time": 0.0}
        self.history: List[Dict[str, Any]] = []
        self.stop_requested = False

    def _reseeds(self) -> bool:
        return self.task.epoch_seed(self.seed, self.epoch) is not None

    # -- state ----------------------------------------------------------------------
    def state(self) -> Dict[str, Any]:
        """JSON-able training state (everything but weights and optimizer arrays)."""
        return {"epoch": self.epoch, "batch": self.batch,
                "epoch_rng_state": _jsonable_state(self._epoch_rng_state),
                "model_rng_state": _jsonable_state(self.model.rng.bit_generator.state),
                "running": dict(self.running), "history": list(self.history),
                "batch_size": self.batch_size, "schedule": self.schedule.config(),
                "augment": self.augment.spec if self.augment is not None else None,
                "augment_state": (_jsonable_state(self.augment.get_state())
                                  if self.augment is not None else None)}

    def restore(self, state: Dict[str, Any]) -> None:
        """Continue from ``state`` (see :meth:`state`). A state with augmentation
        builds the pipeline from its spec when this trainer has none."""
        spec = state.get("augment")
        if spec and self.augment is None:
            from ..augment import pipeline_from_spec

            self.augment = pipeline_from_spec(spec)
        elif not spec and self.augment is not None:
            raise ValueError(f"the state has no augmentation but this trainer has "
                             f"{self.augment.spec!r}")
        elif spec and self.augment is not None and self.augment.spec != spec:
            raise ValueError(f"the state's augmentation {spec!r} differs from this "
                             f"trainer's {self.augment.spec!r}")
        epoch, batch = int(state["epoch"]), int(state["batch"])
        if batch and not self.task.stops_mid_epoch:
            raise ValueError(f"batch {batch}: a {self.task.name} run resumes at epoch "
                             f"boundaries")
        self.epoch, self.batch = epoch, batch
        # train_epoch restores it (a task that seeds every epoch needs none).
        self._epoch_rng_state = None if self._reseeds() else state["epoch_rng_state"]
        self.model.rng.bit_generator.state = state["model_rng_state"]
        if self.augment is not None:
            self.augment.set_state(state["augment_state"])
        self.running = dict(state["running"])
        self.history = list(state["history"])

    # -- one step -------------------------------------------------------------------
    def train_step(self, x: Array, y: Array) -> Tuple[float, int]:
        """Forward, loss, backward, update; returns (loss, correct count)."""
        outputs = self.model.forward(x, training=True)
        loss, grad = self.loss(outputs, y)
        self.model.backward(grad)
        self.optimizer.step(self.model)
        return loss, self.task.correct(outputs, y)

    def train_epoch(self, images: Any, labels: Any = None, progress: bool = True,
                    stream: Any = None,
                    on_step: Optional[Callable[[int, int, float], Any]] = None
                    ) -> Dict[str, Any]:
        """Train the rest of epoch ``self.epoch``; returns its metrics (or a partial
        result with ``"interrupted": True`` when ``stop_requested`` is set).
        ``on_step(batch, batches, loss)`` is called after every step."""
        xp, model, task = self.model.xp, self.model, self.task
        n = len(images)
        nb = math.ceil(n / self.batch_size)
        # The permutation comes from the state at the start of the epoch, so a
        # mid-epoch resume redraws the same one.
        seed = task.epoch_seed(self.seed, self.epoch)
        if seed is None:
            # Recorded whenever the task does not seed its epochs itself.
            assert self._epoch_rng_state is not None
            self.data_rng.bit_generator.state = self._epoch_rng_state
        else:
            self.data_rng = np.random.default_rng(seed)
        perm = self.data_rng.permutation(n)
        bar = (Progress(nb, f"epoch {self.epoch + 1}", stream, initial=self.batch)
               if progress else None)
        start = time.perf_counter()
        base_time = self.running["time"]
        while self.batch < nb:
            if self.stop_requested and task.stops_mid_epoch:
                self.running["time"] = base_time + time.perf_counter() - start
                if bar:
                    bar.close()
                return {"interrupted": True}
            idx = np.sort(perm[self.batch * self.batch_size:(self.batch + 1) * self.batch_size])
            x = task.to_float(images[idx], model)
            if self.augment is not None:
                x = self.augment(x)
            x, y = task.pair(x, None if labels is None else labels[idx], self.data_rng, xp)
            self.optimizer.lr = self.schedule(self.epoch + self.batch / nb
                                              if task.schedule_per_batch else self.epoch)
            loss, correct = self.train_step(x, y)
            r = self.running
            r["loss_sum"] += loss * len(idx)
            r["correct"] += correct
            r["seen"] += len(idx)
            self.batch += 1
            if on_step is not None:
                on_step(self.batch, nb, loss)
            if bar:
                elapsed = base_time + time.perf_counter() - start
                bar.update(self.batch, f"{task.progress_text(r)} "
                                       f"{r['seen'] / max(elapsed, 1e-9):,.0f} img/s",
                           final=self.batch == nb)
        r = self.running
        elapsed = base_time + time.perf_counter() - start
        metrics = {"epoch": self.epoch + 1, **task.train_metrics(r),
                   "images_per_s": r["seen"] / max(elapsed, 1e-9), "train_time_s": elapsed,
                   "lr": self.optimizer.lr}
        # Epoch boundary: the next epoch starts from the generator as it is now.
        self.epoch += 1
        self.batch = 0
        self._epoch_rng_state = (None if self._reseeds() else
                                 self.data_rng.bit_generator.state)
        self.running = {"loss_sum": 0.0, "correct": 0, "seen": 0, "time": 0.0}
        return metrics

    def evaluate(self, images: Any, labels: Any = None, batch_size: Optional[int] = None,
                 classes: Optional[int] = None) -> Dict[str, Any]:
        """The task's evaluation of the model (classifiers: :func:`evaluate`, by
        batches of 500; denoisers: ``evaluate_denoiser`` with the run's test noise)."""
        return self.task.evaluate(self.model, images, labels, batch_size=batch_size,
                                  classes=classes, seed=self.seed)


def _jsonable_state(state: Any) -> Any:
    """A bit-generator state dict with numpy scalars/arrays made JSON-able."""
    if isinstance(state, dict):
        return {k: _jsonable_state(v) for k, v in state.items()}
    if isinstance(state, np.ndarray):
        return state.tolist()
    if isinstance(state, np.integer):
        return int(state)
    return state
