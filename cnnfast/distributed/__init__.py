"""Data-parallel training over MPI.

Launch::

    mpiexec -n 4 cnnfast train --distributed ...

Every rank builds the same model and takes its slice of each global batch; one
allreduce per step sums the weighted gradients, so N ranks compute what one process
computes for the whole batch. The modules:

* ``comm``: the communicators (``Communicator``, ``SingleProcessComm``, ``MPIComm``,
  ``NCCLComm``), ``get_communicator``, ``launched_by_mpi``, ``mpi_cuda_aware``;
* ``flat``: the flat gradient buffer (``grad_layout``, ``flatten_grads``,
  ``unflatten_into``) and ``broadcast_parameters``, ``average_buffers``;
* ``sharding``: ``local_slice``, the one rule that splits a batch over the ranks;
* ``trainer``: ``DistributedStep``, ``DistributedTrainer``, ``distributed_evaluate``;
* ``process``: rank setup (``configure_threads``, ``select_gpu``,
  ``quiet_unless_root``) and the fail-fast guard (``run_guarded``,
  ``install_excepthook``) that aborts the whole job instead of letting it hang.

Each module's docstring has the details; every public name is importable from here.
"""

from __future__ import annotations

from .comm import (ABORT_GRACE_S, Communicator, MPIComm, NCCLComm, SingleProcessComm,
                   get_communicator, launched_by_mpi, mpi_cuda_aware)
from .flat import (average_buffers, broadcast_parameters, flatten_grads, grad_layout,
                   unflatten_into)
from .process import (configure_threads, install_excepthook, quiet_unless_root,
                      run_guarded, select_gpu)
from .sharding import local_slice
from .trainer import DistributedStep, DistributedTrainer, distributed_evaluate

__all__ = [
    "ABORT_GRACE_S", "Communicator", "MPIComm", "NCCLComm", "SingleProcessComm",
    "get_communicator", "launched_by_mpi", "mpi_cuda_aware",
    "average_buffers", "broadcast_parameters", "flatten_grads", "grad_layout",
    "unflatten_into",
    "configure_threads", "install_excepthook", "quiet_unless_root", "run_guarded",
    "select_gpu",
    "local_slice",
    "DistributedStep", "DistributedTrainer", "distributed_evaluate",
]
