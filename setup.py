"""Builds the pybind11 extension cnnfast.backends.cpp._cpp from csrc/.

The extension is compiled for the baseline ISA of the target (no -march=native):
AVX2+FMA and AVX-512 code sit in files that enable them with `#pragma GCC target`
(csrc/isa/kernels_avx2.cpp, csrc/isa/kernels_avx512.cpp), and are
chosen at run time by CPU-feature detection (csrc/cpu_features.cpp).

CNNFAST_DEBUG=1 builds with -O1 -g -fsanitize=address,undefined and bounds checks.
CNNFAST_AVX512_EMULATE=1 builds the AVX-512 kernels over csrc/isa/avx512_emulation.h
for AVX2, so that they run (slowly, for the tests: CNNFAST_SIMD=avx512) on machines
without AVX-512.

OpenMP (the kernels' threads) is probed with the compiler at build time: a compiler
without it (Apple clang) builds a working single-threaded extension and a warning says
so (`cnnfast info` then reports openmp: False). CNNFAST_OPENMP=0 builds without OpenMP,
CNNFAST_OPENMP=1 fails the build when the compiler lacks it; unset or "auto": probe.
"""

import glob
import os
import re
import shutil
import sys
import tempfile
import warnings

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))


def version():
    with open(os.path.join(HERE, "cnnfast", "_version.py")) as f:
        text = f.read()
    return re.search(r'__version__ = "([^"]+)"', text).group(1)


DEBUG = os.environ.get("CNNFAST_DEBUG", "") == "1"
AVX512_EMULATE = os.environ.get("CNNFAST_AVX512_EMULATE", "") == "1"
# csrc/*.cpp: module, bindings, CPU features; csrc/isa/*.cpp: the kernels, one
# translation unit per ISA. The kernel headers are in csrc/{common,gemm,conv,pool}/
# (csrc/cuda_emu/ is not part of this extension).
SOURCES = sorted(glob.glob("csrc/*.cpp")) + sorted(glob.glob("csrc/isa/*.cpp"))
HEADERS = sorted(glob.glob("csrc/*.h") + glob.glob("csrc/isa/*.h") + [
    h for d in ("common", "gemm", "conv", "pool") for h in glob.glob(f"csrc/{d}/*.h")])

OPENMP_TEST = """#include <omp.h>
int cnnfast_openmp_probe(void) {
    int n = 0;
#pragma omp parallel reduction(+ : n)
    n += 1;
    return n + omp_get_max_threads();
}
"""


def openmp_setting():
    """CNNFAST_OPENMP: "auto" (default), True (required) or False (off)."""
    value = os.environ.get("CNNFAST_OPENMP", "auto").strip().lower()
    if value in ("", "auto"):
        return "auto"
    if value in ("1", "on", "yes", "true"):
        return True
    if value in ("0", "off", "no", "false"):
        return False
    raise SystemExit(f"CNNFAST_OPENMP={value!r}: use 1, 0 or auto")


def openmp_probe_error(compiler, flag):
    """None when `compiler` compiles and links a shared object using OpenMP with
    `flag`, else why not."""
    tmp = tempfile.mkdtemp(prefix="cnnfast_openmp_")
    try:
        src = os.path.join(tmp, "probe.cpp")
        with open(src, "w") as f:
            f.write(OPENMP_TEST)
        objects = compiler.compile([src], output_dir=tmp, extra_postargs=[flag])
        compiler.link_shared_object(objects, os.path.join(tmp, "probe.so"),
                                    extra_postargs=[flag])
        return None
    # Any failure means no usable OpenMP; CompileError and LinkError come from
    # setuptools' or the standard library's distutils, depending on import order.
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def openmp_flags(compiler, setting=None):
    """(compile flags, link flags) for OpenMP with `compiler`, after CNNFAST_OPENMP."""
    setting = openmp_setting() if setting is None else setting
    # Without OpenMP the kernels' `#pragma omp` lines are ignored: no warning for each.
    quiet = [] if compiler.compiler_type == "msvc" else ["-Wno-unknown-pragmas"]
    if setting is False:
        return quiet, []
    if compiler.compiler_type == "msvc":  # pragma: no cover - Windows
        return ["/openmp"], []
    error = openmp_probe_error(compiler, "-fopenmp")
    if error is None:
        return ["-fopenmp"], ["-fopenmp"]
    if setting is True:
        raise SystemExit(f"CNNFAST_OPENMP=1 but the compiler cannot build OpenMP code "
                         f"with -fopenmp ({error})")
    warnings.warn(f"the C++ compiler cannot build OpenMP code with -fopenmp ({error}): "
                  "building cnnfast's C++ extension single-threaded. For threads, use a "
                  "compiler with OpenMP (gcc, or clang with libomp), or set "
                  "CNNFAST_OPENMP=1 to make this an error.", stacklevel=1)
    return quiet, []


class BuildExt(build_ext):
    """pybind11's build_ext, plus the OpenMP flags the compiler in use supports."""

    def build_extensions(self):
        cflags, lflags = openmp_flags(self.compiler)
        for e in self.extensions:
            e.extra_compile_args = e.extra_compile_args + cflags  # after -Wall
            e.extra_link_args = e.extra_link_args + lflags
        super().build_extensions()


compile_args, link_args = [], []
if sys.platform != "win32":
    compile_args += ["-fno-math-errno", "-Wall"]
    if DEBUG:
        compile_args += ["-O1", "-g", "-fno-omit-frame-pointer",
                         "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined"]
        link_args += ["-fsanitize=address,undefined"]
    else:
        compile_args += ["-O3"]
    if AVX512_EMULATE:  # 64-byte vectors in AVX2 code: GCC's notes on their ABI
        compile_args += ["-Wno-psabi"]
else:  # pragma: no cover - MSVC
    compile_args += ["/O2"]

EXT = Pybind11Extension(
    "cnnfast.backends.cpp._cpp",
    SOURCES,
    cxx_std=17,
    include_dirs=["csrc"],
    define_macros=[("CNNFAST_VERSION", f'"{version()}"')]
    + ([("CNNFAST_DEBUG", "1")] if DEBUG else [])
    + ([("CNNFAST_AVX512_EMULATED", "1")] if AVX512_EMULATE else []),
    extra_compile_args=compile_args,
    extra_link_args=link_args,
    depends=HEADERS,
)

# setuptools runs this file as __main__ (also through pyproject's build backend);
# tests/test_packaging.py imports it for openmp_flags.
if __name__ == "__main__":
    setup(ext_modules=[EXT], cmdclass={"build_ext": BuildExt})
