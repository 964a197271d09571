// The AVX-512 GEMM micro-kernels (intrinsics): 8 x 48 floats, 8 x 24 doubles -- three
// vectors per row, 24 accumulators of the 32 vector registers: per step three vector
// loads of B and eight broadcasts of A for 24 FMAs (the AVX2 6 x 16 tile needs 8 for
// 12). A last panel of at most 2 or 1 vectors' columns runs a 2- or 1-vector kernel
// (no FMAs on padding), and edges are written with masked loads and stores instead of
// a scalar copy. MR = 8 divides the usual channel counts (the AVX2 MR = 6 pads 64
// channels to 66). The contract is ukernel_generic's (gemm/ukernel_generic.h); the
// AVX-512 build's Blk (gemm/blocking.h) gives these tile shapes.
// A part of the per-ISA kernels, in namespace cnnfast::CNNFAST_KNS: included by
// kernels_impl.h (compiled once per ISA, see there), not on its own.
#pragma once

#include "gemm/blocking.h"

namespace cnnfast {
namespace CNNFAST_KNS {

// The intrinsics by element type, so that one kernel serves float and double.
template <class T>
struct Zmm;
template <>
struct Zmm<float> {
    typedef __m512 v;
    typedef __mmask16 mask;
    static constexpr int L = 16;
    static inline v zero() { return _mm512_setzero_ps(); }
    static inline v load(const float* p) { return _mm512_loadu_ps(p); }
    static inline v splat(const float* p) { return _mm512_set1_ps(*p); }
    static inline v fma(v a, v b, v c) { return _mm512_fmadd_ps(a, b, c); }
    static inline v add(v a, v b) { return _mm512_add_ps(a, b); }
    static inline v load(mask m, const float* p) { return _mm512_maskz_loadu_ps(m, p); }
    static inline void store(float* p, mask m, v x) { _mm512_mask_storeu_ps(p, m, x); }
};
template <>
struct Zmm<double> {
    typedef __m512d v;
    typedef __mmask8 mask;
    static constexpr int L = 8;
    static inline v zero() { return _mm512_setzero_pd(); }
    static inline v load(const double* p) { return _mm512_loadu_pd(p); }
    static inline v splat(const double* p) { return _mm512_set1_pd(*p); }
    static inline v fma(v a, v b, v c) { return _mm512_fmadd_pd(a, b, c); }
    static inline v add(v a, v b) { return _mm512_add_pd(a, b); }
    static inline v load(mask m, const double* p) { return _mm512_maskz_loadu_pd(m, p); }
    static inline void store(double* p, mask m, v x) { _mm512_mask_storeu_pd(p, m, x); }
};

// C[mr x nr] (+)= A-panel (kc x 8) * the first NV vectors of each row of the B-panel
// (kc x NR), nr <= NV * L. aligned: see kCodeAlign in gemm/blocking.h.
template <class T, int NV>
static inline __attribute__((aligned(kCodeAlign))) void ukernel_nv(
    long kc, const T* __restrict a, const T* __restrict b, T* __restrict c, long ldc, int mr,
    int nr, bool acc) {
    typedef Zmm<T> Z;
    typedef typename Z::v V;
    constexpr int MR = Blk<T>::MR, NR = Blk<T>::NR, L = Z::L;
    static_assert(MR == 8 && NR == 3 * L, "the AVX-512 tile is 8 rows of 3 vectors");
    V r[NV][MR];
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 3
        for (int v = 0; v < NV; ++v) r[v][i] = Z::zero();
#pragma GCC unroll 2
    for (long k = 0; k < kc; ++k) {
        V bv[NV];
#pragma GCC unroll 3
        for (int v = 0; v < NV; ++v) bv[v] = Z::load(b + v * L);
#pragma GCC unroll 8
        for (int i = 0; i < MR; ++i) {
            const V ai = Z::splat(a + i);
#pragma GCC unroll 3
            for (int v = 0; v < NV; ++v) r[v][i] = Z::fma(ai, bv[v], r[v][i]);
        }
        a += MR;
        b += NR;
    }
    // The columns [v L, min(nr, (v + 1) L)) of each row: masked, nothing past nr touched.
    typename Z::mask m[NV];
#pragma GCC unroll 3
    for (int v = 0; v < NV; ++v) {
        const int n = nr - v * L;
        m[v] = (typename Z::mask)(n <= 0 ? 0u : n >= L ? (1u << L) - 1u : (1u << n) - 1u);
    }
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
        if (i >= mr) break;
        T* ci = c + i * ldc;
#pragma GCC unroll 3
        for (int v = 0; v < NV; ++v) {
            V x = r[v][i];
            if (acc) x = Z::add(Z::load(m[v], ci + v * L), x);
            Z::store(ci + v * L, m[v], x);
        }
    }
}

template <class T>
static inline void ukernel(long kc, const T* __restrict a, const T* __restrict b,
                           T* __restrict c, long ldc, int mr, int nr, bool acc) {
    constexpr int L = Zmm<T>::L;
    if (nr > 2 * L)
        ukernel_nv<T, 3>(kc, a, b, c, ldc, mr, nr, acc);
    else if (nr > L)
        ukernel_nv<T, 2>(kc, a, b, c, ldc, mr, nr, acc);
    else
        ukernel_nv<T, 1>(kc, a, b, c, ldc, mr, nr, acc);
}

}  // namespace CNNFAST_KNS
}  // namespace cnnfast
