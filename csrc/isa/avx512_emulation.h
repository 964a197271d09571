// The AVX-512 intrinsics the kernels use, defined by their reference semantics (Intel's
// pseudo-code: element by element, FMAs fused, masked loads and stores touching only
// the enabled elements), for the emulated test build (CNNFAST_AVX512_EMULATE=1, see
// isa/kernels_avx512.cpp). With it the AVX-512 kernel source -- its tile shapes,
// packing and masked edges -- runs and is tested (grid, fuzzer, sanitizers) on machines
// without AVX-512. Compiled for AVX2 + FMA after <immintrin.h>, whose types (__m512,
// __mmask16, ...) it keeps; each intrinsic's name is redirected here by a macro.
// Only what the kernels use is here: a new intrinsic in an AVX-512 kernel fails the
// emulated build until it is added (GCC's own, compiled for AVX-512, cannot be
// inlined into AVX2 code).
#pragma once

// 64-byte vectors in AVX2 code: GCC notes the ABI change of passing them by value;
// these functions are always inlined.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace cnnfast {
namespace avx512_emulation {

#define CNN_EMU static inline __attribute__((always_inline))

template <class V, class S>
CNN_EMU V splat(S s) {
    V r;
    for (unsigned j = 0; j < sizeof(V) / sizeof(S); ++j) r[j] = s;
    return r;
}
template <class V, class S>
CNN_EMU V loadu(const void* p) {
    V r;
    __builtin_memcpy(&r, p, sizeof r);
    return r;
}
template <class V, class S>
CNN_EMU V fmadd(V a, V b, V c) {  // a * b + c, rounded once per element
    V r;
    for (unsigned j = 0; j < sizeof(V) / sizeof(S); ++j)
        r[j] = sizeof(S) == 4 ? (S)__builtin_fmaf((float)a[j], (float)b[j], (float)c[j])
                              : (S)__builtin_fma((double)a[j], (double)b[j], (double)c[j]);
    return r;
}
template <class V, class S, class M>
CNN_EMU V maskz_loadu(M k, const void* p) {  // disabled elements: 0, never read
    V r;
    const S* s = static_cast<const S*>(p);
    for (unsigned j = 0; j < sizeof(V) / sizeof(S); ++j) r[j] = (k >> j) & 1 ? s[j] : S(0);
    return r;
}
template <class V, class S, class M>
CNN_EMU void mask_storeu(void* p, M k, V v) {  // disabled elements: never written
    S* d = static_cast<S*>(p);
    for (unsigned j = 0; j < sizeof(V) / sizeof(S); ++j)
        if ((k >> j) & 1) d[j] = v[j];
}
#undef CNN_EMU

}  // namespace avx512_emulation
}  // namespace cnnfast

#define CNN_EMU_NS cnnfast::avx512_emulation
#define _mm512_setzero_ps() CNN_EMU_NS::splat<__m512, float>(0.f)
#define _mm512_setzero_pd() CNN_EMU_NS::splat<__m512d, double>(0.0)
#define _mm512_set1_ps(s) CNN_EMU_NS::splat<__m512, float>(s)
#define _mm512_set1_pd(s) CNN_EMU_NS::splat<__m512d, double>(s)
#define _mm512_loadu_ps(p) CNN_EMU_NS::loadu<__m512, float>(p)
#define _mm512_loadu_pd(p) CNN_EMU_NS::loadu<__m512d, double>(p)
#define _mm512_fmadd_ps(a, b, c) CNN_EMU_NS::fmadd<__m512, float>(a, b, c)
#define _mm512_fmadd_pd(a, b, c) CNN_EMU_NS::fmadd<__m512d, double>(a, b, c)
#define _mm512_add_ps(a, b) ((__m512)((a) + (b)))
#define _mm512_add_pd(a, b) ((__m512d)((a) + (b)))
#define _mm512_maskz_loadu_ps(k, p) CNN_EMU_NS::maskz_loadu<__m512, float>((__mmask16)(k), p)
#define _mm512_maskz_loadu_pd(k, p) CNN_EMU_NS::maskz_loadu<__m512d, double>((__mmask8)(k), p)
#define _mm512_mask_storeu_ps(p, k, v) CNN_EMU_NS::mask_storeu<__m512, float>(p, (__mmask16)(k), v)
#define _mm512_mask_storeu_pd(p, k, v) CNN_EMU_NS::mask_storeu<__m512d, double>(p, (__mmask8)(k), v)
