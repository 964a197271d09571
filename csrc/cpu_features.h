// Runtime CPU-feature detection and the choice of SIMD code path.
#pragma once
#include <string>
#include <vector>

namespace cnnfast {

struct CpuFeatures {
    bool sse42 = false;
    bool avx = false;
    bool avx2 = false;
    bool fma = false;
    bool avx512f = false;
    bool avx512vl = false;
    bool avx512dq = false;
    bool avx512bw = false;
    bool neon = false;
};

// What the processor (and OS) running this process supports.
CpuFeatures detect_cpu_features();

// True when this build's AVX-512 kernels are the emulated ones (built with
// CNNFAST_AVX512_EMULATE=1: the same kernel source over csrc/isa/avx512_emulation.h,
// compiled for AVX2 -- a test build for machines without AVX-512).
bool avx512_emulated();

// The kernel paths this build can run on this CPU, lowest first: "portable", then
// "avx2" (AVX2 + FMA), then "avx512" (AVX-512 F/VL/DQ/BW natively; AVX2 + FMA for the
// emulated build).
std::vector<std::string> runnable_simd_paths();

// The kernel path in use, read once at first use: CNNFAST_SIMD (portable, avx2 or
// avx512) when this CPU can run it, else the best native path ("avx512", "avx2",
// "portable"; an emulated avx512 is only taken when asked for).
const std::string& simd_path();

}  // namespace cnnfast
