// The GEMM register blocking (Blk<T>: MR x NR tiles, KC-deep reduction blocks) and
// store_tile, shared by the micro-kernels of every ISA.
// A part of the per-ISA kernels, in namespace cnnfast::CNNFAST_KNS: included by
// kernels_impl.h (compiled once per ISA, see there), not on its own.
#pragma once

#include "kernels.h"

namespace cnnfast {
namespace CNNFAST_KNS {

// The tile of the build's micro-kernel: MR rows of kTileVectors vectors of kTileBytes
// (the B panels' width NR): 8 x (3 x 512 bits) with AVX-512 (gemm/ukernel_avx512.h),
// 6 x (2 x 256 bits) with AVX2, 6 x (2 x 128 bits) in the portable code (SSE2 / NEON:
// its 12 accumulator vectors fit the 16 registers of SSE2; with 6 x 16 floats the
// generic kernel spilled: the stem and conv1d layers ran 1.45x slower, 1 thread).
#if defined(CNNFAST_IMPL_AVX512)
constexpr int kTileRows = 8, kTileVectors = 3, kTileBytes = 64;
#elif defined(CNNFAST_IMPL_AVX2)
constexpr int kTileRows = 6, kTileVectors = 2, kTileBytes = 32;
#else
constexpr int kTileRows = 6, kTileVectors = 2, kTileBytes = 16;
#endif
template <class T>
struct Blk {
    static constexpr int MR = kTileRows, NR = kTileVectors * kTileBytes / (int)sizeof(T);
    static constexpr long KC = kGemmKC;
};

// Code alignment: ukernel_generic and the AVX2 float ukernel are aligned to kCodeAlign
// bytes, and with them the start of their build's code (isa/*.cpp). Every kernel loop
// then keeps its alignment whatever the linker places before the kernels (bindings and
// all): with the start moved by 32 bytes, byte-identical kernels ran up to 3% slower
// or faster. Those micro-kernels already sit on such a boundary within their file, so
// no code moves inside it (aligning the AVX2 double one as well would move the code
// after it: measured up to 8% slower in double).
constexpr int kCodeAlign = 64;

// Store an MR x NR accumulator tile (row-major, NR per row) into C.
template <class T>
static inline void store_tile(const T* ab, T* c, long ldc, int mr, int nr, bool acc) {
    constexpr int NR = Blk<T>::NR;
    for (int i = 0; i < mr; ++i) {
        T* ci = c + i * ldc;
        const T* ai = ab + i * NR;
        if (acc)
            for (int j = 0; j < nr; ++j) ci[j] += ai[j];
        else
            for (int j = 0; j < nr; ++j) ci[j] = ai[j];
    }
}

}  // namespace CNNFAST_KNS
}  // namespace cnnfast
