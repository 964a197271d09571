// The AVX2 shortcuts of pack_a / pack_b (gemm/pack.h) for float: whole panels packed
// with 8 x 8 transposes where kPackAFast / kPackBFast say so.
// A part of the per-ISA kernels, in namespace cnnfast::CNNFAST_KNS: included by
// kernels_impl.h (compiled once per ISA, see there), not on its own.
#pragma once

#include "gemm/blocking.h"

namespace cnnfast {
namespace CNNFAST_KNS {

// d[kk*ds + j] = s[j*cs + kk] for an 8 x 8 block (the classic unpack/shuffle/permute
// transpose).
// With rows = 6 the last two source rows read as zeros (for the MR = 6 A panels;
// each store then writes 2 lanes past its row, which the next store overwrites).
template <int ROWS = 8>
static inline void transpose8(const float* s, long cs, float* d, long ds) {
    const __m256 z = _mm256_setzero_ps();
    const __m256 r0 = _mm256_loadu_ps(s), r1 = _mm256_loadu_ps(s + cs),
                 r2 = _mm256_loadu_ps(s + 2 * cs), r3 = _mm256_loadu_ps(s + 3 * cs),
                 r4 = _mm256_loadu_ps(s + 4 * cs), r5 = _mm256_loadu_ps(s + 5 * cs),
                 r6 = ROWS == 8 ? _mm256_loadu_ps(s + 6 * cs) : z,
                 r7 = ROWS == 8 ? _mm256_loadu_ps(s + 7 * cs) : z;
    const __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1),
                 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3),
                 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5),
                 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
    const __m256 u0 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0)),
                 u1 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2)),
                 u2 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0)),
                 u3 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2)),
                 u4 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(1, 0, 1, 0)),
                 u5 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(3, 2, 3, 2)),
                 u6 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(1, 0, 1, 0)),
                 u7 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(3, 2, 3, 2));
    _mm256_storeu_ps(d, _mm256_permute2f128_ps(u0, u4, 0x20));
    _mm256_storeu_ps(d + ds, _mm256_permute2f128_ps(u1, u5, 0x20));
    _mm256_storeu_ps(d + 2 * ds, _mm256_permute2f128_ps(u2, u6, 0x20));
    _mm256_storeu_ps(d + 3 * ds, _mm256_permute2f128_ps(u3, u7, 0x20));
    _mm256_storeu_ps(d + 4 * ds, _mm256_permute2f128_ps(u0, u4, 0x31));
    _mm256_storeu_ps(d + 5 * ds, _mm256_permute2f128_ps(u1, u5, 0x31));
    _mm256_storeu_ps(d + 6 * ds, _mm256_permute2f128_ps(u2, u6, 0x31));
    _mm256_storeu_ps(d + 7 * ds, _mm256_permute2f128_ps(u3, u7, 0x31));
}

// Always inlined, early: pack_a / pack_b then compile exactly as when this code was
// written inside them (with an ordinary inline call, GCC allocated registers
// differently in conv_bwd_weight: 3% slower).
#define CNN_INLINE_EARLY __attribute__((always_inline))

// pack_a of whole panels (mr == MR) of contiguous rows (cs == 1) of floats: a
// transpose of MR (6: AVX2's tile, 8: AVX-512's) rows, 8 columns at a time. Panel d
// holds rows i0 .. i0 + MR of src.
template <class T>
constexpr bool kPackAFast = sizeof(T) == 4 && (Blk<T>::MR == 6 || Blk<T>::MR == 8);
template <class T>
static inline CNN_INLINE_EARLY void pack_a_panel_fast(long i0, long K, const T* src, long rs,
                                                      T* d) {
    constexpr int MR = Blk<T>::MR;
    const float* s = reinterpret_cast<const float*>(src) + i0 * rs;
    float* df = reinterpret_cast<float*>(d);
    long k = 0;
    if constexpr (MR == 6)  // each store writes 2 lanes past its column: not in the last block
        for (; k + 8 < K; k += 8) transpose8<6>(s + k, rs, df + k * MR, MR);
    else
        for (; k + 8 <= K; k += 8) transpose8<8>(s + k, rs, df + k * MR, MR);
    for (; k < K; ++k)
        for (int i = 0; i < MR; ++i) df[k * MR + i] = s[i * rs + k];
}

// pack_b of whole panels (nr == NR) of floats read across rows (rs == 1, cs != 1): a
// transpose in 8 x 8 blocks. Panel d holds columns j0 .. j0 + NR of src.
template <class T>
constexpr bool kPackBFast = sizeof(T) == 4 && Blk<T>::NR % 8 == 0;
template <class T>
static inline CNN_INLINE_EARLY void pack_b_panel_fast(long j0, long K, const T* src, long cs,
                                                      T* d) {
    constexpr int NR = Blk<T>::NR;
    const float* s = reinterpret_cast<const float*>(src) + j0 * cs;
    float* df = reinterpret_cast<float*>(d);
    long k = 0;
    for (; k + 8 <= K; k += 8) {
        transpose8(s + k, cs, df + k * NR, NR);
        transpose8(s + 8 * cs + k, cs, df + k * NR + 8, NR);
        if constexpr (NR > 16)  // AVX-512's 48 columns
            for (int jb = 16; jb < NR; jb += 8)
                transpose8(s + jb * cs + k, cs, df + k * NR + jb, NR);
    }
    for (; k < K; ++k)
        for (int j = 0; j < NR; ++j) df[k * NR + j] = s[j * cs + k];
}
#undef CNN_INLINE_EARLY

}  // namespace CNNFAST_KNS
}  // namespace cnnfast
