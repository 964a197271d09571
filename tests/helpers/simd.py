"""The cpp backend's SIMD kernel paths, for the tests that run each one.

The extension has one kernel table per ISA: "portable", "avx2" and "avx512" (native,
or the emulated build's: CNNFAST_AVX512_EMULATE=1, .ci/sanitize_cpp.sh). A test that
forces a path through ``_cpp.set_simd_path`` runs the paths this build and CPU can run
up to the process's own (CNNFAST_SIMD, else the CPU's best): a CNNFAST_SIMD=portable
run tests only the portable kernels, CNNFAST_SIMD=avx512 in the emulated build all
three, so the sanitizer job's runs do not repeat each other."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, List

import pytest

ALL_PATHS = ("portable", "avx2", "avx512")


def _cpp():
    from cnnfast.backends.cpp import _cpp as ext
    return ext


def runnable_simd_paths() -> List[str]:
    """The paths this process's tests force (see the module docstring), lowest first."""
    ext = _cpp()
    paths = list(ext.simd_paths())
    return paths[: paths.index(ext.simd_path()) + 1]


def skip_unless_testable(path: str) -> None:
    if path not in runnable_simd_paths():
        pytest.skip(f"SIMD path {path!r} is not run here (this build and CPU, or "
                    f"CNNFAST_SIMD): {', '.join(runnable_simd_paths())}")


@contextmanager
def forced_path(path: str) -> Iterator[str]:
    """Run the kernels of `path` (skipping the test where it is not testable)."""
    skip_unless_testable(path)
    ext = _cpp()
    ext.set_simd_path(path)
    try:
        yield path
    finally:
        ext.set_simd_path("auto")
