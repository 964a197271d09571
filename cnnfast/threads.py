"""The CPU backends' thread count (numba and cpp alike)."""

from __future__ import annotations

import contextlib
import os

_num_threads = None


def _default_threads() -> int:
    env = os.environ.get("CNNFAST_NUM_THREADS", "").strip()
    if env:
        try:
            n = int(env)
        except ValueError:
            raise ValueError(f"CNNFAST_NUM_THREADS={env!r} must be a positive int") from None
        if n < 1:
            raise ValueError(f"CNNFAST_NUM_THREADS={env!r} must be a positive int")
        return n
    # OMP_NUM_THREADS (its first entry, as OpenMP reads nested lists) when set.
    omp = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if omp.isdigit() and int(omp) >= 1:
        return int(omp)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def set_num_threads(n: int) -> None:
    """Set the thread count of the CPU backends (numba and cpp)."""
    global _num_threads
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"set_num_threads(n={n!r}): n must be a positive int")
    _num_threads = n


def get_num_threads() -> int:
    """The CPU backends' thread count: set_num_threads, else CNNFAST_NUM_THREADS,
    else OMP_NUM_THREADS, else the cores this process may run on."""
    return _num_threads if _num_threads is not None else _default_threads()


@contextlib.contextmanager
def single_threaded_blas():
    """Inside the block numpy's BLAS runs on one thread (threadpoolctl).

    A training step alternates our threaded kernels with numpy matrix products (dense
    layers). OpenBLAS workers keep spinning after each product and take the cores the
    next kernel's threads need: measured on 2 cores, the `cnn` model's step went from
    25.7 ms to 43-46 ms, the second convolution's backward from 9.5 to 18.5 ms. The
    dense products are small, so one BLAS thread costs little. Without threadpoolctl
    this does nothing."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - a dependency, but stay usable without it
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield
