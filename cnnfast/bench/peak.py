"""This machine's peaks for the %peak column, measured by short probes (a fraction of
a second each) once per benchmark run, so %peak means the same on any CPU.

* Arithmetic: the best rate of a float32 matrix product through numpy's BLAS
  (OpenBLAS, MKL, Accelerate: multiply-add micro-kernels tuned for the CPU) on the
  run's thread count. A tuned GEMM reaches 80-95% of the CPU's fused multiply-add
  peak, and it is the rate a convolution lowered to GEMM could reach at best, so it
  is the measured stand-in for that peak.
* Memory: the best rate of copying a buffer far larger than the caches, split over
  the run's threads (STREAM's "copy": bytes read plus bytes written).

Each probe returns ``(value, description)``; the description is what the results
document records as the value's source.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

GEMM_N = 1024  # 2.1 GFLOP per product: long enough for a BLAS to reach its peak
COPY_BYTES = 64 << 20  # per buffer: larger than the last-level caches of most CPUs


def _best_rate(fn, work: float, min_time: float, max_samples: int = 50) -> float:
    """``work`` / the shortest of the timed calls of ``fn`` (after a warm-up call),
    sampling until ``min_time`` seconds have passed (at least three samples)."""
    fn()
    best, spent, samples = float("inf"), 0.0, 0
    while samples < 3 or (spent < min_time and samples < max_samples):
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        best, spent, samples = min(best, dt), spent + dt, samples + 1
    return work / max(best, 1e-12)


def _blas_name() -> str:
    try:
        from threadpoolctl import threadpool_info

        for info in threadpool_info():
            if info.get("user_api") == "blas":
                return info.get("internal_api") or "BLAS"
    except Exception:  # noqa: BLE001 - the name is only a label
        pass
    return "BLAS"


def cpu_gflops(threads: int, n: int = GEMM_N, min_time: float = 0.1):
    """Measured float32 GEMM rate on ``threads`` threads: ``(GFLOP/s, description)``."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    c = np.empty((n, n), np.float32)
    with threadpool_limits(limits=int(threads), user_api="blas"):
        rate = _best_rate(lambda: np.matmul(a, b, out=c), 2.0 * n ** 3, min_time)
    return rate / 1e9, (f"measured: float32 matmul {n}x{n}x{n} through numpy's "
                        f"{_blas_name()} on {threads} threads, best sample")


def cpu_gbs(threads: int, nbytes: int = COPY_BYTES, min_time: float = 0.1):
    """Measured copy bandwidth on ``threads`` threads: ``(GB/s, description)``.
    numpy releases the GIL while it copies, so the threads copy in parallel."""
    threads = max(1, int(threads))
    src = np.ones(nbytes // 4, np.float32)
    dst = np.zeros_like(src)
    bounds = np.linspace(0, src.size, threads + 1).astype(int)
    parts = [(dst[lo:hi], src[lo:hi]) for lo, hi in zip(bounds[:-1], bounds[1:])]
    with ThreadPoolExecutor(threads) as pool:
        def copy():
            list(pool.map(lambda p: np.copyto(*p), parts))
        rate = _best_rate(copy, 2.0 * src.nbytes, min_time)
    return rate / 1e9, (f"measured: copy of {nbytes >> 20} MiB on {threads} threads "
                        f"(bytes read + written), best sample")
