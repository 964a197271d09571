// Packing of the GEMM operands into MR- and NR-wide panels (pack_a, pack_b).
// A part of the per-ISA kernels, in namespace cnnfast::CNNFAST_KNS: included by
// kernels_impl.h (compiled once per ISA, see there), not on its own.
#pragma once

#include "common/index.h"
#include "gemm/blocking.h"
#include "gemm/isa.h"  // kPackAFast, pack_a_panel_fast, kPackBFast, pack_b_panel_fast

namespace cnnfast {
namespace CNNFAST_KNS {

// Pack A (M x K, element (m, k) at src[m*rs + k*cs]) into ceil(M/MR) panels of K x MR,
// zero-padded rows.
template <class T>
static void pack_a(long M, long K, const T* src, long rs, long cs, T* dst) {
    constexpr int MR = Blk<T>::MR;
    for (long i0 = 0; i0 < M; i0 += MR) {
        const int mr = (int)imin(MR, M - i0);
        T* d = dst + (i0 / MR) * K * MR;
        if constexpr (kPackAFast<T>) {  // the ISA's shortcut for whole, contiguous panels
            if (cs == 1 && mr == MR) {
                pack_a_panel_fast<T>(i0, K, src, rs, d);
                continue;
            }
        }
        if (cs == 1) {
            for (int i = 0; i < MR; ++i) {
                if (i < mr) {
                    const T* s = src + (i0 + i) * rs;
                    for (long k = 0; k < K; ++k) d[k * MR + i] = s[k];
                } else {
                    for (long k = 0; k < K; ++k) d[k * MR + i] = T(0);
                }
            }
        } else {
            for (long k = 0; k < K; ++k)
                for (int i = 0; i < MR; ++i)
                    d[k * MR + i] = i < mr ? src[(i0 + i) * rs + k * cs] : T(0);
        }
    }
}

// Pack B (K x N, element (k, n) at src[k*rs + n*cs]) into ceil(N/NR) panels of K x NR,
// zero-padded columns.
template <class T>
static void pack_b(long K, long N, const T* src, long rs, long cs, T* dst) {
    constexpr int NR = Blk<T>::NR;
    for (long j0 = 0; j0 < N; j0 += NR) {
        const int nr = (int)imin(NR, N - j0);
        T* d = dst + (j0 / NR) * K * NR;
        if constexpr (kPackBFast<T>) {  // the ISA's shortcut for whole, transposed panels
            if (rs == 1 && cs != 1 && nr == NR) {
                pack_b_panel_fast<T>(j0, K, src, cs, d);
                continue;
            }
        }
        if (cs == 1) {
            for (long k = 0; k < K; ++k) {
                const T* s = src + k * rs + j0;
                T* dk = d + k * NR;
                for (int j = 0; j < nr; ++j) dk[j] = s[j];
                for (int j = nr; j < NR; ++j) dk[j] = T(0);
            }
        } else {
            // row by row: contiguous writes, nr interleaved reads
            for (long k = 0; k < K; ++k) {
                T* dk = d + k * NR;
                const T* s = src + k * rs + j0 * cs;
                for (int j = 0; j < nr; ++j) dk[j] = s[j * cs];
                for (int j = nr; j < NR; ++j) dk[j] = T(0);
            }
        }
    }
}

}  // namespace CNNFAST_KNS
}  // namespace cnnfast
