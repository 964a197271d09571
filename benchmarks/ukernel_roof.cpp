// The compute roof of the cpp backend's GEMM paths on this machine: the AVX2 float
// micro-kernel (csrc/gemm/ukernel_avx2.h, the same code the extension compiles) run
// on packed panels that stay in cache, over reduction lengths K, on 1 and on every
// OpenMP thread; beside it, the FMA peak (12 independent FMA chains, no loads).
// What a convolution can reach through gemm_packed is at most the first; the gap to
// the second is the micro-kernel's loads, broadcasts and stores.
//
//   g++ -O3 -fopenmp -Icsrc benchmarks/ukernel_roof.cpp -o /tmp/ukernel_roof
//   /tmp/ukernel_roof            # GFLOP/s per K, 1 thread and all threads
//
// Development tool (x86-64 with AVX2+FMA); benchmarks/README.md says where its
// figures are used.
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "kernels.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define CNNFAST_KNS avx2
#define CNNFAST_IMPL_AVX2 1
#include "gemm/ukernel_avx2.h"

namespace {

using Clock = std::chrono::steady_clock;

// One call: M = 11 * 6 rows (as a 64-channel layer pads to) x 16 columns x K, the A
// panels 64-byte aligned as the extension's scratch is.
double ukernel_seconds(long K, long reps) {
    constexpr int MR = 6, NR = 16, TILES = 11;
    float* A = static_cast<float*>(std::aligned_alloc(64, sizeof(float) * MR * K * TILES + 64));
    float* B = static_cast<float*>(std::aligned_alloc(64, sizeof(float) * NR * K + 64));
    alignas(64) float C[TILES * MR * NR];
    for (long i = 0; i < MR * K * TILES; ++i) A[i] = 1e-3f * (i % 7);
    for (long i = 0; i < NR * K; ++i) B[i] = 1e-3f * (i % 5);
    const auto t0 = Clock::now();
    for (long r = 0; r < reps; ++r)
        for (int t = 0; t < TILES; ++t)
            cnnfast::avx2::ukernel(K, A + t * MR * K, B, C + t * MR * NR, NR, MR, NR, false);
    const double s = std::chrono::duration<double>(Clock::now() - t0).count();
    volatile float sink = C[0];
    (void)sink;
    std::free(A);
    std::free(B);
    return s;
}

double fma_peak_seconds(long iters) {
    // distinct chains (equal ones would be merged into one by the compiler)
    __m256 a0 = _mm256_set1_ps(0.10f), a1 = _mm256_set1_ps(0.11f), a2 = _mm256_set1_ps(0.12f),
           a3 = _mm256_set1_ps(0.13f), a4 = _mm256_set1_ps(0.14f), a5 = _mm256_set1_ps(0.15f),
           a6 = _mm256_set1_ps(0.16f), a7 = _mm256_set1_ps(0.17f), a8 = _mm256_set1_ps(0.18f),
           a9 = _mm256_set1_ps(0.19f), a10 = _mm256_set1_ps(0.20f), a11 = _mm256_set1_ps(0.21f);
    const __m256 b = _mm256_set1_ps(0.9999f), c = _mm256_set1_ps(1e-4f);
    const auto t0 = Clock::now();
    for (long k = 0; k < iters; ++k) {
#define F(x) x = _mm256_fmadd_ps(x, b, c);
        F(a0) F(a1) F(a2) F(a3) F(a4) F(a5) F(a6) F(a7) F(a8) F(a9) F(a10) F(a11)
#undef F
        __asm__ volatile("" : "+x"(a0), "+x"(a1), "+x"(a2), "+x"(a3), "+x"(a4), "+x"(a5),
                         "+x"(a6), "+x"(a7), "+x"(a8), "+x"(a9), "+x"(a10), "+x"(a11));
    }
    const double s = std::chrono::duration<double>(Clock::now() - t0).count();
    const __m256 sum = _mm256_add_ps(
        _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)),
                      _mm256_add_ps(_mm256_add_ps(a4, a5), _mm256_add_ps(a6, a7))),
        _mm256_add_ps(_mm256_add_ps(a8, a9), _mm256_add_ps(a10, a11)));
    volatile float sink = _mm256_cvtss_f32(sum);
    (void)sink;
    return s;
}

// Best of 5 runs of fn on every one of nt threads at once; GFLOP/s of them all.
template <class F>
double rate(int nt, double flops_per_thread, F fn) {
    double best = 0;
    for (int run = 0; run < 5; ++run) {
        double worst_s = 0;
#pragma omp parallel num_threads(nt) reduction(max : worst_s)
        worst_s = fn();
        best = std::max(best, nt * flops_per_thread / worst_s / 1e9);
    }
    return best;
}

}  // namespace
#pragma GCC pop_options

int main() {
    if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) {
        std::fprintf(stderr, "ukernel_roof: this CPU has no AVX2+FMA\n");
        return 2;
    }
    const int all = omp_get_max_threads();
    const long iters = 200000000;
    std::printf("FMA peak (no loads):        1 thread %6.1f GFLOP/s, %d threads %6.1f\n",
                rate(1, iters * 12.0 * 16, [&] { return fma_peak_seconds(iters); }), all,
                rate(all, iters * 12.0 * 16, [&] { return fma_peak_seconds(iters); }));
    for (long K : {9L, 27L, 64L, 147L, 256L, 576L}) {
        const long reps = 40000000 / K;
        const double flops = 2.0 * 66 * 16 * K * reps;
        std::printf("ukernel 6x16 float, K=%4ld: 1 thread %6.1f GFLOP/s, %d threads %6.1f\n", K,
                    rate(1, flops, [&] { return ukernel_seconds(K, reps); }), all,
                    rate(all, flops, [&] { return ukernel_seconds(K, reps); }));
    }
    return 0;
}
