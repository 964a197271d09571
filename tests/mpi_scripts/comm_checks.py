"""The communicator interface checks, the same for every implementation: run
in-process on ``SingleProcessComm`` by the tests, and under ``mpiexec -n N`` on
``MPIComm`` by running this file (exit status 0 and ``OK rank r/N`` per rank). A second
argument ``R`` makes rank R raise instead (the excepthook test)."""

from __future__ import annotations

import os
import sys

import numpy as np


def _raises(exc_type, fn, *args):
    try:
        fn(*args)
    except exc_type:
        return
    raise AssertionError(f"{fn.__name__}{args!r} did not raise {exc_type.__name__}")


def check_communicator(comm) -> None:
    r, n = comm.rank, comm.size
    assert 0 <= r < n, (r, n)
    assert 0 <= comm.local_rank < comm.local_size <= n

    # allreduce_sum: rank-dependent values, every rank gets the sum; in place.
    for dtype in (np.float32, np.float64, np.int64):
        buf = (np.arange(7, dtype=dtype) + 10 * r).astype(dtype)
        out = comm.allreduce_sum(buf)
        assert out is buf
        expected = n * np.arange(7, dtype=dtype) + 10 * sum(range(n))
        np.testing.assert_array_equal(buf, expected.astype(dtype))

    # allreduce_mean of a 2-D float buffer.
    buf = np.full((3, 2), float(r + 1))
    comm.allreduce_mean(buf)
    np.testing.assert_allclose(buf, np.full((3, 2), (n + 1) / 2))
    _raises(TypeError, comm.allreduce_mean, np.arange(3))

    # bcast from the first and the last rank.
    for root in (0, n - 1):
        buf = np.full(5, float(r), np.float32)
        assert comm.bcast(buf, root) is buf
        np.testing.assert_array_equal(buf, np.full(5, float(root), np.float32))
    assert comm.bcast_object({"rank": r} if r == 0 else None) == {"rank": 0}

    # Bad input is rejected before any communication, the same on every rank.
    _raises(ValueError, comm.bcast, np.zeros(3), n)
    _raises(ValueError, comm.bcast, np.zeros(3), -1)
    _raises(ValueError, comm.allreduce_sum, np.zeros((4, 4))[:, ::2])
    _raises(TypeError, comm.allreduce_sum, [1.0, 2.0])
    frozen = np.zeros(3)
    frozen.flags.writeable = False
    _raises(ValueError, comm.allreduce_sum, frozen)

    comm.barrier()
    assert comm.exit_barrier(30.0) is True


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from cnnfast import distributed as D

    c = D.get_communicator(sys.argv[1] if len(sys.argv) > 1 else "mpi")
    D.install_excepthook(c)
    if len(sys.argv) > 2 and c.rank == int(sys.argv[2]):
        # An uncaught error outside run_guarded while the others enter a collective:
        # the excepthook must abort the job.
        raise RuntimeError(f"injected uncaught error on rank {c.rank}")
    check_communicator(c)
    print(f"OK rank {c.rank}/{c.size} ({c.name})", flush=True)
