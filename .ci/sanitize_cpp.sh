#!/usr/bin/env bash
# ASan + UBSan job for the C++ extension (cnnfast.backends.cpp._cpp, csrc/).
#
# Builds a CNNFAST_DEBUG=1 copy of the extension (-O1 -g -fsanitize=address,undefined,
# bounds checks in the kernels) in a temporary copy of the sources -- the normal
# build in the tree is left alone -- and runs a subset of the tests against it:
# the cpp backend's part of the shared grid and of the fuzzer (tests/test_fuzz.py, a
# fresh seed each run), tests/test_cpp_*.py, tests/test_winograd.py and
# tests/test_winograd3d.py, on each SIMD path. The copy is built with
# CNNFAST_AVX512_EMULATE=1, so that its AVX-512 kernels (tile shapes, masked edges) run
# here too, over csrc/isa/avx512_emulation.h, whether or not this CPU has AVX-512.
# Python itself is not sanitized: the ASan runtime is preloaded.
# Usage: .ci/sanitize_cpp.sh            (~2-4 min on 2 busy cores)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CXX="${CXX:-g++}"
# The project's virtual environment when there is one (it has pybind11, pytest, numpy).
if [ -z "${PYTHON:-}" ] && [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"; else PY="${PYTHON:-python}"; fi
start=$(date +%s)

asan=$("$CXX" -print-file-name=libasan.so)
# libstdc++ is preloaded too: python does not link it, and without it ASan's
# __cxa_throw interceptor finds no real function (pybind11 throws for Python errors).
stdcxx=$("$CXX" -print-file-name=libstdc++.so)
for lib in "$asan" "$stdcxx"; do
    if [[ "$lib" != /* || ! -e "$lib" ]]; then
        echo "sanitize_cpp: $CXX has no $lib" >&2
        exit 2
    fi
done

work=$(mktemp -d "${TMPDIR:-/tmp}/cnnfast_sanitize_cpp.XXXXXX")
trap '[ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT
# Sources only (no build outputs, no virtual environment).
mkdir -p "$work/src"
cp -r setup.py pyproject.toml README.md csrc tests "$work/src/"
(cd "$ROOT" && tar cf - --exclude='__pycache__' --exclude='*.so' cnnfast) | (cd "$work/src" && tar xf -)

echo "== building the CNNFAST_DEBUG=1 CNNFAST_AVX512_EMULATE=1 extension in $work"
(cd "$work/src" && CNNFAST_DEBUG=1 CNNFAST_AVX512_EMULATE=1 "$PY" setup.py -q build_ext --inplace -j 2 \
    --build-temp "$work/build" >"$work/build.log" 2>&1) || { cat "$work/build.log"; exit 1; }

run_tests() {
    # $1: label; further args: extra environment
    local label=$1
    shift
    echo "== ASan + UBSan ($label): cpp grid, activation and fuzz subsets, tests/test_cpp_*.py, winograd"
    # Run from the copy, so that its cnnfast (with the debug extension) is imported.
    (cd "$work/src" && env "$@" PYTHONPATH="$work/src" LD_PRELOAD="$asan $stdcxx" \
        ASAN_OPTIONS="detect_leaks=0:abort_on_error=0:exitcode=67" \
        UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
        CNNFAST_SANITIZE_EXPECT_DEBUG=1 \
        "$PY" -m pytest -q -x -p no:cacheprovider tests/test_cpp_kernels.py tests/test_cpp_direct.py \
        tests/test_winograd.py tests/test_winograd3d.py tests/test_cpp_wgrad_short.py \
        tests/test_cpp_activation.py tests/test_activation.py tests/test_cpp_max_pool_windows.py \
        tests/test_backend_grid.py tests/test_fuzz.py -k cpp 2>&1 | tail -5; exit "${PIPESTATUS[0]}")
}

run_tests "AVX2 path where available"
run_tests "portable path" CNNFAST_SIMD=portable
run_tests "AVX-512 path (emulated)" CNNFAST_SIMD=avx512
echo "sanitize_cpp: OK in $(( $(date +%s) - start )) s"
