// The kernels (kernels_impl.h and its parts) compiled for AVX-512 (F, VL, DQ, BW), with
// the AVX-512 GEMM micro-kernels (gemm/ukernel_avx512.h: 8 x 48 floats, 8 x 24
// doubles, masked edges) and the AVX2 packing and Winograd shortcuts (AVX-512 has
// them). Only called when cnnfast::simd_path() / the test switch say so (the module
// itself is built for the baseline ISA).
//
// Built with CNNFAST_AVX512_EMULATE=1 (setup.py), the same source is compiled for AVX2
// with the AVX-512 intrinsics it uses defined by isa/avx512_emulation.h: a test build
// that runs these kernels, their tile shapes and masked edges on machines without
// AVX-512 (the sanitizer job uses it).
#if defined(__x86_64__)
// Everything from outside is included before the target pragma, so no shared
// (inline or template) code is compiled for AVX-512 here.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <immintrin.h>
#include <xmmintrin.h>

#include "kernels.h"

#pragma GCC push_options
#if defined(CNNFAST_AVX512_EMULATED)
#pragma GCC target("avx2,fma")
#include "isa/avx512_emulation.h"
#else
#pragma GCC target("avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")
#endif

#define CNNFAST_KNS avx512
#define CNNFAST_IMPL_AVX2 1  // the AVX2 parts, where no AVX-512 one replaces them
#define CNNFAST_IMPL_AVX512 1
#include "kernels_impl.h"
#pragma GCC pop_options

namespace cnnfast {

const KernelTable<float>& avx512_table_f32() {
    static const KernelTable<float> t = avx512::make_table<float>();
    return t;
}

const KernelTable<double>& avx512_table_f64() {
    static const KernelTable<double> t = avx512::make_table<double>();
    return t;
}

}  // namespace cnnfast
#endif  // __x86_64__
