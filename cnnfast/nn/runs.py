"""Training runs: what ``cnnfast train`` does between reading its options and
exiting, for classifiers and denoisers alike.

* :func:`build_model`: the models ``cnnfast train --model`` knows, by name, and
  :func:`task_of_model`, the task each one learns;
* :class:`TrainingRun`: a ``Trainer`` (``cnnfast.nn.training``) with what its
  checkpoint records besides the trainer's state -- the one checkpoint schema of
  both tasks (below), written by :meth:`TrainingRun.save` and continued by
  :meth:`TrainingRun.resume`;
* :func:`fit`: the epoch loop -- train, evaluate, append the epoch to
  ``metrics.jsonl``, checkpoint (atomically), and on Ctrl-C stop where the task
  allows (after the batch for classifiers, after the epoch for denoisers), save
  and report; a second Ctrl-C aborts at once.

The checkpoint's ``extra`` metadata (``cnnfast.nn.checkpoint``), schema 2::

    {"schema": 2, "task": "classify" | "denoise", "model": "cnn" | "dense" | ...,
     "trainer": Trainer.state(), "data": {"train_size": N, "limit": L | null},
     "seed": S, "augment": SPEC | null,
     "noise_std": STD}                  # the denoise task's config (DenoisingTask)

Older checkpoints (no ``schema``; :func:`upgrade_extra` reads them): a classifier's
has no ``task`` and ``model`` (its task follows from the model's shapes, its name is
the model's); a denoiser's trainer state has no ``batch``, ``running`` and
``epoch_rng_state`` (it stopped at an epoch boundary; its epochs are seeded from
the run's seed).
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from typing import Any, Callable, Dict, List, Optional

from .checkpoint import PathLike, save_checkpoint
from .encdec import ENCDEC_MODELS, build_encdec, is_encdec
from .model import Sequential
from .optim import Optimizer, make_schedule
from .tasks import DEFAULT_NOISE, ClassificationTask, DenoisingTask, Task
from .training import MODELS, Trainer

SCHEMA = 2
CHECKPOINT = "checkpoint.npz"
METRICS = "metrics.jsonl"


# ----------------------------------------------------------------------------- models


def task_of_model(name: str) -> str:
    """``"classify"`` for ``MODELS`` (cnn, dense), ``"denoise"`` for the
    encoder-decoders (autoencoder, unet)."""
    if name in MODELS:
        return "classify"
    if name in ENCDEC_MODELS:
        return "denoise"
    raise ValueError(f"model {name!r}: expected one of "
                     f"{', '.join(tuple(MODELS) + ENCDEC_MODELS)}")


def build_model(name: str, seed: int = 0, dtype: Any = "float32",
                backend: Optional[str] = None) -> Sequential:
    """A new ``cnnfast train --model name`` model for 28x28 grey images."""
    if task_of_model(name) == "denoise":
        return build_encdec(name, seed=seed, dtype=dtype, backend=backend)
    return MODELS[name](seed=seed, dtype=dtype, backend=backend)


# ----------------------------------------------------------------------------- the schema


def checkpoint_task(extra: Dict[str, Any], model: Sequential) -> str:
    """The task a checkpoint's model learns: its ``task`` field, else (an older
    classifier, or a model saved without training metadata) ``"denoise"`` for an
    image-to-image model and ``"classify"`` otherwise."""
    task = extra.get("task")
    if task in ("classify", "denoise"):
        return task
    return "denoise" if is_encdec(model) else "classify"


def checkpoint_history(extra: Dict[str, Any]) -> List[Any]:
    """The epochs a checkpoint's training state records (``[]`` when it has none)."""
    trainer = extra.get("trainer")
    history = trainer.get("history") if isinstance(trainer, dict) else None
    return list(history) if isinstance(history, list) else []


def checkpoint_noise(extra: Dict[str, Any], default: float = DEFAULT_NOISE) -> float:
    """The noise std a denoiser checkpoint was trained with (``default`` when it
    records none); ValueError for a corrupt one."""
    noise = extra.get("noise_std", default)
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not (
            math.isfinite(noise) and noise >= 0):
        raise ValueError(f"corrupt noise_std {noise!r} in the checkpoint")
    return float(noise)


def upgrade_extra(extra: Dict[str, Any], model: Sequential) -> Dict[str, Any]:
    """A ``cnnfast train`` checkpoint's ``extra`` in the current schema (a new dict;
    older checkpoints are filled in, see the module docstring). ``KeyError`` when
    it holds no training state, ``TypeError``/``ValueError`` for a corrupt one."""
    state = extra["trainer"]
    if not isinstance(state, dict):
        raise TypeError(f"the training state is a {type(state).__name__}, not an object")
    task = checkpoint_task(extra, model)
    state = dict(state)
    if extra.get("schema") is None and task == "denoise":
        # Written by the former denoiser loop: saved at epoch boundaries only.
        state.setdefault("batch", 0)
        state.setdefault("running", {"loss_sum": 0.0, "correct": 0, "seen": 0,
                                     "time": 0.0})
        state.setdefault("epoch_rng_state", None)
    out = {"schema": SCHEMA, "task": task, "model": extra.get("model") or model.name,
           "trainer": state, "data": extra.get("data"), "seed": int(extra.get("seed", 0)),
           "augment": state.get("augment")}
    if task == "denoise" and "noise_std" in extra:
        out["noise_std"] = checkpoint_noise(extra)
    if "seeding" in extra:
        out["seeding"] = extra["seeding"]
    return out


def make_checkpoint_task(info: Dict[str, Any]) -> Task:
    """The task of an upgraded ``extra`` (``KeyError`` when a denoiser's has no
    noise std)."""
    if info["task"] == "denoise":
        return DenoisingTask(info["noise_std"], seeding=info.get("seeding", "epoch"))
    return ClassificationTask()


# ----------------------------------------------------------------------------- runs


class TrainingRun:
    """``trainer`` with what a checkpoint records besides its state: the model's
    name (``cnnfast train --model``), the training seed and the data it trains on
    (``{"train_size", "limit"}``; a resumed run must load as many images)."""

    def __init__(self, trainer: Trainer, model_name: Optional[str] = None,
                 seed: Optional[int] = None, data: Optional[Dict[str, Any]] = None) -> None:
        self.trainer = trainer
        self.model_name = model_name or trainer.model.name
        self.seed = int(trainer.seed if seed is None else seed)
        self.data = data

    @property
    def task(self) -> Task:
        """The trainer's task."""
        return self.trainer.task

    @property
    def model(self) -> Sequential:
        """The trainer's model."""
        return self.trainer.model

    def extra(self) -> Dict[str, Any]:
        """The checkpoint metadata (schema ``SCHEMA``)."""
        t = self.trainer
        return {"schema": SCHEMA, "task": t.task.name, "model": self.model_name,
                "trainer": t.state(), "data": self.data, "seed": self.seed,
                "augment": t.augment.spec if t.augment is not None else None,
                **t.task.config()}

    def save(self, path: PathLike) -> str:
        """Write the checkpoint (model, optimizer, :meth:`extra`) to ``path``
        atomically; returns the path written."""
        t = self.trainer
        return save_checkpoint(path, t.model, t.optimizer, self.extra())

    @classmethod
    def resume(cls, model: Sequential, optimizer: Optimizer, extra: Dict[str, Any],
               trainer: Callable[..., Trainer] = Trainer, **kwargs: Any) -> "TrainingRun":
        """The run a checkpoint (``load_checkpoint``'s three values) continues,
        with a trainer made by ``trainer(model, optimizer, schedule, batch_size=,
        seed=, task=, **kwargs)`` (e.g. a ``DistributedTrainer``). ``KeyError``,
        ``TypeError`` or ``ValueError`` for a missing or corrupt training state."""
        info = upgrade_extra(extra, model)
        state = info["trainer"]
        t = trainer(model, optimizer, make_schedule(state["schedule"]),
                    batch_size=int(state["batch_size"]), seed=info["seed"],
                    task=make_checkpoint_task(info), **kwargs)
        t.restore(state)  # rebuilds the checkpoint's augmentation
        data = info["data"] if isinstance(info["data"], dict) else None
        return cls(t, model_name=info["model"], seed=info["seed"], data=data)


# ----------------------------------------------------------------------------- the loop


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB (NaN where unknown)."""
    try:
        import resource
    except ImportError:  # not on POSIX
        return float("nan")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _install_sigint(handler: Callable[[int, Any], Any]) -> Any:
    try:
        return signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread: Ctrl-C handling is the caller's
        return None


def fit(run: TrainingRun, train_x: Any, train_y: Any, test_x: Any, test_y: Any, epochs: int,
        out: str, *, progress: bool = True, root: bool = True) -> str:
    """Train ``run`` until its trainer has ``epochs`` epochs, evaluating on the test
    set after each, and return ``"done"``, ``"interrupted"`` (Ctrl-C: stopped and
    saved, ``--resume`` continues) or ``"aborted"`` (a second Ctrl-C: the last
    checkpoint is the previous one).

    ``out`` receives ``metrics.jsonl`` (rewritten first from the run's history, so
    it follows the checkpoint; then one JSON object per epoch) and
    ``checkpoint.npz`` (after every epoch and on Ctrl-C). ``root`` false (a
    distributed rank but the first) writes no file. Prints a line per epoch and a
    summary on stdout, interrupts on stderr."""
    trainer, task = run.trainer, run.task
    ckpt_path = os.path.join(out, CHECKPOINT)
    metrics_path = os.path.join(out, METRICS)
    if root:
        with open(metrics_path, "w") as f:
            for m in trainer.history:
                f.write(json.dumps(m) + "\n")

    def save() -> None:
        if root:
            run.save(ckpt_path)

    def on_sigint(signum: int, frame: Any) -> None:
        trainer.stop_requested = True
        print(f"\ninterrupt: stopping after {task.stop_point} and saving a checkpoint "
              f"(Ctrl-C again to abort without saving)", file=sys.stderr)
        signal.signal(signal.SIGINT, signal.default_int_handler)

    start_epoch = trainer.epoch
    previous = _install_sigint(on_sigint)
    try:
        while trainer.epoch < epochs:
            metrics = trainer.train_epoch(train_x, train_y, progress=progress)
            if metrics.get("interrupted"):
                save()
                print(f"saved {ckpt_path} (epoch {trainer.epoch + 1}, batch "
                      f"{trainer.batch}); continue with --resume")
                return "interrupted"
            t0 = time.perf_counter()
            result = trainer.evaluate(test_x, test_y)
            metrics.update(task.test_metrics(result), eval_time_s=time.perf_counter() - t0,
                           peak_rss_mb=peak_rss_mb())
            # The task's order of the keys (then any a trainer subclass adds).
            metrics = {**{k: metrics[k] for k in task.FIELDS if k in metrics}, **metrics}
            trainer.history.append(metrics)
            save()
            if root:
                with open(metrics_path, "a") as f:
                    f.write(json.dumps(metrics) + "\n")
            print(f"epoch {metrics['epoch']}/{epochs}: {task.epoch_line(metrics)}",
                  flush=True)
            if trainer.stop_requested:
                print(f"saved {ckpt_path} after epoch {trainer.epoch}; continue with "
                      f"--resume")
                return "interrupted"
    except KeyboardInterrupt:
        print("aborted; the last checkpoint is the previous one", file=sys.stderr)
        return "aborted"
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if trainer.epoch > start_epoch:
        print(f"done: {task.summary(trainer.history, len(test_x))}; checkpoint "
              f"{ckpt_path}; peak RSS {peak_rss_mb():,.0f} MB")
    else:
        print(f"nothing to do: the checkpoint already has {trainer.epoch} epochs")
    return "done"
