"""Data-parallel training: ``DistributedStep`` (the gradient allreduce),
``DistributedTrainer`` (``cnnfast.nn.training.Trainer`` over a communicator) and
``distributed_evaluate``.

Every rank builds the same model; rank 0's parameters (and buffers and training
state) are broadcast before the first step. Every step, each rank takes its slice
of the *global* batch (the same seeded permutation on every rank, each global batch
of ``batch_size`` split into ``size`` near-equal slices by
``sharding.local_slice``), computes the gradient of its slice, and one allreduce
sums the weighted gradients: rank ``r`` scales its (mean over its ``n_r`` samples)
gradient by ``n_r / n_global`` first, so the sum is the gradient of the mean loss
over the global batch -- exactly what one process computes for the whole batch,
also for a last batch that does not split evenly. The same allreduce carries the
step's loss sum, correct count and a stop flag (so a Ctrl-C seen by one rank stops
every rank after the same step).

Not covered: BatchNorm uses each rank's batch statistics (no synchronised
BatchNorm; running statistics are averaged before evaluation); dropout masks come
from the same generator on every rank.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np

from ..nn.model import Sequential
from ..nn.optim import Optimizer, Schedule
from ..nn.training import Trainer, evaluate
from .comm import Communicator, SingleProcessComm
from .flat import (average_buffers, broadcast_parameters, flatten_grads, grad_layout,
                   unflatten_into)
from .sharding import local_slice


class DistributedStep:
    """The data-parallel update: after ``model.backward`` on this rank's slice,
    ``reduce(n_local, n_global)`` makes every rank's ``grads`` the gradient of the
    global batch's mean loss with one allreduce; then ``optimizer.step(model)``.

    ``comm_time`` (seconds spent in the allreduce, cumulated) and ``steps`` let
    callers report the share of a step spent communicating.
    """

    EXTRA = 3  # loss sum, correct count, stop flag

    def __init__(self, model: Sequential, comm: Communicator) -> None:
        self.model, self.comm = model, comm
        self._buf: Any = None
        self.comm_time = 0.0
        self.steps = 0

    def reduce(self, n_local: int, n_global: int, loss: float = 0.0, correct: int = 0,
               stop: bool = False) -> Tuple[float, int, bool]:
        """Allreduce the weighted gradients with the step's statistics; returns
        ``(global mean loss, global correct count, stop flag of any rank)``."""
        if n_global < 1 or not 0 <= n_local <= n_global:
            raise ValueError(f"n_local={n_local}, n_global={n_global}: need "
                             f"0 <= n_local <= n_global and n_global >= 1")
        _, total = grad_layout(self.model)
        if self._buf is None or self._buf.shape[0] != total + self.EXTRA:
            self._buf = None
        buf = flatten_grads(self.model, self._buf, extra=self.EXTRA,
                            scale=n_local / n_global)
        self._buf = buf
        extras = np.array([loss * n_local, correct, 1.0 if stop else 0.0], buf.dtype)
        buf[total:] = extras if isinstance(buf, np.ndarray) else \
            self.model.xp.asarray(extras)
        t0 = time.perf_counter()
        self.comm.allreduce_sum(buf)
        if not isinstance(buf, np.ndarray):
            self.model.xp.cuda.get_current_stream().synchronize()  # honest timing
        self.comm_time += time.perf_counter() - t0
        self.steps += 1
        unflatten_into(self.model, buf)
        tail = buf[total:]
        tail = tail if isinstance(tail, np.ndarray) else tail.get()
        return float(tail[0]) / n_global, int(round(float(tail[1]))), bool(tail[2] > 0)


# ----------------------------------------------------------------------------- trainer


class DistributedTrainer(Trainer):
    """Data-parallel ``cnnfast.nn.training.Trainer`` over ``comm``: the global batch
    (``batch_size``, drawn from the same seeded permutation as the single-process
    trainer) is split over the ranks; the loss, accuracy and images/s it reports are
    global. With one rank it computes what ``Trainer`` computes. Before the first
    epoch, rank 0's weights, buffers and training state are broadcast (ranks that
    were initialised or resumed differently still start identical).

    ``stop_requested`` set on any rank (a SIGINT handler) stops every rank after the
    same step: the flag travels in the gradient allreduce. Only rank 0 draws the
    progress bar.
    """

    def __init__(self, model: Sequential, optimizer: Optimizer,
                 schedule: Optional[Schedule] = None, batch_size: int = 64, seed: int = 0,
                 comm: Optional[Communicator] = None, **kwargs: Any) -> None:
        self.comm = comm if comm is not None else SingleProcessComm()
        self.step_impl = DistributedStep(model, self.comm)
        self._stop_local = False
        self._stop_agreed = False
        self._synced = False
        super().__init__(model, optimizer, schedule, batch_size, seed, **kwargs)

    # Reads see only the flag agreed through the last allreduce (the same on every
    # rank); writes (the signal handler) record a local request.
    @property
    def stop_requested(self) -> bool:
        return self._stop_agreed

    @stop_requested.setter
    def stop_requested(self, value: bool) -> None:
        self._stop_local = bool(value)
        if not value:
            self._stop_agreed = False

    def sync_from_root(self) -> None:
        """Broadcast rank 0's weights, buffers and training state to every rank."""
        broadcast_parameters(self.model, self.comm)
        state = self.comm.bcast_object(self.state() if self.comm.rank == 0 else None)
        self.restore(state)
        self._synced = True

    def train_step(self, x: Any, y: Any) -> Tuple[float, int]:
        """Forward and backward on this rank's slice of the global batch ``(x, y)``,
        one allreduce, update; returns the global (mean loss, correct count)."""
        n = int(x.shape[0])
        lo, hi = local_slice(n, self.comm.rank, self.comm.size)
        model = self.model
        loss, correct = 0.0, 0
        if hi > lo:
            xs, ys = x[lo:hi], y[lo:hi]
            logits = model.forward(xs, training=True)
            loss, grad = self.loss(logits, ys)
            model.backward(grad)
            correct = int((logits.argmax(axis=1) == ys).sum()) if ys.ndim == 1 else 0
        loss, correct, stop = self.step_impl.reduce(hi - lo, n, loss, correct,
                                                    self._stop_local)
        self._stop_agreed = self._stop_agreed or stop
        self.optimizer.step(model)
        return loss, correct

    def train_epoch(self, images: Any, labels: Any = None, progress: bool = True,
                    stream: Any = None,
                    on_step: Optional[Callable[[int, int, float], Any]] = None
                    ) -> Dict[str, Any]:
        if not self._synced:
            self.sync_from_root()
        return super().train_epoch(images, labels,
                                   progress=progress and self.comm.rank == 0, stream=stream,
                                   on_step=on_step)

    def evaluate(self, images: Any, labels: Any = None, batch_size: Optional[int] = None,
                 classes: Optional[int] = None) -> Dict[str, Any]:
        """Each rank evaluates its contiguous share of the set; the loss sum and the
        confusion matrix are summed over the ranks."""
        return distributed_evaluate(self.model, images, labels, self.comm,
                                    batch_size or self.task.eval_batch_size, classes)


def distributed_evaluate(model: Sequential, images: Any, labels: Any, comm: Communicator,
                         batch_size: int = 500,
                         classes: Optional[int] = None) -> Dict[str, Any]:
    """``cnnfast.nn.training.evaluate`` over the ranks: each rank takes a contiguous
    share; returns the same dict (global loss, accuracy, per-class, confusion)."""
    average_buffers(model, comm)
    n = len(images)
    lo, hi = local_slice(n, comm.rank, comm.size)
    if not classes:
        if model.output_shape is None:
            raise RuntimeError("the model is not built: pass input_shape or call build()")
        classes = int(model.output_shape[0])
    if hi > lo:
        part = evaluate(model, images[lo:hi], labels[lo:hi], batch_size, classes)
        confusion = part["confusion"].astype(np.float64)
        loss_sum = part["loss"] * (hi - lo)
    else:
        confusion = np.zeros((classes, classes), np.float64)
        loss_sum = 0.0
    flat = np.concatenate([confusion.reshape(-1), [loss_sum]])
    comm.allreduce_sum(flat)
    confusion = np.rint(flat[:-1]).astype(np.int64).reshape(classes, classes)
    total = max(n, 1)
    per_class = confusion.diagonal() / np.maximum(confusion.sum(axis=1), 1)
    return {"loss": float(flat[-1]) / total, "accuracy": float(confusion.trace() / total),
            "per_class": per_class.tolist(), "confusion": confusion}
