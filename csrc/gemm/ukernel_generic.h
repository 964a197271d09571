// The GEMM micro-kernel in plain C++ (auto-vectorised for the build's ISA): the
// portable build's ukernel.
// A part of the per-ISA kernels, in namespace cnnfast::CNNFAST_KNS: included by
// kernels_impl.h (compiled once per ISA, see there), not on its own.
#pragma once

#include "gemm/blocking.h"

namespace cnnfast {
namespace CNNFAST_KNS {

// C[mr x nr] (+)= A-panel (kc x MR) * B-panel (kc x NR). The tile product is formed
// in registers first and then added, so the order of the sum never depends on acc.
// aligned: see kCodeAlign in gemm/blocking.h.
template <class T>
static inline __attribute__((aligned(kCodeAlign))) void ukernel_generic(
    long kc, const T* __restrict a, const T* __restrict b, T* __restrict c, long ldc, int mr,
    int nr, bool acc) {
    constexpr int MR = Blk<T>::MR, NR = Blk<T>::NR;
    T ab[MR * NR];
    for (int i = 0; i < MR * NR; ++i) ab[i] = T(0);
    for (long k = 0; k < kc; ++k) {
        const T* ak = a + k * MR;
        const T* bk = b + k * NR;
        for (int i = 0; i < MR; ++i) {
            const T ai = ak[i];
            for (int j = 0; j < NR; ++j) ab[i * NR + j] += ai * bk[j];
        }
    }
    store_tile<T>(ab, c, ldc, mr, nr, acc);
}

template <class T>
static inline void ukernel(long kc, const T* a, const T* b, T* c, long ldc, int mr, int nr,
                           bool acc) {
    ukernel_generic<T>(kc, a, b, c, ldc, mr, nr, acc);
}

}  // namespace CNNFAST_KNS
}  // namespace cnnfast
