// No packing shortcuts in the portable build: pack_a / pack_b (gemm/pack.h) always
// run their generic loops (see gemm/pack_avx2.h).
// A part of the per-ISA kernels, in namespace cnnfast::CNNFAST_KNS: included by
// kernels_impl.h (compiled once per ISA, see there), not on its own.
#pragma once

namespace cnnfast {
namespace CNNFAST_KNS {

template <class T>
constexpr bool kPackAFast = false;
template <class T>
constexpr bool kPackBFast = false;
// (never called: declared for the discarded branches of pack_a / pack_b)
template <class T>
static inline void pack_a_panel_fast(long, long, const T*, long, T*) {}
template <class T>
static inline void pack_b_panel_fast(long, long, const T*, long, T*) {}

}  // namespace CNNFAST_KNS
}  // namespace cnnfast
