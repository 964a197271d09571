// Portable SIMD vectors (GCC vector extensions) for the direct kernels: DV<T>, dload,
// dstore, dsplat, dhsum. Their width is the one ISA choice here.
// A part of the per-ISA kernels, in namespace cnnfast::CNNFAST_KNS: included by
// kernels_impl.h (compiled once per ISA, see there), not on its own.
#pragma once

namespace cnnfast {
namespace CNNFAST_KNS {

// Vectors of CNN_DVB bytes (GCC vector extensions): 256-bit in the AVX2 build, 128-bit
// (SSE2 / NEON) in the portable one. The AVX-512 build keeps 256 bits here (it defines
// CNNFAST_IMPL_AVX2 too): these loops are bound by loads, stores and shuffles, and
// Zen 4 runs 512-bit operations at half rate; with AVX512VL they still get the 32
// registers. Its GEMM micro-kernel is the 512-bit code (gemm/ukernel_avx512.h).
#if defined(CNNFAST_IMPL_AVX2)
#define CNN_DVB 32
#else
#define CNN_DVB 16
#endif
template <class T>
struct DV;
template <>
struct DV<float> {
    typedef float v __attribute__((vector_size(CNN_DVB)));
    typedef int m __attribute__((vector_size(CNN_DVB)));
    static constexpr int L = CNN_DVB / 4;
};
template <>
struct DV<double> {
    typedef double v __attribute__((vector_size(CNN_DVB)));
    typedef long long m __attribute__((vector_size(CNN_DVB)));
    static constexpr int L = CNN_DVB / 8;
};
#undef CNN_DVB

template <class T>
static inline typename DV<T>::v dload(const T* p) {
    typename DV<T>::v r;
    __builtin_memcpy(&r, p, sizeof r);
    return r;
}
template <class T>
static inline void dstore(T* p, typename DV<T>::v v) {
    __builtin_memcpy(p, &v, sizeof v);
}
template <class T>
static inline typename DV<T>::v dsplat(T s) {
    typename DV<T>::v r;
    for (int j = 0; j < DV<T>::L; ++j) r[j] = s;
    return r;
}
// Sum of the lanes in a fixed pairwise order.
template <class T>
static inline T dhsum(typename DV<T>::v v) {
    constexpr int L = DV<T>::L;
    T t[L];
    __builtin_memcpy(t, &v, sizeof v);
    for (int h = L / 2; h >= 1; h /= 2)
        for (int j = 0; j < h; ++j) t[j] += t[j + h];
    return t[0];
}

}  // namespace CNNFAST_KNS
}  // namespace cnnfast
