// Runtime CPU-feature detection and the choice of SIMD code path.
#pragma once
#include <string>

namespace cnnfast {

struct CpuFeatures {
    bool sse42 = false;
    bool avx = false;
    bool avx2 = false;
    bool fma = false;
    bool avx512f = false;
    bool neon = false;
};

// What the processor (and OS) running this process supports.
CpuFeatures detect_cpu_features();

// The kernel path in use: "avx2" when AVX2 and FMA are present and not disabled by
// CNNFAST_SIMD=portable, else "portable". Read once, at first use.
const std::string& simd_path();

// True when kernels may use the AVX2+FMA code.
bool use_avx2();

}  // namespace cnnfast
