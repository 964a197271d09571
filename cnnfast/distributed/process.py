"""Process setup for a rank (``configure_threads``, ``select_gpu``,
``quiet_unless_root``) and the fail-fast guard (``run_guarded``,
``install_excepthook``).

Failure never hangs the job (``run_guarded``): a rank that raises (``sys.exit``
with a non-zero status and ``KeyboardInterrupt`` included) prints ``cnnfast: rank
R/N failed: ...`` with the traceback and calls ``MPI_Abort``, which ends every rank
-- without it the others would wait in their next collective forever. A rank that
*returns* waits at most ``$CNNFAST_EXIT_TIMEOUT`` seconds (120) for the others to
return too (a rank leaving the loop early would otherwise strand them), then aborts.
A rank killed by a signal is detected by the launcher: MPICH's Hydra and Open MPI's
mpirun both end the job with a message naming the signal (tested with both).

Not covered: a rank that hangs while alive (a deadlock inside a kernel) stalls the
job, as in any MPI program.
"""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
from typing import Any, Callable, Iterator, Optional

from .comm import Communicator


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
def quiet_unless_root(comm: Communicator) -> Iterator[None]:
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


def run_guarded(comm: Communicator, fn: Callable[..., int], *args: Any,
                exit_timeout: Optional[float] = None, **kwargs: Any) -> int:
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

    def hook(etype: Any, value: Any, tb: Any) -> None:
        text = "".join(traceback.format_exception(etype, value, tb))
        _report_failure(comm, f"{etype.__name__}: {value}", text)
        try:
            comm.abort(1)
        finally:
            previous(etype, value, tb)

    sys.excepthook = hook
