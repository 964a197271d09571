// The kernels (kernels_impl.h and its parts) compiled for AVX2+FMA, with the
// intrinsics GEMM micro-kernels and packing (gemm/ukernel_avx2.h, gemm/pack_avx2.h).
// Only called when cnnfast::simd_path() / the test switch say so (the module itself is
// built for the baseline ISA).
#if defined(__x86_64__)
// Everything from outside is included before the target pragma, so no shared
// (inline or template) code is compiled for AVX2 here.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <immintrin.h>
#include <xmmintrin.h>

#include "kernels.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma")

#define CNNFAST_KNS avx2
#define CNNFAST_IMPL_AVX2 1
#include "kernels_impl.h"
#pragma GCC pop_options

namespace cnnfast {

const KernelTable<float>& avx2_table_f32() {
    static const KernelTable<float> t = avx2::make_table<float>();
    return t;
}

const KernelTable<double>& avx2_table_f64() {
    static const KernelTable<double> t = avx2::make_table<double>();
    return t;
}

}  // namespace cnnfast
#endif  // __x86_64__
