// Runtime CPU-feature detection. The extension is built for the baseline ISA
// (no -march=native); AVX2+FMA kernels live in files compiled with
// `#pragma GCC target("avx2,fma")` and are only called when this says so.
#include "cpu_features.h"

#include <cstdlib>
#include <cstring>

namespace cnnfast {

CpuFeatures detect_cpu_features() {
    CpuFeatures f;
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
    // __builtin_cpu_supports also checks that the OS saves the AVX state (XGETBV).
    __builtin_cpu_init();
    f.sse42 = __builtin_cpu_supports("sse4.2");
    f.avx = __builtin_cpu_supports("avx");
    f.avx2 = __builtin_cpu_supports("avx2");
    f.fma = __builtin_cpu_supports("fma");
    f.avx512f = __builtin_cpu_supports("avx512f");
#elif defined(__aarch64__)
    f.neon = true;  // Advanced SIMD is mandatory on AArch64
#endif
    return f;
}

static std::string choose_path() {
    const char* force = std::getenv("CNNFAST_SIMD");
    if (force && std::strcmp(force, "portable") == 0) return "portable";
    CpuFeatures f = detect_cpu_features();
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    if (f.avx2 && f.fma) return "avx2";
#endif
    (void)f;
    return "portable";
}

const std::string& simd_path() {
    static const std::string path = choose_path();
    return path;
}

bool use_avx2() { return simd_path() == "avx2"; }

}  // namespace cnnfast
