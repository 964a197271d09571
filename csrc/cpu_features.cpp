// Runtime CPU-feature detection. The extension is built for the baseline ISA
// (no -march=native); the AVX2+FMA and AVX-512 kernels live in files compiled with
// `#pragma GCC target(...)` (csrc/isa/) and are only called when this says so.
#include "cpu_features.h"

#include <algorithm>
#include <cstdlib>

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
    f.avx512vl = __builtin_cpu_supports("avx512vl");
    f.avx512dq = __builtin_cpu_supports("avx512dq");
    f.avx512bw = __builtin_cpu_supports("avx512bw");
#elif defined(__aarch64__)
    f.neon = true;  // Advanced SIMD is mandatory on AArch64
#endif
    return f;
}

bool avx512_emulated() {
#if defined(CNNFAST_AVX512_EMULATED)
    return true;
#else
    return false;
#endif
}

std::vector<std::string> runnable_simd_paths() {
    std::vector<std::string> paths{"portable"};
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    const CpuFeatures f = detect_cpu_features();
    const bool avx2 = f.avx2 && f.fma;
    if (avx2) paths.push_back("avx2");
    // The AVX-512 file is compiled for F, VL, DQ and BW (what Skylake-SP, Ice Lake and
    // Zen 4 have); its emulated build needs only what it is compiled for: AVX2 + FMA.
    const bool avx512 = avx512_emulated()
                            ? avx2
                            : avx2 && f.avx512f && f.avx512vl && f.avx512dq && f.avx512bw;
    if (avx512) paths.push_back("avx512");
#endif
    return paths;
}

static std::string choose_path() {
    const std::vector<std::string> paths = runnable_simd_paths();
    const char* force = std::getenv("CNNFAST_SIMD");
    if (force && std::find(paths.begin(), paths.end(), force) != paths.end()) return force;
    // The best native path; the emulated AVX-512 kernels are slower than the AVX2 ones.
    if (paths.back() == "avx512" && avx512_emulated()) return paths[paths.size() - 2];
    return paths.back();
}

const std::string& simd_path() {
    static const std::string path = choose_path();
    return path;
}

}  // namespace cnnfast
