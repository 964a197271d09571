"""Every CUDA kernel compiles with NVRTC for sm_80 and sm_90, without a GPU.

Runs .ci/nvrtc_check.py (the exact source, options and name expressions the cupy
backend gives CuPy) when the pip packages ``cuda-bindings`` and
``nvidia-cuda-nvrtc-cu12`` are installed; skipped otherwise. Also checks the
cupy-backend wiring that does not need a device.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _nvrtc_loadable():
    if importlib.util.find_spec("cuda") is None or importlib.util.find_spec("cuda.bindings") is None:
        return "cuda-bindings is not installed (pip install cuda-bindings nvidia-cuda-nvrtc-cu12)"
    try:
        from cuda.bindings import nvrtc

        err, *_ = nvrtc.nvrtcVersion()
    except Exception as exc:
        return f"NVRTC cannot be loaded: {type(exc).__name__}: {exc}"
    return None


def test_nvrtc_compiles_every_kernel_for_sm80_and_sm90():
    reason = _nvrtc_loadable()
    if reason:
        pytest.skip(reason)
    proc = subprocess.run([sys.executable, str(ROOT / ".ci" / "nvrtc_check.py"),
                           "--arch", "sm_80", "--arch", "sm_90"],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    from cnnfast.backends.cuda import conv_launch

    for arch in ("sm_80", "sm_90"):
        for file in conv_launch.SOURCE_FILES:
            n = len(conv_launch.name_expressions(file))
            assert f"[{arch}] {file}: ok ({n} kernels" in proc.stdout, proc.stdout


def test_nvrtc_check_fails_on_a_broken_kernel(tmp_path, monkeypatch):
    """The checker must be able to fail: compile a source with an error."""
    reason = _nvrtc_loadable()
    if reason:
        pytest.skip(reason)
    sys.path.insert(0, str(ROOT / ".ci"))
    try:
        import nvrtc_check
    finally:
        sys.path.pop(0)
    from cnnfast.backends.cuda import conv_launch

    (tmp_path / "common.cuh").write_text("#pragma once\n")
    (tmp_path / "conv.cu").write_text(
        '#include "common.cuh"\ntemplate <class T> __global__ void conv_gemm(T* y) '
        '{ y[0] = undefined_name; }\n')
    monkeypatch.setattr(conv_launch, "name_expressions", lambda f: ("conv_gemm<float>",))
    real = conv_launch.source_text
    monkeypatch.setattr(conv_launch, "source_text", lambda f: real(f, str(tmp_path)))
    ok, log, _, _ = nvrtc_check.compile_file("conv.cu", "sm_80", False)
    assert not ok and "undefined_name" in log


def test_cupy_backend_imports_and_explains_itself():
    from cnnfast.backends.cuda import cupy_backend

    assert cupy_backend.ARRAY == "cupy"
    assert set(cupy_backend.OPS) == {"conv", "conv_backward", "conv_transpose",
                                     "conv_transpose_backward", "max_pool",
                                     "max_pool_backward", "avg_pool", "avg_pool_backward"}
    reason = cupy_backend.availability()
    if cupy_backend.cupy is None:
        assert reason and "CuPy is not installed" in reason
        assert cupy_backend.last_paths() == {}  # no runtime, no call
