"""Builds the pybind11 extension cnnfast.backends.cpp._cpp from csrc/.

The extension is compiled for the baseline ISA of the target (no -march=native):
AVX2+FMA code sits in a file that enables it with `#pragma GCC target`
(csrc/isa/kernels_avx2.cpp), and is
chosen at run time by CPU-feature detection (csrc/cpu_features.cpp).

CNNFAST_DEBUG=1 builds with -O1 -g -fsanitize=address,undefined and bounds checks.
"""

import glob
import os
import re
import sys

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))


def version():
    text = open(os.path.join(HERE, "cnnfast", "_version.py")).read()
    return re.search(r'__version__ = "([^"]+)"', text).group(1)


DEBUG = os.environ.get("CNNFAST_DEBUG", "") == "1"
# csrc/*.cpp: module, bindings, CPU features; csrc/isa/*.cpp: the kernels, one
# translation unit per ISA. The kernel headers are in csrc/{common,gemm,conv,pool}/
# (csrc/cuda_emu/ is not part of this extension).
SOURCES = sorted(glob.glob("csrc/*.cpp")) + sorted(glob.glob("csrc/isa/*.cpp"))
HEADERS = sorted(glob.glob("csrc/*.h") + [
    h for d in ("common", "gemm", "conv", "pool") for h in glob.glob(f"csrc/{d}/*.h")])

compile_args, link_args = [], []
if sys.platform != "win32":
    compile_args += ["-fopenmp", "-fno-math-errno", "-Wall"]
    link_args += ["-fopenmp"]
    if DEBUG:
        compile_args += ["-O1", "-g", "-fno-omit-frame-pointer",
                         "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined"]
        link_args += ["-fsanitize=address,undefined"]
    else:
        compile_args += ["-O3"]
else:  # pragma: no cover - MSVC
    compile_args += ["/openmp", "/O2"]

ext = Pybind11Extension(
    "cnnfast.backends.cpp._cpp",
    SOURCES,
    cxx_std=17,
    include_dirs=["csrc"],
    define_macros=[("CNNFAST_VERSION", f'"{version()}"')]
    + ([("CNNFAST_DEBUG", "1")] if DEBUG else []),
    extra_compile_args=compile_args,
    extra_link_args=link_args,
    depends=HEADERS,
)

setup(ext_modules=[ext], cmdclass={"build_ext": build_ext})
