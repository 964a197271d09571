"""The C++ extension's build: version, compiler, OpenMP, runtime CPU features and
the SIMD path switch."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

import cnnfast

_cpp = pytest.importorskip("cnnfast.backends.cpp._cpp", reason="C++ extension not built")


def test_version_matches_package():
    assert _cpp.version() == cnnfast.__version__


def test_compiler_and_openmp():
    assert _cpp.compiler().split()[0] in ("gcc", "clang", "msvc")
    enabled, date, threads = _cpp.openmp()
    assert enabled and date >= 201511 and threads >= 1


def _proc_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 only")
def test_cpu_features_match_the_kernel():
    flags = _proc_flags()
    if flags is None:
        pytest.skip("no /proc/cpuinfo")
    features = _cpp.cpu_features()
    assert features["avx2"] == ("avx2" in flags)
    assert features["fma"] == ("fma" in flags)
    assert features["avx512f"] == ("avx512f" in flags)
    expected = "avx2" if features["avx2"] and features["fma"] else "portable"
    if os.environ.get("CNNFAST_SIMD") != "portable":
        assert _cpp.simd_path() == expected


def test_portable_path_can_be_forced():
    code = "from cnnfast.backends.cpp import _cpp; print(_cpp.simd_path())"
    env = dict(os.environ, CNNFAST_SIMD="portable")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "portable"


def test_info_command_reports_build():
    out = subprocess.run([sys.executable, "-m", "cnnfast", "info"], capture_output=True,
                         text=True, check=True)
    assert "simd_path" in out.stdout and "backends:" in out.stdout
    assert "numpy" in out.stdout
    assert "denormals     kept, IEEE" in out.stdout  # the documented default
