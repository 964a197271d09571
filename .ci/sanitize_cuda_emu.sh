#!/usr/bin/env bash
# Sanitizer jobs for the CUDA emulator (cnnfast/backends/cuda/emu) and the kernels it runs.
#
#  1. ASan + UBSan: the emulator library (every kernel of cnnfast/backends/cuda/kernels)
#     built with -fsanitize=address,undefined; tests/test_cuda_emu.py,
#     test_cuda_pool_paths.py, test_cuda_activation.py, test_cuda_winograd.py and
#     test_cuda_depthwise_tiled.py run on it (every kernel and path, ranks 1-3, both
#     dtypes, the emulator's own semantics), and 200 random cases of the fuzzer
#     (tests/test_fuzz.py); then a deliberate out-of-bounds kernel must be reported.
#  2. TSan: the same library built with -fsanitize=thread (each CUDA thread is a TSan
#     fiber; happens-before only at barriers, warp collectives and block boundaries);
#     the same tests and 100 fuzz cases run on it with halt_on_error; then the
#     deliberately racy kernel must be reported and its race-free twin must pass
#     (tests/test_cuda_emu_sanitizers.py).
#
# Python is not sanitized: the runtimes are preloaded (LD_PRELOAD). Libraries are
# cached per flag set in $CNNFAST_CUDA_EMU_CACHE (default: a directory under /tmp).
# Usage: .ci/sanitize_cuda_emu.sh [asan|tsan|all]      (~3-5 min on 2 cores, cold)
set -euo pipefail
cd "$(dirname "$0")/.."
CXX="${CXX:-g++}"
PY="${PYTHON:-python}"
export CNNFAST_CUDA_EMU_CACHE="${CNNFAST_CUDA_EMU_CACHE:-${TMPDIR:-/tmp}/cnnfast_cuda_emu_sanitize}"
which="${1:-all}"
start=$(date +%s)

runtime_lib() {
    local lib
    lib=$("$CXX" -print-file-name="$1")
    if [[ "$lib" != /* || ! -e "$lib" ]]; then
        echo "sanitize_cuda_emu: $CXX has no $1" >&2
        exit 2
    fi
    echo "$lib"
}

asan_job() {
    local asan
    asan=$(runtime_lib libasan.so)
    echo "== ASan + UBSan: tests/test_cuda_emu.py tests/test_cuda_pool_paths.py tests/test_cuda_activation.py tests/test_cuda_winograd.py tests/test_cuda_depthwise_tiled.py, fuzz cases"
    env CNNFAST_CUDA_EMU_FLAGS="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -g -O1" \
        LD_PRELOAD="$asan" ASAN_OPTIONS="detect_leaks=0:abort_on_error=0:exitcode=67" \
        UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1" CNNFAST_FUZZ_CASES=200 \
        "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda_emu.py tests/test_cuda_pool_paths.py \
        tests/test_cuda_activation.py tests/test_cuda_winograd.py tests/test_cuda_depthwise_tiled.py \
        "tests/test_fuzz.py::test_fuzz[cuda-emu]"
    echo "== ASan: an out-of-bounds write in a kernel must be reported"
    set +e
    out=$(env LD_PRELOAD="$asan" ASAN_OPTIONS="detect_leaks=0:exitcode=67" "$PY" - 2>&1 <<'PYEOF'
import numpy as np
from cnnfast.backends.cuda.emu_backend import EmuModule
m = EmuModule({"test_kernels.cu": ["out_of_bounds"]}, flags=("-fsanitize=address,undefined", "-g", "-O1"),
              source_dir="csrc/cuda_emu")
m.function("out_of_bounds")((1,), (32,), (np.zeros(32, np.float32), np.int32(1)))
print("NOT DETECTED")
PYEOF
)
    rc=$?
    set -e
    if [[ $rc -ne 67 ]] || ! grep -q "heap-buffer-overflow" <<<"$out"; then
        echo "$out" | tail -20
        echo "FAIL: ASan did not report the out-of-bounds kernel (rc=$rc)" >&2
        exit 1
    fi
    echo "ok: $(grep -m1 SUMMARY <<<"$out")"
}

tsan_job() {
    local tsan
    tsan=$(runtime_lib libtsan.so)
    echo "== TSan: tests/test_cuda_emu.py tests/test_cuda_pool_paths.py tests/test_cuda_activation.py tests/test_cuda_winograd.py tests/test_cuda_depthwise_tiled.py, fuzz cases"
    # One OpenBLAS thread: the fuzzer's numpy reference multiplies matrices large enough
    # for OpenBLAS to use its threads, whose (uninstrumented) hand-off TSan misreads
    # as a race on numpy's buffers.
    env CNNFAST_CUDA_EMU_FLAGS="-fsanitize=thread -g -O1" LD_PRELOAD="$tsan" OPENBLAS_NUM_THREADS=1 \
        TSAN_OPTIONS="halt_on_error=1 exitcode=66" CNNFAST_FUZZ_CASES=100 \
        "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda_emu.py tests/test_cuda_pool_paths.py \
        tests/test_cuda_activation.py tests/test_cuda_winograd.py tests/test_cuda_depthwise_tiled.py \
        "tests/test_fuzz.py::test_fuzz[cuda-emu]"
    echo "== TSan: the racy kernel must be reported, its race-free twin must pass"
    "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda_emu_sanitizers.py
}

case "$which" in
    asan) asan_job ;;
    tsan) tsan_job ;;
    all) asan_job; tsan_job ;;
    *) echo "usage: $0 [asan|tsan|all]" >&2; exit 2 ;;
esac
echo "sanitize_cuda_emu: all jobs passed in $(( $(date +%s) - start )) s"
