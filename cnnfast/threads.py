"""The CPU backends' thread count (numba and cpp alike)."""

from __future__ import annotations

import contextlib
import numbers
import os

_num_threads = None

# The most threads the CPU backends are given. Every OpenMP thread of the cpp backend
# costs a stack and scratch buffers, and one that cannot be created kills the process
# (measured on 2 cores: 1024 threads ran a small call in 0.4 s and 85 MB, 20000 took
# 13 s and 1 GB, 100000 segfaulted). 1024 is above the hardware threads of any common
# machine (big two-socket servers have 384-512), so it never limits real use, and it is
# the same number everywhere, so a setting valid on one machine is valid on another.
MAX_THREADS = 1024


def _default_threads() -> int:
    env = os.environ.get("CNNFAST_NUM_THREADS", "").strip()
    if env:
        try:
            n = int(env)
        except ValueError:
            raise ValueError(f"CNNFAST_NUM_THREADS={env!r} must be a positive int") from None
        if n < 1:
            raise ValueError(f"CNNFAST_NUM_THREADS={env!r} must be a positive int")
        if n > MAX_THREADS:  # our own setting: refused, as set_num_threads refuses it
            raise ValueError(f"CNNFAST_NUM_THREADS={env!r} is more than the "
                             f"{MAX_THREADS} threads allowed; set at most {MAX_THREADS}")
        return n
    # OMP_NUM_THREADS (its first entry, as OpenMP reads nested lists) when set. It is a
    # hint shared with every OpenMP program, so a huge value is clamped, not an error.
    omp = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if omp.isdigit() and int(omp) >= 1:
        return min(int(omp), MAX_THREADS)
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return min(cores, MAX_THREADS)


def set_num_threads(n: int) -> None:
    """Set the thread count of the CPU backends (numba and cpp): 1 to MAX_THREADS."""
    global _num_threads
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise ValueError(f"set_num_threads(n={n!r}): n must be a positive int")
    if n > MAX_THREADS:
        raise ValueError(f"set_num_threads(n={n!r}): at most {MAX_THREADS} threads (more "
                         f"than any machine's cores, and each costs memory); pass a "
                         f"smaller n, e.g. the core count")
    _num_threads = int(n)


def get_num_threads() -> int:
    """The CPU backends' thread count: set_num_threads, else CNNFAST_NUM_THREADS,
    else OMP_NUM_THREADS (clamped to MAX_THREADS), else the cores this process may
    run on."""
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
