"""Data-parallel training over MPI: a small communicator interface, the flattened
gradient buffer, shard arithmetic, a fail-fast guard, and ``DistributedTrainer``.

Launch::

    mpiexec -n 4 cnnfast train --distributed ...

Every rank builds the same model; rank 0's parameters (and buffers and training
state) are broadcast before the first step. Every step, each rank takes its slice
of the *global* batch (the same seeded permutation on every rank, each global batch
of ``batch_size`` split into ``size`` near-equal slices), computes the gradient of
its slice, and one allreduce sums the weighted gradients: rank ``r`` scales its
(mean over its ``n_r`` samples) gradient by ``n_r / n_global`` first, so the sum is
the gradient of the mean loss over the global batch -- exactly what one process
computes for the whole batch, also for a last batch that does not split evenly. The
same allreduce carries the step's loss sum, correct count and a stop flag (so a
Ctrl-C seen by one rank stops every rank after the same step).

Communicators (``Communicator`` is the interface):

* ``SingleProcessComm``: rank 0 of 1; every collective is the identity.
* ``MPIComm``: mpi4py. numpy buffers go to MPI directly. cupy buffers go to MPI
  directly when the MPI library is CUDA-aware (``MPIX_Query_cuda_support``, or
  ``CNNFAST_MPI_CUDA_AWARE=1``/``0`` to force it), else they are staged through host
  memory.
* ``NCCLComm``: cupy arrays through ``cupy.cuda.nccl`` (MPI only sets it up and
  carries Python objects); numpy buffers still go through MPI.

The GPU paths (CUDA-aware MPI, host staging of cupy arrays, NCCL) are written to the
mpi4py/cupy documentation but have NOT been run: no GPU was available where this was
written. The numpy paths are tested under ``mpiexec -n 2`` (tests/test_distributed_*).

Failure never hangs the job (``run_guarded``): a rank that raises (``sys.exit``
with a non-zero status and ``KeyboardInterrupt`` included) prints ``cnnfast: rank
R/N failed: ...`` with the traceback and calls ``MPI_Abort``, which ends every rank
-- without it the others would wait in their next collective forever. A rank that
*returns* waits at most ``$CNNFAST_EXIT_TIMEOUT`` seconds (120) for the others to
return too (a rank leaving the loop early would otherwise strand them), then aborts.
A rank killed by a signal is detected by the launcher: MPICH's Hydra and Open MPI's
mpirun both end the job with a message naming the signal (tested with both).

Not covered: a rank that hangs while alive (a deadlock inside a kernel) stalls the
job, as in any MPI program; BatchNorm uses each rank's batch statistics (no
synchronised BatchNorm; running statistics are averaged before evaluation);
dropout masks come from the same generator on every rank.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import sys
import time
import traceback
from typing import Callable, List, Optional

import numpy as np

from ..arrays import is_cupy_array
from ..nn.training import Trainer, evaluate

# Variables the common launchers set in each rank's environment.
_LAUNCHER_VARS = ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK",
                  "MPI_LOCALNRANKS", "HYDRA_CONTROL_FD")


def _check_buffer(buf, what="buffer"):
    if not (isinstance(buf, np.ndarray) or is_cupy_array(buf)):
        raise TypeError(f"{what} must be a numpy or cupy array, got {type(buf).__name__}")
    if not buf.flags.c_contiguous:
        raise ValueError(f"{what} must be C-contiguous (the collectives work in place)")
    if isinstance(buf, np.ndarray) and not buf.flags.writeable:
        raise ValueError(f"{what} must be writeable (the collectives work in place)")


# ------------------------------------------------------------------------- communicators


class Communicator:
    """What data-parallel training needs from a communicator. Every collective
    must be called by every rank, in the same order; array collectives work in
    place on a C-contiguous numpy (or, where supported, cupy) array and return it.

    Attributes: ``rank``, ``size``; ``local_rank``, ``local_size`` (ranks on this
    machine: for GPU and thread assignment); ``name``.
    """

    name = "abstract"
    rank = 0
    size = 1
    local_rank = 0
    local_size = 1

    def allreduce_sum(self, buf):
        raise NotImplementedError

    def allreduce_mean(self, buf):
        """``buf`` <- the mean of ``buf`` over the ranks (in place; floating dtypes)."""
        if buf.dtype.kind != "f":
            raise TypeError(f"allreduce_mean needs a floating buffer, got {buf.dtype}")
        self.allreduce_sum(buf)
        if self.size > 1:
            buf /= buf.dtype.type(self.size)
        return buf

    def bcast(self, buf, root: int = 0):
        """``buf`` <- root's ``buf`` (in place; same shape and dtype on every rank)."""
        raise NotImplementedError

    def bcast_object(self, obj, root: int = 0):
        """Root's picklable ``obj`` (every rank passes something; only root's counts)."""
        raise NotImplementedError

    def barrier(self) -> None:
        raise NotImplementedError

    def abort(self, code: int = 1) -> None:
        """End every rank of the job now (no cleanup); does not return."""
        raise NotImplementedError

    def exit_barrier(self, timeout: float) -> bool:
        """Wait until every rank calls this, at most ``timeout`` seconds; False on
        timeout. Independent of the other collectives (a rank still inside a
        training allreduce is not confused by it)."""
        raise NotImplementedError

    def _check_root(self, root):
        if not (isinstance(root, (int, np.integer)) and 0 <= root < self.size):
            raise ValueError(f"root={root!r} must be a rank in [0, {self.size})")

    def __repr__(self):
        return f"{type(self).__name__}(rank={self.rank}, size={self.size})"


class SingleProcessComm(Communicator):
    """One process: rank 0 of 1. Collectives return their input unchanged."""

    name = "single"

    def allreduce_sum(self, buf):
        _check_buffer(buf)
        return buf

    def bcast(self, buf, root=0):
        _check_buffer(buf)
        self._check_root(root)
        return buf

    def bcast_object(self, obj, root=0):
        self._check_root(root)
        return obj

    def barrier(self):
        return None

    def abort(self, code=1):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(int(code))

    def exit_barrier(self, timeout):
        return True


# Seconds between printing a failure and MPI_Abort (see MPIComm.abort).
ABORT_GRACE_S = 0.5


def _import_mpi():
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise RuntimeError(
            "distributed training needs mpi4py and an MPI library: "
            "pip install 'cnnfast[distributed]' mpich  (or: apt install mpich, "
            f"then pip install mpi4py) ({exc})") from exc
    return MPI


def mpi_cuda_aware(MPI=None) -> bool:
    """Whether the MPI library accepts device (CUDA) pointers. ``CNNFAST_MPI_CUDA_AWARE``
    (1/0) decides when set; else ``MPIX_Query_cuda_support()`` (Open MPI and MPICH
    export it) looked up through mpi4py's own extension module, whose handle reaches
    the libmpi it was loaded with; else False (stage through host memory: always
    correct, only slower)."""
    env = os.environ.get("CNNFAST_MPI_CUDA_AWARE", "").strip()
    if env:
        if env not in ("0", "1"):
            raise ValueError(f"CNNFAST_MPI_CUDA_AWARE={env!r}: expected 0 or 1")
        return env == "1"
    MPI = MPI or _import_mpi()
    try:
        query = ctypes.CDLL(MPI.__file__).MPIX_Query_cuda_support
    except (OSError, AttributeError):
        return False
    query.restype = ctypes.c_int
    return bool(query())


class MPIComm(Communicator):
    """mpi4py communicator (default ``MPI.COMM_WORLD``)."""

    name = "mpi"

    def __init__(self, comm=None):
        MPI = _import_mpi()
        self.MPI = MPI
        self.comm = comm if comm is not None else MPI.COMM_WORLD
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        node = self.comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank, self.local_size = node.Get_rank(), node.Get_size()
        node.Free()
        # A private duplicate for exit_barrier: its Ibarrier never meets a training
        # collective of COMM_WORLD.
        self._exit_comm = self.comm.Dup()
        self._cuda_aware = None  # asked on the first cupy buffer

    def _device_ok(self, buf) -> bool:
        """True: hand ``buf`` to MPI as is. False: stage a cupy ``buf`` via the host."""
        if not is_cupy_array(buf):
            return True
        if self._cuda_aware is None:
            self._cuda_aware = mpi_cuda_aware(self.MPI)
        import cupy

        # MPI reads the memory directly: kernels that write it must have finished.
        cupy.cuda.get_current_stream().synchronize()
        return self._cuda_aware

    def allreduce_sum(self, buf):
        _check_buffer(buf)
        if self._device_ok(buf):
            self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)
        else:
            host = buf.get()
            self.comm.Allreduce(self.MPI.IN_PLACE, host, op=self.MPI.SUM)
            buf.set(host)
        return buf

    def bcast(self, buf, root=0):
        _check_buffer(buf)
        self._check_root(root)
        if self._device_ok(buf):
            self.comm.Bcast(buf, root=root)
        else:
            host = buf.get()
            self.comm.Bcast(host, root=root)
            buf.set(host)
        return buf

    def bcast_object(self, obj, root=0):
        self._check_root(root)
        return self.comm.bcast(obj, root=root)

    def barrier(self):
        self.comm.Barrier()

    def abort(self, code=1):
        sys.stdout.flush()
        sys.stderr.flush()
        # The launcher forwards each rank's output through pipes and tears the job
        # down on MPI_Abort, dropping what it has not forwarded yet: give it a moment
        # to deliver the failure message (seen lost under load).
        time.sleep(ABORT_GRACE_S)
        self.comm.Abort(int(code))
        # MPICH's MPI_Abort may return before the launcher kills this process: never
        # run (and print) anything more.
        os._exit(int(code))

    def exit_barrier(self, timeout):
        request = self._exit_comm.Ibarrier()
        deadline = time.monotonic() + float(timeout)
        while not request.Test():
            if time.monotonic() > deadline:
                return False  # the request is left pending: the caller aborts
            time.sleep(0.005)
        return True


class NCCLComm(MPIComm):
    """cupy buffers through NCCL (``cupy.cuda.nccl``), one GPU per rank (device
    ``local_rank % device count`` is made current); MPI sets NCCL up and carries
    objects, numpy buffers and barriers. Untested here (no GPU)."""

    name = "nccl"

    def __init__(self, comm=None):
        super().__init__(comm)
        import cupy
        from cupy.cuda import nccl

        self.cupy, self.nccl = cupy, nccl
        cupy.cuda.Device(self.local_rank % cupy.cuda.runtime.getDeviceCount()).use()
        uid = nccl.get_unique_id() if self.rank == 0 else None
        uid = self.comm.bcast(uid, root=0)
        self.nccl_comm = nccl.NcclCommunicator(self.size, uid, self.rank)
        self._dtypes = {np.dtype(np.float32): nccl.NCCL_FLOAT32,
                        np.dtype(np.float64): nccl.NCCL_FLOAT64,
                        np.dtype(np.float16): nccl.NCCL_FLOAT16,
                        np.dtype(np.int32): nccl.NCCL_INT32,
                        np.dtype(np.int64): nccl.NCCL_INT64}

    def _nccl_dtype(self, buf):
        try:
            return self._dtypes[np.dtype(buf.dtype)]
        except KeyError:
            raise TypeError(f"NCCL cannot reduce dtype {buf.dtype}") from None

    def allreduce_sum(self, buf):
        if not is_cupy_array(buf):
            return super().allreduce_sum(buf)
        _check_buffer(buf)
        stream = self.cupy.cuda.get_current_stream()
        # Enqueued on the current stream after the kernels that wrote buf; later
        # kernels on that stream see the result, so no synchronisation is needed.
        self.nccl_comm.allReduce(buf.data.ptr, buf.data.ptr, buf.size,
                                 self._nccl_dtype(buf), self.nccl.NCCL_SUM, stream.ptr)
        return buf

    def bcast(self, buf, root=0):
        if not is_cupy_array(buf):
            return super().bcast(buf, root)
        _check_buffer(buf)
        self._check_root(root)
        stream = self.cupy.cuda.get_current_stream()
        self.nccl_comm.bcast(buf.data.ptr, buf.size, self._nccl_dtype(buf), root,
                             stream.ptr)
        return buf

    def abort(self, code=1):
        with contextlib.suppress(Exception):
            self.nccl_comm.abort()
        super().abort(code)


def launched_by_mpi() -> bool:
    """Whether this process looks started by mpiexec/mpirun (its variables are set)."""
    return any(v in os.environ for v in _LAUNCHER_VARS)


def get_communicator(kind: str = "auto") -> Communicator:
    """``"single"``, ``"mpi"``, ``"nccl"``, or ``"auto"`` (MPI when launched by
    mpiexec, else single). Without mpi4py, ``"mpi"``/``"nccl"`` raise RuntimeError
    saying what to install."""
    if kind == "single":
        return SingleProcessComm()
    if kind == "mpi":
        return MPIComm()
    if kind == "nccl":
        return NCCLComm()
    if kind == "auto":
        # Under mpiexec without mpi4py, N independent single-process runs would each
        # train and write the same files: MPIComm() raises with the install hint.
        return MPIComm() if launched_by_mpi() else SingleProcessComm()
    raise ValueError(f"kind={kind!r}: expected 'auto', 'single', 'mpi' or 'nccl'")


# ----------------------------------------------------------------------------- flat buffers


def grad_layout(model):
    """``[(layer, param_name, shape, offset, size)]`` of the parameters the optimizer
    updates, in ``model.trainable_params()`` order, and the total element count."""
    layout, offset = [], 0
    for _key, layer, pname in model.trainable_params():
        shape = tuple(layer.params[pname].shape)
        size = int(np.prod(shape, dtype=np.int64))
        layout.append((layer, pname, shape, offset, size))
        offset += size
    return layout, offset


def flatten_grads(model, out=None, extra: int = 0, scale: Optional[float] = None):
    """The gradients of the trainable parameters in one flat buffer (``model.xp``,
    ``model.dtype``), optionally times ``scale``, followed by ``extra`` free slots
    (the caller fills them: small values that ride along with the same allreduce).
    ``out`` (a buffer of the right length) is reused when given. A layer with no
    gradient yet (``model.backward`` not called) is an error; ``scale=0`` writes
    zeros without reading any gradient (a rank with an empty slice)."""
    layout, total = grad_layout(model)
    xp, dtype = model.xp, model.dtype
    n = total + int(extra)
    if out is None:
        out = xp.empty(n, dtype)
    elif out.shape != (n,) or out.dtype != dtype:
        raise ValueError(f"out has shape {tuple(out.shape)} and dtype {out.dtype}; "
                         f"expected ({n},) {dtype}")
    if scale == 0:
        out[:total] = 0
        return out
    for layer, pname, shape, off, size in layout:
        g = layer.grads.get(pname)
        if g is None:
            raise RuntimeError(f"no gradient for {layer.name}.{pname}: call "
                               f"model.backward first")
        if tuple(g.shape) != shape:
            raise ValueError(f"gradient of {layer.name}.{pname} has shape "
                             f"{tuple(g.shape)}, the parameter {shape}")
        dst = out[off:off + size]
        if scale is None:
            dst[...] = g.reshape(-1)
        else:
            xp.multiply(g.reshape(-1), dtype.type(scale), out=dst)
    return out


def unflatten_into(model, buffer) -> None:
    """Point every trainable layer's ``grads`` at its slice of ``buffer`` (views: no
    copy; the optimizer consumes them before the buffer is reused)."""
    layout, total = grad_layout(model)
    if buffer.ndim != 1 or buffer.shape[0] < total:
        raise ValueError(f"buffer of shape {tuple(buffer.shape)} is too short for "
                         f"{total} gradient values")
    for layer, pname, shape, off, size in layout:
        layer.grads[pname] = buffer[off:off + size].reshape(shape)


def _state_arrays(model):
    """Every parameter and buffer, trainable or not: ``[(dict, key)]``."""
    out = []
    for layer in model.layers:
        out += [(layer.params, k) for k in sorted(layer.params)]
        out += [(layer.buffers, k) for k in sorted(layer.buffers)]
    return out


def broadcast_parameters(model, comm: Communicator, root: int = 0) -> None:
    """Copy root's parameters and buffers into every rank's model (one broadcast
    per dtype, in place)."""
    if comm.size == 1:
        return
    xp = model.xp
    groups = {}
    for d, k in _state_arrays(model):
        groups.setdefault(np.dtype(d[k].dtype), []).append((d, k))
    for dtype in sorted(groups, key=str):  # the same order on every rank
        items = groups[dtype]
        flat = xp.concatenate([d[k].reshape(-1) for d, k in items])
        comm.bcast(flat, root)
        off = 0
        for d, k in items:
            size = int(np.prod(d[k].shape, dtype=np.int64))
            d[k][...] = flat[off:off + size].reshape(d[k].shape)
            off += size


def average_buffers(model, comm: Communicator) -> None:
    """Replace each floating buffer (BatchNorm running statistics) by its mean over
    the ranks, so evaluation and checkpoints see one set of statistics."""
    if comm.size == 1:
        return
    items = [(layer.buffers, k) for layer in model.layers for k in sorted(layer.buffers)
             if np.dtype(layer.buffers[k].dtype).kind == "f"]
    if not items:
        return
    xp = model.xp
    flat = xp.concatenate([d[k].reshape(-1).astype(np.float64) for d, k in items])
    comm.allreduce_mean(flat)
    off = 0
    for d, k in items:
        size = int(np.prod(d[k].shape, dtype=np.int64))
        d[k] = flat[off:off + size].reshape(d[k].shape).astype(d[k].dtype)
        off += size


# ----------------------------------------------------------------------------- sharding


def local_slice(n_global: int, rank: int, size: int):
    """``(start, stop)`` of rank's part of a global batch of ``n_global`` samples:
    ``size`` contiguous near-equal parts (sizes differ by at most one, the larger
    first; a part may be empty when ``n_global < size``)."""
    if not (0 <= rank < size):
        raise ValueError(f"rank={rank!r} must lie in [0, size={size})")
    base, rem = divmod(int(n_global), int(size))
    start = rank * base + min(rank, rem)
    return start, start + base + (1 if rank < rem else 0)


def epoch_permutation(n: int, epoch: int, seed: int):
    """The seeded shuffle of epoch ``epoch`` (the same on every rank)."""
    return np.random.default_rng([int(seed), int(epoch)]).permutation(int(n))


def shard_indices(n: int, epoch: int, seed: int, rank: int, size: int,
                  batch_size: int, perm=None) -> List[np.ndarray]:
    """This rank's sample indices for every step of an epoch: the permutation
    (``perm``, else ``epoch_permutation(n, epoch, seed)``) cut into global batches
    of ``batch_size``, each split by ``local_slice`` (so rank r takes about
    ``batch_size / size`` samples a step). Every rank gets the same number of steps,
    ``ceil(n / batch_size)``, possibly with empty slices at the end: every rank must
    make the same collective calls. Global batch indices are sorted first (as the
    single-process ``Trainer`` does)."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be positive")
    if size < 1:
        raise ValueError(f"size={size!r} must be positive")
    if perm is None:
        perm = epoch_permutation(n, epoch, seed)
    elif len(perm) != n:
        raise ValueError(f"perm has {len(perm)} entries for n={n}")
    steps = []
    for b in range(math.ceil(n / batch_size)):
        batch = np.sort(perm[b * batch_size:(b + 1) * batch_size])
        lo, hi = local_slice(len(batch), rank, size)
        steps.append(batch[lo:hi])
    return steps


# ----------------------------------------------------------------------------- the step


class DistributedStep:
    """The data-parallel update: after ``model.backward`` on this rank's slice,
    ``reduce(n_local, n_global)`` makes every rank's ``grads`` the gradient of the
    global batch's mean loss with one allreduce; then ``optimizer.step(model)``.

    ``comm_time`` (seconds spent in the allreduce, cumulated) and ``steps`` let
    callers report the share of a step spent communicating.
    """

    EXTRA = 3  # loss sum, correct count, stop flag

    def __init__(self, model, comm: Communicator):
        self.model, self.comm = model, comm
        self._buf = None
        self.comm_time = 0.0
        self.steps = 0

    def reduce(self, n_local: int, n_global: int, loss: float = 0.0, correct: int = 0,
               stop: bool = False):
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

    def __init__(self, model, optimizer, schedule=None, batch_size=64, seed=0,
                 comm: Optional[Communicator] = None, **kwargs):
        self.comm = comm if comm is not None else SingleProcessComm()
        self.step_impl = DistributedStep(model, self.comm)
        self._stop_local = False
        self._stop_agreed = False
        self._synced = False
        super().__init__(model, optimizer, schedule, batch_size, seed, **kwargs)

    # Reads see only the flag agreed through the last allreduce (the same on every
    # rank); writes (the signal handler) record a local request.
    @property
    def stop_requested(self):
        return self._stop_agreed

    @stop_requested.setter
    def stop_requested(self, value):
        self._stop_local = bool(value)
        if not value:
            self._stop_agreed = False

    def sync_from_root(self):
        """Broadcast rank 0's weights, buffers and training state to every rank."""
        broadcast_parameters(self.model, self.comm)
        state = self.comm.bcast_object(self.state() if self.comm.rank == 0 else None)
        self.restore(state)
        self._synced = True

    def train_step(self, x, y):
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

    def train_epoch(self, images, labels, progress=True, stream=None):
        if not self._synced:
            self.sync_from_root()
        return super().train_epoch(images, labels,
                                   progress=progress and self.comm.rank == 0, stream=stream)

    def evaluate(self, images, labels, batch_size=500, classes=None):
        """Each rank evaluates its contiguous share of the set; the loss sum and the
        confusion matrix are summed over the ranks."""
        return distributed_evaluate(self.model, images, labels, self.comm, batch_size,
                                    classes)


def distributed_evaluate(model, images, labels, comm: Communicator, batch_size=500,
                         classes=None) -> dict:
    """``cnnfast.nn.training.evaluate`` over the ranks: each rank takes a contiguous
    share; returns the same dict (global loss, accuracy, per-class, confusion)."""
    average_buffers(model, comm)
    n = len(images)
    lo, hi = local_slice(n, comm.rank, comm.size)
    classes = classes or int(model.output_shape[0])
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


# ------------------------------------------------------------------------- process setup


def configure_threads(comm: Communicator, requested: Optional[int] = None) -> int:
    """Give each rank its share of the machine's cores (``cores // local_size``)
    unless ``requested`` or ``CNNFAST_NUM_THREADS`` says otherwise: ranks on one
    machine each defaulting to every core would oversubscribe it. Returns the count."""
    from ..threads import get_num_threads, set_num_threads

    if requested is not None:
        set_num_threads(int(requested))
    elif not os.environ.get("CNNFAST_NUM_THREADS", "").strip():
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:
            cores = os.cpu_count() or 1
        # Hydra/mpirun may bind each rank to a core already: then affinity is 1.
        set_num_threads(max(1, cores // max(comm.local_size, 1))
                        if cores > 1 else 1)
    return get_num_threads()


def select_gpu(comm: Communicator) -> int:
    """Make GPU ``local_rank % device count`` current (one GPU per rank); returns it."""
    import cupy

    dev = comm.local_rank % cupy.cuda.runtime.getDeviceCount()
    cupy.cuda.Device(dev).use()
    return dev


@contextlib.contextmanager
def quiet_unless_root(comm: Communicator):
    """Send stdout of ranks other than 0 to /dev/null (errors still reach stderr)."""
    if comm.rank == 0:
        yield
        return
    saved = sys.stdout
    with open(os.devnull, "w") as devnull:
        sys.stdout = devnull
        try:
            yield
        finally:
            sys.stdout = saved


def _report_failure(comm: Communicator, what: str, exc_text: str = "") -> None:
    msg = f"cnnfast: rank {comm.rank}/{comm.size} failed: {what}; aborting the job\n"
    try:
        sys.stderr.write(exc_text + msg)
        sys.stderr.flush()
    except Exception:  # stderr gone: still abort
        pass


def _exit_timeout() -> float:
    env = os.environ.get("CNNFAST_EXIT_TIMEOUT", "").strip()
    try:
        value = float(env) if env else 120.0
    except ValueError:
        raise ValueError(f"CNNFAST_EXIT_TIMEOUT={env!r} must be a number of "
                         f"seconds") from None
    if not value > 0:
        raise ValueError(f"CNNFAST_EXIT_TIMEOUT={env!r} must be positive")
    return value


def run_guarded(comm: Communicator, fn: Callable[..., int], *args,
                exit_timeout: Optional[float] = None, **kwargs) -> int:
    """``fn(*args, **kwargs)`` on this rank, made safe for a multi-rank job:

    * an exception (``SystemExit`` with a non-zero status and ``KeyboardInterrupt``
      included) prints ``rank R/N failed: ...`` with the traceback and aborts the
      whole job at once (the other ranks may sit in a collective that would never
      complete);
    * a return, whatever its status, waits for every rank to return too (a
      barrier on a separate communicator, so it cannot be confused with a training
      collective), at most ``exit_timeout`` seconds (``$CNNFAST_EXIT_TIMEOUT``,
      default 120); past that, the ranks still training are taken as stuck and
      the job is aborted with this rank's status (or 1).
    """
    if comm.size == 1:
        return fn(*args, **kwargs)
    try:
        rc = fn(*args, **kwargs)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        rc = code
        if code != 0:
            _report_failure(comm, f"exit status {code}")
            comm.abort(code)
            raise
    except BaseException as exc:
        _report_failure(comm, f"{type(exc).__name__}: {exc}", traceback.format_exc())
        comm.abort(130 if isinstance(exc, KeyboardInterrupt) else 1)
        raise
    rc = int(rc or 0)
    timeout = _exit_timeout() if exit_timeout is None else float(exit_timeout)
    if not comm.exit_barrier(timeout):
        _report_failure(comm, f"returned status {rc} but other ranks did not finish "
                              f"within {timeout:g} s")
        comm.abort(rc or 1)
    return rc


def install_excepthook(comm: Communicator) -> None:
    """An uncaught exception anywhere on this rank aborts the job (as ``python -m
    mpi4py`` does): a belt to ``run_guarded``'s braces for code outside it."""
    if comm.size == 1:
        return
    previous = sys.excepthook

    def hook(etype, value, tb):
        text = "".join(traceback.format_exception(etype, value, tb))
        _report_failure(comm, f"{etype.__name__}: {value}", text)
        try:
            comm.abort(1)
        finally:
            previous(etype, value, tb)

    sys.excepthook = hook
