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
    for name in ("avx512f", "avx512vl", "avx512dq", "avx512bw"):
        assert features[name] == (name in flags)
    paths = ["portable"]
    if features["avx2"] and features["fma"]:
        paths.append("avx2")
        if _cpp.avx512_emulated() or all(features[n] for n in ("avx512f", "avx512vl",
                                                                 "avx512dq", "avx512bw")):
            paths.append("avx512")
    assert _cpp.simd_paths() == paths
    # The best native path, unless CNNFAST_SIMD asks for another runnable one.
    native = [p for p in paths if not (p == "avx512" and _cpp.avx512_emulated())]
    forced = os.environ.get("CNNFAST_SIMD")
    assert _cpp.simd_path() == (forced if forced in paths else native[-1])


@pytest.mark.parametrize("path", ["portable", "avx2", "avx512", "sse9"])
def test_cnnfast_simd_forces_a_runnable_path(path):
    code = ("from cnnfast.backends.cpp import _cpp, backend\n"
            "print(_cpp.simd_path(), _cpp.kernel_path(), ','.join(_cpp.simd_paths()))")
    env = dict(os.environ, CNNFAST_SIMD=path)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True)
    chosen, running, runnable = out.stdout.split()
    runnable = runnable.split(",")
    assert running == chosen
    if path in runnable:
        assert chosen == path
        assert "ignored" not in out.stderr
    else:  # not runnable here (or no such path): the automatic choice, and a warning
        assert chosen in runnable and chosen != path
        assert f"CNNFAST_SIMD={path!r} ignored" in out.stderr


def test_info_command_reports_build():
    out = subprocess.run([sys.executable, "-m", "cnnfast", "info"], capture_output=True,
                         text=True, check=True)
    assert "simd_path" in out.stdout and "backends:" in out.stdout
    assert "numpy" in out.stdout
    assert "denormals     kept, IEEE" in out.stdout  # the documented default
