"""Communicators: the collectives data-parallel training needs (``Communicator`` is
the interface) and how this process finds out it was started by ``mpiexec``.

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
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import time
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from ..arrays import is_cupy_array

if TYPE_CHECKING:
    from ..nn.base import Array

# Variables the common launchers set in each rank's environment.
_LAUNCHER_VARS = ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK",
                  "MPI_LOCALNRANKS", "HYDRA_CONTROL_FD")


def _check_buffer(buf: Array, what: str = "buffer") -> None:
    if not (isinstance(buf, np.ndarray) or is_cupy_array(buf)):
        raise TypeError(f"{what} must be a numpy or cupy array, got {type(buf).__name__}")
    if not buf.flags.c_contiguous:
        raise ValueError(f"{what} must be C-contiguous (the collectives work in place)")
    if isinstance(buf, np.ndarray) and not buf.flags.writeable:
        raise ValueError(f"{what} must be writeable (the collectives work in place)")


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

    def allreduce_sum(self, buf: Array) -> Array:
        """``buf`` <- the sum of ``buf`` over the ranks (in place)."""
        raise NotImplementedError

    def allreduce_mean(self, buf: Array) -> Array:
        """``buf`` <- the mean of ``buf`` over the ranks (in place; floating dtypes)."""
        if buf.dtype.kind != "f":
            raise TypeError(f"allreduce_mean needs a floating buffer, got {buf.dtype}")
        self.allreduce_sum(buf)
        if self.size > 1:
            buf /= buf.dtype.type(self.size)
        return buf

    def bcast(self, buf: Array, root: int = 0) -> Array:
        """``buf`` <- root's ``buf`` (in place; same shape and dtype on every rank)."""
        raise NotImplementedError

    def bcast_object(self, obj: Any, root: int = 0) -> Any:
        """Root's picklable ``obj`` (every rank passes something; only root's counts)."""
        raise NotImplementedError

    def barrier(self) -> None:
        """Wait until every rank calls this."""
        raise NotImplementedError

    def abort(self, code: int = 1) -> None:
        """End every rank of the job now (no cleanup); does not return."""
        raise NotImplementedError

    def exit_barrier(self, timeout: float) -> bool:
        """Wait until every rank calls this, at most ``timeout`` seconds; False on
        timeout. Independent of the other collectives (a rank still inside a
        training allreduce is not confused by it)."""
        raise NotImplementedError

    def _check_root(self, root: int) -> None:
        if not (isinstance(root, (int, np.integer)) and 0 <= root < self.size):
            raise ValueError(f"root={root!r} must be a rank in [0, {self.size})")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(rank={self.rank}, size={self.size})"


class SingleProcessComm(Communicator):
    """One process: rank 0 of 1. Collectives return their input unchanged."""

    name = "single"

    def allreduce_sum(self, buf: Array) -> Array:
        _check_buffer(buf)
        return buf

    def bcast(self, buf: Array, root: int = 0) -> Array:
        _check_buffer(buf)
        self._check_root(root)
        return buf

    def bcast_object(self, obj: Any, root: int = 0) -> Any:
        self._check_root(root)
        return obj

    def barrier(self) -> None:
        return None

    def abort(self, code: int = 1) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(int(code))

    def exit_barrier(self, timeout: float) -> bool:
        return True


# Seconds between printing a failure and MPI_Abort (see MPIComm.abort).
ABORT_GRACE_S = 0.5


def _import_mpi() -> Any:
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise RuntimeError(
            "distributed training needs mpi4py and an MPI library: "
            "pip install 'cnnfast[distributed]' mpich  (or: apt install mpich, "
            f"then pip install mpi4py) ({exc})") from exc
    return MPI


def mpi_cuda_aware(MPI: Any = None) -> bool:
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

    def __init__(self, comm: Any = None) -> None:
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
        self._cuda_aware: Optional[bool] = None  # asked on the first cupy buffer

    def _device_ok(self, buf: Array) -> bool:
        """True: hand ``buf`` to MPI as is. False: stage a cupy ``buf`` via the host."""
        if not is_cupy_array(buf):
            return True
        if self._cuda_aware is None:
            self._cuda_aware = mpi_cuda_aware(self.MPI)
        import cupy

        # MPI reads the memory directly: kernels that write it must have finished.
        cupy.cuda.get_current_stream().synchronize()
        return self._cuda_aware

    def allreduce_sum(self, buf: Array) -> Array:
        _check_buffer(buf)
        if self._device_ok(buf):
            self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)
        else:
            host = buf.get()
            self.comm.Allreduce(self.MPI.IN_PLACE, host, op=self.MPI.SUM)
            buf.set(host)
        return buf

    def bcast(self, buf: Array, root: int = 0) -> Array:
        _check_buffer(buf)
        self._check_root(root)
        if self._device_ok(buf):
            self.comm.Bcast(buf, root=root)
        else:
            host = buf.get()
            self.comm.Bcast(host, root=root)
            buf.set(host)
        return buf

    def bcast_object(self, obj: Any, root: int = 0) -> Any:
        self._check_root(root)
        return self.comm.bcast(obj, root=root)

    def barrier(self) -> None:
        self.comm.Barrier()

    def abort(self, code: int = 1) -> None:
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

    def exit_barrier(self, timeout: float) -> bool:
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

    def __init__(self, comm: Any = None) -> None:
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

    def _nccl_dtype(self, buf: Array) -> Any:
        try:
            return self._dtypes[np.dtype(buf.dtype)]
        except KeyError:
            raise TypeError(f"NCCL cannot reduce dtype {buf.dtype}") from None

    def allreduce_sum(self, buf: Array) -> Array:
        if not is_cupy_array(buf):
            return super().allreduce_sum(buf)
        _check_buffer(buf)
        stream = self.cupy.cuda.get_current_stream()
        # Enqueued on the current stream after the kernels that wrote buf; later
        # kernels on that stream see the result, so no synchronisation is needed.
        self.nccl_comm.allReduce(buf.data.ptr, buf.data.ptr, buf.size,
                                 self._nccl_dtype(buf), self.nccl.NCCL_SUM, stream.ptr)
        return buf

    def bcast(self, buf: Array, root: int = 0) -> Array:
        if not is_cupy_array(buf):
            return super().bcast(buf, root)
        _check_buffer(buf)
        self._check_root(root)
        stream = self.cupy.cuda.get_current_stream()
        self.nccl_comm.bcast(buf.data.ptr, buf.size, self._nccl_dtype(buf), root,
                             stream.ptr)
        return buf

    def abort(self, code: int = 1) -> None:
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
