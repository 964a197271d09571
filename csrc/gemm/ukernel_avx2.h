// The AVX2+FMA GEMM micro-kernels (intrinsics): 6 x 16 floats, 6 x 8 doubles, the
// AVX2 build's ukernel (the contract of ukernel_generic, gemm/ukernel_generic.h).
// A part of the per-ISA kernels, in namespace cnnfast::CNNFAST_KNS: included by
// kernels_impl.h (compiled once per ISA, see there), not on its own.
#pragma once

#include "gemm/blocking.h"

namespace cnnfast {
namespace CNNFAST_KNS {

// aligned: see kCodeAlign in gemm/blocking.h.
static inline __attribute__((aligned(kCodeAlign))) void ukernel(
    long kc, const float* __restrict a, const float* __restrict b, float* __restrict c, long ldc,
    int mr, int nr, bool acc) {
    __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00,
           c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
#pragma GCC unroll 4
    for (long k = 0; k < kc; ++k) {
        const __m256 b0 = _mm256_load_ps(b), b1 = _mm256_load_ps(b + 8);
        __m256 ai;
        ai = _mm256_broadcast_ss(a + 0); c00 = _mm256_fmadd_ps(ai, b0, c00); c01 = _mm256_fmadd_ps(ai, b1, c01);
        ai = _mm256_broadcast_ss(a + 1); c10 = _mm256_fmadd_ps(ai, b0, c10); c11 = _mm256_fmadd_ps(ai, b1, c11);
        ai = _mm256_broadcast_ss(a + 2); c20 = _mm256_fmadd_ps(ai, b0, c20); c21 = _mm256_fmadd_ps(ai, b1, c21);
        ai = _mm256_broadcast_ss(a + 3); c30 = _mm256_fmadd_ps(ai, b0, c30); c31 = _mm256_fmadd_ps(ai, b1, c31);
        ai = _mm256_broadcast_ss(a + 4); c40 = _mm256_fmadd_ps(ai, b0, c40); c41 = _mm256_fmadd_ps(ai, b1, c41);
        ai = _mm256_broadcast_ss(a + 5); c50 = _mm256_fmadd_ps(ai, b0, c50); c51 = _mm256_fmadd_ps(ai, b1, c51);
        a += 6;
        b += 16;
    }
    if (mr == 6 && nr == 16) {
#define CNN_ST(row, lo, hi)                                                              \
    do {                                                                                 \
        float* cr = c + (row) * ldc;                                                     \
        if (acc) {                                                                       \
            lo = _mm256_add_ps(_mm256_loadu_ps(cr), lo);                                 \
            hi = _mm256_add_ps(_mm256_loadu_ps(cr + 8), hi);                             \
        }                                                                                \
        _mm256_storeu_ps(cr, lo);                                                        \
        _mm256_storeu_ps(cr + 8, hi);                                                    \
    } while (0)
        CNN_ST(0, c00, c01); CNN_ST(1, c10, c11); CNN_ST(2, c20, c21);
        CNN_ST(3, c30, c31); CNN_ST(4, c40, c41); CNN_ST(5, c50, c51);
#undef CNN_ST
        return;
    }
    alignas(32) float ab[6 * 16];
    _mm256_store_ps(ab + 0, c00); _mm256_store_ps(ab + 8, c01);
    _mm256_store_ps(ab + 16, c10); _mm256_store_ps(ab + 24, c11);
    _mm256_store_ps(ab + 32, c20); _mm256_store_ps(ab + 40, c21);
    _mm256_store_ps(ab + 48, c30); _mm256_store_ps(ab + 56, c31);
    _mm256_store_ps(ab + 64, c40); _mm256_store_ps(ab + 72, c41);
    _mm256_store_ps(ab + 80, c50); _mm256_store_ps(ab + 88, c51);
    store_tile<float>(ab, c, ldc, mr, nr, acc);
}

static inline void ukernel(long kc, const double* __restrict a, const double* __restrict b,
                           double* __restrict c, long ldc, int mr, int nr, bool acc) {
    __m256d c00 = _mm256_setzero_pd(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00,
            c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
#pragma GCC unroll 4
    for (long k = 0; k < kc; ++k) {
        const __m256d b0 = _mm256_load_pd(b), b1 = _mm256_load_pd(b + 4);
        __m256d ai;
        ai = _mm256_broadcast_sd(a + 0); c00 = _mm256_fmadd_pd(ai, b0, c00); c01 = _mm256_fmadd_pd(ai, b1, c01);
        ai = _mm256_broadcast_sd(a + 1); c10 = _mm256_fmadd_pd(ai, b0, c10); c11 = _mm256_fmadd_pd(ai, b1, c11);
        ai = _mm256_broadcast_sd(a + 2); c20 = _mm256_fmadd_pd(ai, b0, c20); c21 = _mm256_fmadd_pd(ai, b1, c21);
        ai = _mm256_broadcast_sd(a + 3); c30 = _mm256_fmadd_pd(ai, b0, c30); c31 = _mm256_fmadd_pd(ai, b1, c31);
        ai = _mm256_broadcast_sd(a + 4); c40 = _mm256_fmadd_pd(ai, b0, c40); c41 = _mm256_fmadd_pd(ai, b1, c41);
        ai = _mm256_broadcast_sd(a + 5); c50 = _mm256_fmadd_pd(ai, b0, c50); c51 = _mm256_fmadd_pd(ai, b1, c51);
        a += 6;
        b += 8;
    }
    alignas(32) double ab[6 * 8];
    _mm256_store_pd(ab + 0, c00); _mm256_store_pd(ab + 4, c01);
    _mm256_store_pd(ab + 8, c10); _mm256_store_pd(ab + 12, c11);
    _mm256_store_pd(ab + 16, c20); _mm256_store_pd(ab + 20, c21);
    _mm256_store_pd(ab + 24, c30); _mm256_store_pd(ab + 28, c31);
    _mm256_store_pd(ab + 32, c40); _mm256_store_pd(ab + 36, c41);
    _mm256_store_pd(ab + 40, c50); _mm256_store_pd(ab + 44, c51);
    store_tile<double>(ab, c, ldc, mr, nr, acc);
}

}  // namespace CNNFAST_KNS
}  // namespace cnnfast
