"""The CPU backends' thread count (numba and cpp alike), and how our OpenMP threads
share the cores with numpy's BLAS.

Importing cnnfast makes idle OpenMP workers sleep after a short spin
(``GOMP_SPINCOUNT``) unless the user chose a wait policy or an OpenMP runtime is
already loaded (``short_openmp_spin``). The dense layers run numpy's matrix products
on one BLAS thread (``serial_blas``)."""

from __future__ import annotations

import contextlib
import numbers
import os
from typing import Any, Callable, Iterator, Optional

from .environ import getenv

_num_threads: Optional[int] = None
# How many threads the loaded OpenMP runtime would use now (omp_get_max_threads), once
# the cpp backend has registered its query (follow_openmp); None before.
_openmp_max_threads: Optional[Callable[[], int]] = None

# The most threads the CPU backends are given. Every OpenMP thread of the cpp backend
# costs a stack and scratch buffers, and one that cannot be created kills the process
# (measured on 2 cores: 1024 threads ran a small call in 0.4 s and 85 MB, 20000 took
# 13 s and 1 GB, 100000 segfaulted). 1024 is above the hardware threads of any common
# machine (big two-socket servers have 384-512), so it never limits real use, and it is
# the same number everywhere, so a setting valid on one machine is valid on another.
MAX_THREADS = 1024


def _default_threads() -> int:
    env = getenv("CNNFAST_NUM_THREADS").strip()
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
    # The OpenMP runtime's own setting once the cpp extension has loaded it: it reads
    # OMP_NUM_THREADS, and follows omp_set_num_threads, which is how threadpoolctl's
    # threadpool_limits(n) limits OpenMP libraries.
    if _openmp_max_threads is not None:
        return max(1, min(_openmp_max_threads(), MAX_THREADS))
    # OMP_NUM_THREADS (its first entry, as OpenMP reads nested lists) when set. It is a
    # hint shared with every OpenMP program, so a huge value is clamped, not an error.
    omp = getenv("OMP_NUM_THREADS").split(",")[0].strip()
    if omp.isdigit() and int(omp) >= 1:
        return min(int(omp), MAX_THREADS)
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return min(cores, MAX_THREADS)


# The variables by which a user chooses how idle OpenMP workers wait: the standard one,
# libgomp's spin count and LLVM/Intel's block time. Any of them set is the user's choice.
WAIT_POLICY_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
_OPENMP_RUNTIMES = ("libgomp", "libomp", "libiomp")


def _openmp_loaded() -> bool:
    """Whether an OpenMP runtime is mapped into this process (Linux; elsewhere we
    cannot tell and answer False)."""
    try:
        with open("/proc/self/maps") as f:
            maps = f.read()
    except OSError:
        return False
    return any(name in maps for name in _OPENMP_RUNTIMES)


# How long libgomp's idle workers spin before they sleep, in spins, unless the user
# chose: ~0.65 ms at the 65 ns a spin took on the 2-core AMD EPYC (KVM) we measure on,
# where libgomp's own default, 300,000, spins ~20 ms.
SPIN_COUNT = 10_000


def short_openmp_spin() -> bool:
    """Let idle OpenMP workers spin briefly, then sleep: ``GOMP_SPINCOUNT=SPIN_COUNT``
    in this process's environment, read by libgomp (the runtime of our cpp kernels,
    numba's OpenMP layer and torch on Linux) when it loads, once; nothing changes it
    later. Returns whether it was set.

    Left alone: a policy the user chose (any of ``WAIT_POLICY_VARS`` set), and a
    runtime already loaded (by torch, numba or our kernels: it would not read it, and
    the variable would only reach child processes). Other runtimes (LLVM's, Intel's)
    ignore the variable and keep their own defaults. Choose a policy before importing
    cnnfast: libgomp lets a ``GOMP_SPINCOUNT`` set here override an
    ``OMP_WAIT_POLICY`` set after.

    Why: libgomp's default spins an idle worker ~20 ms after every parallel region, so
    through a training step's numpy work (loss, optimizer, conversion) our workers
    hold every core; anything else that runs then (another process, a BLAS pool)
    waits for them, and a worker descheduled in favour of it stalls the next region.
    Measured on 2 cores, the `cnn` model's training step (benchmarks/train_vs_torch.py,
    images/s, several runs each): idle machine, 3,200-3,600 against 2,100-3,700 for
    the default and 2,000-3,400 for ``OMP_WAIT_POLICY=PASSIVE`` (a sleep after every
    region: a wake-up before the next); beside one busy process, 1,190-1,490 against
    730-990 for the default and 1,170-1,930 for PASSIVE. The variable is process-wide:
    torch's OpenMP, loaded after, spins as briefly."""
    if any(var in os.environ for var in WAIT_POLICY_VARS) or _openmp_loaded():
        return False
    os.environ["GOMP_SPINCOUNT"] = str(SPIN_COUNT)
    return True


def set_num_threads(n: int) -> None:
    """Set the thread count of the CPU backends (numba and cpp): 1 to MAX_THREADS.

    Process-wide; it comes before ``CNNFAST_NUM_THREADS`` and the OpenMP settings
    (see ``get_num_threads``).

    Parameters
    ----------
    n : int
        The thread count, 1 to ``MAX_THREADS`` (1024).

    Raises
    ------
    ValueError
        ``n`` is not a positive int, or is over ``MAX_THREADS``.

    Examples
    --------
    >>> import cnnfast
    >>> before = cnnfast.get_num_threads()
    >>> cnnfast.set_num_threads(1)
    >>> cnnfast.get_num_threads()
    1
    >>> cnnfast.set_num_threads(before)
    """
    global _num_threads
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise ValueError(f"set_num_threads(n={n!r}): n must be a positive int")
    if n > MAX_THREADS:
        raise ValueError(f"set_num_threads(n={n!r}): at most {MAX_THREADS} threads (more "
                         f"than any machine's cores, and each costs memory); pass a "
                         f"smaller n, e.g. the core count")
    _num_threads = int(n)


def follow_openmp(max_threads: Callable[[], int]) -> None:
    """Let ``max_threads()`` (the loaded OpenMP runtime's omp_get_max_threads) give the
    default thread count (see ``get_num_threads``); called by the cpp backend."""
    global _openmp_max_threads
    _openmp_max_threads = max_threads


def get_num_threads() -> int:
    """The CPU backends' thread count: set_num_threads, else CNNFAST_NUM_THREADS,
    else, once the cpp extension is loaded, its OpenMP runtime's setting (so that
    ``threadpoolctl.threadpool_limits`` limits cnnfast too), else OMP_NUM_THREADS,
    else the cores this process may run on (all clamped to MAX_THREADS).

    Returns
    -------
    int
        The thread count, 1 to ``MAX_THREADS``.

    Raises
    ------
    ValueError
        ``CNNFAST_NUM_THREADS`` is set but not an int from 1 to ``MAX_THREADS``.

    Examples
    --------
    >>> import cnnfast
    >>> 1 <= cnnfast.get_num_threads() <= 1024
    True
    """
    return _num_threads if _num_threads is not None else _default_threads()


# threadpoolctl's controller of the BLAS libraries loaded with numpy, found on first use
# (None: not searched yet; False: threadpoolctl is missing or sees no BLAS). Finding
# them reads every loaded library (threadpool_limits does it on every call: 0.5 ms);
# limiting and restoring the found ones costs 13-18 us, 3 us when already at one
# thread (measured on 2 cores), so serial_blas can run around every dense product.
_blas_controller: Any = None


def _blas() -> Any:
    global _blas_controller
    if _blas_controller is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:  # pragma: no cover - a dependency, but stay usable without it
            _blas_controller = False
        else:
            _blas_controller = ThreadpoolController().select(user_api="blas") or False
    return _blas_controller


@contextlib.contextmanager
def serial_blas() -> Iterator[None]:
    """Inside the block numpy's BLAS runs on one thread; its thread counts are restored
    after. The dense layers run their matrix products in it.

    Why: a training step alternates our OpenMP kernels with these products. A threaded
    product wakes OpenBLAS's workers, which then spin for a while after it (OpenBLAS
    does not yield) on the cores the next kernel's OpenMP threads need: on 2 cores the
    `cnn` model's step took 65 ms with them, 19.5 ms without (its second convolution's
    backward 21.4 ms against 5.5; benchmarks/train_vs_torch.py). The products are
    small: the `cnn` model's three (64x1600 by 1600x128) took 1.04 ms on one thread,
    1.4-1.8 ms on two even alone, and 2.5 ms through our own threaded GEMM (as a 1x1
    convolution, with the transposes). A worker that is never woken never spins.

    Scope: the BLAS thread count is process-wide (OpenBLAS's pthreads pool), so another
    Python thread's products that run during the block also get one thread. A limit
    already at one thread (``OPENBLAS_NUM_THREADS=1``, ``single_threaded_blas``) is
    left alone. Without threadpoolctl this does nothing."""
    blas = _blas()
    if not blas or all(lib.num_threads == 1 for lib in blas.lib_controllers):
        yield
        return
    with blas.limit(limits=1):
        yield


@contextlib.contextmanager
def single_threaded_blas() -> Iterator[None]:
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


# At import, before any kernel loads the OpenMP runtime (the backends load lazily).
short_openmp_spin()
