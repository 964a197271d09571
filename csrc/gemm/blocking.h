// The GEMM register blocking (Blk<T>: MR x NR tiles, KC-deep reduction blocks) and
// store_tile, shared by the micro-kernels of every ISA.
// A part of the per-ISA kernels, in namespace cnnfast::CNNFAST_KNS: included by
// kernels_impl.h (compiled once per ISA, see there), not on its own.
#pragma once

#include "kernels.h"

namespace cnnfast {
namespace CNNFAST_KNS {

template <class T>
struct Blk;
template <>
struct Blk<float> {
    static constexpr int MR = 6, NR = 16;
    static constexpr long KC = kGemmKC;
};
template <>
struct Blk<double> {
    static constexpr int MR = 6, NR = 8;
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
