// gemm_packed: C (+)= A * B over packed panels, with the ISA's micro-kernel.
// A part of the per-ISA kernels, in namespace cnnfast::CNNFAST_KNS: included by
// kernels_impl.h (compiled once per ISA, see there), not on its own.
#pragma once

#include "common/index.h"
#include "gemm/blocking.h"
#include "gemm/isa.h"

namespace cnnfast {
namespace CNNFAST_KNS {

// C (M x N, row stride ldc) (+)= A * B from packed panels holding the full K.
// K is cut in fixed KC blocks: the reduction order is a function of K only.
template <class T>
static void gemm_packed(long M, long N, long K, const T* Ap, const T* Bp, T* C, long ldc,
                        bool acc) {
    constexpr int MR = Blk<T>::MR, NR = Blk<T>::NR;
    constexpr long KC = Blk<T>::KC;
    // K cut in equal blocks of at most KC (a multiple of 4): no short last block.
    const long kblk = round_up(ceil_div(K, ceil_div(K, KC)), 4);
    for (long pc = 0; pc < K; pc += kblk) {
        const long kc = imin(kblk, K - pc);
        const bool a2 = acc || pc > 0;
        for (long j0 = 0; j0 < N; j0 += NR) {
            const T* bp = Bp + (j0 / NR) * K * NR + pc * NR;
            const int nr = (int)imin(NR, N - j0);
            for (long i0 = 0; i0 < M; i0 += MR) {
                const T* ap = Ap + (i0 / MR) * K * MR + pc * MR;
                ukernel(kc, ap, bp, C + i0 * ldc + j0, ldc, (int)imin(MR, M - i0), nr, a2);
            }
        }
    }
}

}  // namespace CNNFAST_KNS
}  // namespace cnnfast
