"""Bit-identical results for any thread count: the numba backend's determinism check."""

from __future__ import annotations

import pytest


def assert_numba_bit_identical_across_threads(set_threads, compute) -> None:
    """``compute()`` (a list of arrays) run on 1, 2 and again 1 thread gives the same
    bytes each time; skips where numba has a single thread. ``set_threads``: the
    ``threads`` fixture (``cnnfast.set_num_threads``, restored after the test)."""
    import numba

    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("numba has a single thread here (NUMBA_NUM_THREADS=1)")
    runs = []
    for n in (1, 2, 1):
        set_threads(n)
        runs.append(compute())
    for a, b, c in zip(*runs):
        assert a.tobytes() == b.tobytes() == c.tobytes()
