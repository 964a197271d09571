"""ThreadSanitizer sees races between CUDA threads in the emulator (a negative test).

The emulator runs each CUDA thread as a TSan fiber switched without implicit
synchronisation, and adds happens-before only at __syncthreads(), warp collectives and
block boundaries (cnnfast/backends/cuda/emu/cuda_emu.cpp). So a kernel that reads shared memory
another thread wrote without a barrier must be reported, and the same kernel with the
barrier must not. Runs in a subprocess with libtsan preloaded (Python is not built with
TSan); skipped when the compiler has no libtsan. The full sanitizer jobs are
.ci/sanitize_cuda_emu.sh.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

emu = pytest.importorskip("cnnfast.backends.cuda.emu_backend")
if emu.availability() is not None:  # pragma: no cover
    pytest.skip(f"cuda-emu unavailable: {emu.availability()}", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[1]

DRIVER = """
import sys
import numpy as np
from cnnfast.backends.cuda.emu_backend import CudaEmuError, EmuModule
try:
    m = EmuModule({'test_kernels.cu': ['racy', 'race_free']},
                  flags=('-fsanitize=thread', '-g', '-O1'), source_dir=sys.argv[2])
except CudaEmuError as exc:  # a toolchain without a working TSan build
    print(exc)
    sys.exit(77)
out = np.zeros(64, np.float32)
m.function(sys.argv[1])((2,), (64,), (out,))
print('finished')
"""


def _libtsan():
    cxx = os.environ.get("CXX") or "g++"
    try:
        path = subprocess.run([cxx, "-print-file-name=libtsan.so"], capture_output=True,
                              text=True, timeout=60).stdout.strip()
    except OSError:
        return None
    return path if os.path.isabs(path) and os.path.exists(path) else None


def _run(kernel):
    lib = _libtsan()
    if lib is None:
        pytest.skip("the C++ compiler has no libtsan.so (ThreadSanitizer runtime)")
    env = dict(os.environ, LD_PRELOAD=lib, TSAN_OPTIONS="halt_on_error=1 exitcode=66")
    env.pop("CNNFAST_CUDA_EMU_FLAGS", None)
    proc = subprocess.run([sys.executable, "-c", DRIVER, kernel,
                           str(ROOT / "csrc" / "cuda_emu")], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=600)
    if proc.returncode == 77:  # seen on a GPU machine's compiler: libtsan, but no build
        pytest.skip("the C++ compiler cannot build with -fsanitize=thread here: "
                    + proc.stdout[-300:])
    return proc


@pytest.mark.slow
def test_tsan_reports_a_race_between_cuda_threads():
    proc = _run("racy")
    assert proc.returncode == 66, proc.stdout + proc.stderr
    assert "ThreadSanitizer: data race" in proc.stderr
    assert "test_kernels.cu" in proc.stderr


@pytest.mark.slow
def test_tsan_is_quiet_when_a_barrier_orders_the_threads():
    proc = _run("race_free")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "finished" in proc.stdout
